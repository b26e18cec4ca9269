"""Stage 4, training: config validation, the training loop, run directories, environment records."""
