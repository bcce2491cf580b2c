"""Config files: YAML in, validated config out (errors name the file and field), the
resolved config written back, and checks on the paths a config names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from compo.errors import ConfigError

C = TypeVar("C", bound=BaseModel)


def format_validation_error(error: ValidationError, source: str) -> str:
    """Render pydantic errors as 'source: field: problem (fix)' lines."""
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "<top level>"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown key; remove it or check its spelling")
        elif item["type"] == "missing":
            lines.append(f"  {field}: required; add it to the file")
        else:
            got = item.get("input")
            got_text = f" (got {got!r})" if not isinstance(got, dict) else ""
            lines.append(f"  {field}: {item['msg']}{got_text}")
    return "\n".join(lines)


def parse_config(cls: type[C], data: Any, source: str = "<config>") -> C:
    """Validate a mapping into `cls`, raising ConfigError with a readable message."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values at the top level")
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None


def load_config(cls: type[C], path: str | Path, overrides: dict | None = None) -> C:
    """Read a YAML file into `cls`; `overrides` (nested dicts) are merged on top."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_config(cls, deep_merge(data, overrides or {}), str(path))


def deep_merge(base: dict, extra: dict) -> dict:
    """Return base updated by extra, recursing into nested mappings."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (what a run saves next to its results)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def require_model_dir(path: str, field: str) -> None:
    """A local model directory (save_pretrained) must be there."""
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"{field}={path}: no model there (config.json missing); point it at "
                          "a directory written by save_pretrained (downloads are disabled)")


def require_path(path: str, field: str) -> None:
    """A data file or directory must be there."""
    if not Path(path).exists():
        raise ConfigError(f"{field}={path}: no such file or directory")
