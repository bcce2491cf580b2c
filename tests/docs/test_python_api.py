"""docs/python_api.md runs: its python code blocks, in order, as one script."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "python_api.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
TIMEOUT_S = 900


def test_the_python_api_page_runs(tmp_path):
    blocks = BLOCK.findall(DOC.read_text())
    assert len(blocks) >= 5  # one call, callbacks, the pieces, the service, trackers
    script = tmp_path / "python_api.py"
    script.write_text("\n\n".join(blocks))
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("COMPO_ORACLE_")}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=TIMEOUT_S, env={**env, "OMP_WAIT_POLICY": "PASSIVE"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert "entries of the output layer changed" in done.stdout
    assert "comparisons, $" in done.stdout
