"""Studies: TOML specs, the local and Ray engines, the frontier, the demo profile."""
