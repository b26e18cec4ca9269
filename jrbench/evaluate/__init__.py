"""Stage 5, evaluation: attacks (noise, PGD, FGSM, AutoAttack), margins, spectra, outside models."""
