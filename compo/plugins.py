"""What the other packages plug into compo, as dotted names resolved when used: compo never
imports `workers/` or the service (it imports without ray or fastapi)."""

from __future__ import annotations

import importlib
from typing import Any

# where votes are made beyond this process: `compo train` with --ray-address or a ray: section
PLACEMENTS = {"ray": "workers.coordinator:ray_trainer"}
# commands of the compo CLI that the service brings (argparse only when added)
COMMANDS = (
    "oracle_service.serve_cli:add_serve_command",  # compo serve
    "oracle_service.reward_cli:add_reward_model_command",  # compo reward-model fit
)


def resolve(dotted: str) -> Any:
    """The object `package.module:name` names, its module imported now."""
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)
