"""Training: the step and the epoch loop, early stopping, checkpoints, the CUDA graph and
its policy, the optimizer/schedule/loss factories."""
