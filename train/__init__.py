"""nano2's training side: configs, data, the training loop, checkpoints and the command-line tools."""
