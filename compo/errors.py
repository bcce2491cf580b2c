"""One exception base for everything a user can fix; the CLI prints these without a traceback.

Each message says where the problem is (file, line, field) and how to fix it.
"""

from __future__ import annotations


class CompoError(Exception):
    """Base of every user-facing error of the project."""


class ConfigError(CompoError, ValueError):
    """A configuration problem: where it is and how to fix it."""


class DataError(CompoError, ValueError):
    """A bad row or file, with its location and how to fix it."""


class ModelError(CompoError, ValueError):
    """A model directory that cannot be used, with the reason and the fix."""


class DeltaError(CompoError, ValueError):
    """A delta that does not fit the base model it is applied to."""


class RunError(CompoError, RuntimeError):
    """A run directory that cannot be started or resumed as asked."""


class DistributedError(RunError):
    """A distributed run that cannot go on: which worker, which node, and why."""


class JudgeError(CompoError, RuntimeError):
    """The oracle service could not be reached or refused the comparisons."""


class RunStopped(RunError):
    """A run stopped early on purpose, its finished iterations saved (resumable): e.g. the
    judge budget is spent."""


class OracleFailure(RunStopped):
    """The oracle failed on too many iterations in a row (e.g. every comparison abstained);
    the run stopped and is saved: fix the cause, then resume it."""
