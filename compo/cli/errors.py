"""The one line the CLI prints for a mistake a user can fix (no traceback unless --debug),
and the exit code: 2 for a problem found before or while starting, 3 for a run that
stopped because its oracle kept failing (it is saved: fix the cause, then --resume)."""

from __future__ import annotations

from compo.errors import CompoError, DistributedError, OracleFailure

USAGE_EXIT = 2
STOPPED_EXIT = 3
# optional imports -> the extra of pyproject.toml that installs them
EXTRAS = {"matplotlib": "train", "trl": "train", "accelerate": "train", "ray": "ray",
          "fastapi": "service", "uvicorn": "service", "starlette": "service",
          "httpx": "service", "httpx2": "service", "openai": "service", "asyncpg": "service",
          "prometheus_client": "service", "pydantic_settings": "service", "triton": "gpu"}
# what Ray writes (its C++ log on stderr, or an exception) when token authentication refuses
RAY_TOKEN_WORDS = ("unauthenticated", "invalidauthtoken", "authentication token")


def one_line(text: str) -> str:
    """A message on one line (a multi-line one joined with '; ')."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The pip command for an optional module that is not installed (None: not optional)."""
    module = (error.name or "").split(".")[0]
    if module not in EXTRAS:
        return None
    return (f"this needs {module}, which is not installed: pip install "
            f"'compo[{EXTRAS[module]}]'")


def is_ray_refusal(error: BaseException) -> bool:
    """Whether ray.init failed to connect (or was refused by token authentication)."""
    return isinstance(error, ConnectionError) or type(error).__name__ == "AuthenticationError"


def ray_refusal(error: Exception, address: str | None, captured: str = "") -> DistributedError:
    """A failed connection to Ray as one line; `captured`: what Ray wrote to stderr while it
    tried (its C++ client logs why), so that token authentication gets its own hint."""
    where = address or "auto"
    said = f"{error}\n{captured}".lower()
    if any(word in said for word in RAY_TOKEN_WORDS):
        return DistributedError(
            f"Ray at {where} refused the connection: the cluster has token authentication "
            "on and this shell has not its token; export RAY_AUTH_MODE=token and "
            "RAY_AUTH_TOKEN=<the cluster's token> (or RAY_AUTH_TOKEN_PATH=<its file>; the "
            "head's is ~/.ray/auth_token), as on the head node")
    reason = one_line(error).split("; ")[0][:200]
    return DistributedError(f"could not connect to Ray at {where} ({reason}); check "
                            "--ray-address / ray.address (`ray status` on the head)")


def explain(error: BaseException) -> tuple[str, int] | None:
    """(the line to print, the exit code) for a mistake a user can fix; None for a bug."""
    if isinstance(error, OracleFailure):
        return one_line(error), STOPPED_EXIT
    if isinstance(error, CompoError):
        return one_line(error), USAGE_EXIT
    if isinstance(error, ModuleNotFoundError) and missing_extra(error):
        return missing_extra(error), USAGE_EXIT
    return None
