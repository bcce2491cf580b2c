"""The `compo` command line: `compo.cli.main` (demo, split, train, apply-delta, serve) and
`compo.cli.pipeline` (pipeline, eval, compare, plot). Threading defaults are set here,
before anything loads torch (compo/cli/threads.py)."""

from compo.cli.threads import apply_defaults

apply_defaults()

from compo.cli.main import main  # noqa: E402 (after the threading defaults)

__all__ = ["main"]
