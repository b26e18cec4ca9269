"""Stage 8, the report: wide tables, plots, decision cells, report.md."""
