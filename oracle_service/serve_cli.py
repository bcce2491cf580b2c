"""`compo serve`: the service as a command of the compo CLI (a plugin, compo/plugins.py);
argparse only at import (FastAPI and uvicorn load when it runs)."""

from __future__ import annotations

import argparse

from oracle_service import cli


def add_serve_command(subparsers) -> None:
    """Add `serve` to the compo CLI's subcommands."""
    serve = subparsers.add_parser("serve", help="start the comparison oracle service",
                                  description=cli.DESCRIPTION)
    cli.add_arguments(serve)
    serve.add_argument("after_dashes", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from oracle_service.main import main as serve_main

    if args.after_dashes:  # the older spelling: compo serve -- --port 8000
        rest = args.after_dashes[1:] if args.after_dashes[0] == "--" else args.after_dashes
        return serve_main(rest)
    return serve_main(args=args)
