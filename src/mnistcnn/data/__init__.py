"""Datasets on the device: IDX reading, splits, epoch draws, augmentation; digit images
for `predict`."""
