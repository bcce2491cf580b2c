"""The `compo` command line: `compo.cli.main` (demo, split, train, apply-delta, serve) and
`compo.cli.pipeline` (pipeline, eval, compare, plot)."""

from compo.cli.main import main

__all__ = ["main"]
