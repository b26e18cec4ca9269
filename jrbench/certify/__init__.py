"""Stage 6, certificates: the Lipschitz bound, interval bounds, randomized smoothing."""
