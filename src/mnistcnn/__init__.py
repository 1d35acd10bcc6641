"""mnistcnn: a command-line experiment runner for CNN studies on MNIST."""

__version__ = "0.1.0"
