"""Experiment trackers (TensorBoard, MLflow) behind one small interface, trackers.py."""
