"""`compo plan`: per role memory, bytes and seconds per iteration of a run, from a model's
config.json alone (no weights), before any GPU is rented."""
