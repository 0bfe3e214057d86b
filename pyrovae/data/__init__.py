"""What the model is trained on: the built-in datasets, users' own arrays, folders and torchvision classes, the
train/validation/test splits, streaming from disk, and minibatches that mix a few labels in. It knows nothing of
the model."""
