"""Stage 7, analysis: run records, provenance, the tidy table, worst cases, verdicts."""
