"""Run tables: the shared helpers of every command that writes rows into a run's folder."""
