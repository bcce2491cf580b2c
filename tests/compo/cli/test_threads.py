"""The CLI sets OMP_WAIT_POLICY=PASSIVE before torch loads, unless the user set it."""

import os
import subprocess
import sys

import pytest

from compo.cli.threads import DEFAULTS, apply_defaults

# records the variable at the moment `import torch` begins, then imports the CLI
WATCH = """
import os, sys
seen = []
class Watch:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
sys.meta_path.insert(0, Watch)
import compo.cli
print(seen)
"""


@pytest.mark.parametrize("users, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_policy_is_set_before_torch_loads(users, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if users is not None:
        env["OMP_WAIT_POLICY"] = users
    result = subprocess.run([sys.executable, "-c", WATCH], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr([expected])


def test_the_defaults_never_override_the_environment():
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert apply_defaults(environ) == {} and environ == {"OMP_WAIT_POLICY": "ACTIVE"}
    empty: dict = {}
    assert apply_defaults(empty) == DEFAULTS == empty
