"""Stage 3, the penalty: Jacobian estimators, the VJP tape, regularizers, the Lipschitz constraint."""
