"""Stage 1, data: the data sets (torchvision, IDX folders, generated digits) and their defaults."""
