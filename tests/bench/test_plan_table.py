"""README's `compo plan` table is what bench/plan_table.py prints (the command, run now)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "plan_table.py"


def test_readme_table_is_the_commands_output():
    spec = importlib.util.spec_from_file_location("plan_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.table() in (ROOT / "README.md").read_text(encoding="utf-8")
