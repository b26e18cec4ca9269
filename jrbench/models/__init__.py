"""Stage 2, models: the architectures and their certified layer norms (Lipschitz bounds)."""
