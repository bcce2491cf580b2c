"""The shape of the house: no import cycles (function-level imports included), `compo/`
imports without ray, fastapi or uvicorn and never `workers/` or the service beyond its wire
modules, files stay small, README's Layout is the tree."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compo", "workers", "oracle_service")
SERVER_SIDE = ("ray", "fastapi", "uvicorn", "starlette")  # never at module level in compo/
MAX_LINES = 400
WIRE = ("oracle_service.client", "oracle_service.schemas")  # all of the service compo/ sees


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, module_level_only: bool = False) -> set[str]:
    """Dotted names a file imports (relative imports resolved), anywhere in it or at module
    level only: `from a import b` names a.b (the module b, or the name b of a)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = run_at_import(tree) if module_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def run_at_import(tree: ast.AST) -> list[ast.AST]:
    """The nodes that run when the module is imported (not inside functions)."""
    found, todo = [], list(ast.iter_child_nodes(tree))
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        found.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return found


def graph() -> dict[str, set[str]]:
    """module -> project modules it imports (a name resolves to the longest module)."""
    modules = {module_name(p): p for p in sources()}
    edges = {}
    for name, path in modules.items():
        targets = set()
        for dotted in imported(path):
            while dotted and dotted not in modules:
                dotted = dotted.rpartition(".")[0]
            if dotted and dotted != name:
                targets.add(dotted)
        edges[name] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_not_even_through_function_level_imports():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_compo_has_no_module_level_import_of_the_server_side():
    offenders = {}
    for path in sources():
        if path.relative_to(ROOT).parts[0] != "compo":
            continue
        bad = {name for name in imported(path, module_level_only=True)
               if name.split(".")[0] in SERVER_SIDE}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def upward(names: set[str]) -> list[str]:
    """The imported names that point from compo/ up: workers.*, or oracle_service.* beyond
    WIRE (`from oracle_service import client` names oracle_service.client: allowed)."""
    return sorted(name for name in names if name.split(".")[0] == "workers" or (
        name.split(".")[0] == "oracle_service"
        and not any(name == wire or name.startswith(f"{wire}.") for wire in WIRE)))


def test_compo_never_imports_workers_or_the_service_beyond_its_wire_modules():
    offenders = {str(p.relative_to(ROOT)): bad for p in sources()
                 if p.relative_to(ROOT).parts[0] == "compo" and (bad := upward(imported(p)))}
    assert offenders == {}  # placement: compo/plugins.py; shared helpers: the wire modules


def test_upward_names_workers_and_the_service_beyond_the_wire():
    names = {"workers.coordinator.ray_trainer", "oracle_service.schemas.ErrorKind",
             "oracle_service.client", "oracle_service.clients.x", "oracle_service.fixes.fix_for",
             "compo.config.TrainConfig", "ray"}
    assert upward(names) == ["oracle_service.clients.x", "oracle_service.fixes.fix_for",
                             "workers.coordinator.ray_trainer"]


def test_every_compo_module_imports_with_the_server_side_missing():
    names = [module_name(p) for p in sources() if module_name(p).split(".")[0] == "compo"
             and not p.name == "__main__.py"]
    blocked = "".join(f"sys.modules[{name!r}] = None\n" for name in SERVER_SIDE)
    code = ("import importlib, sys\n" + blocked +
            f"for name in {names!r}:\n    importlib.import_module(name)\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_module_of_every_package_imports():
    names = [module_name(p) for p in sources() if p.name != "__main__.py"]
    code = f"import importlib\nfor name in {names!r}:\n    importlib.import_module(name)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]


def test_files_stay_under_the_size_limit():
    files = [*sources(), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in files
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def layout_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("## Layout", 1)[1].split("```", 2)[1]


def test_readme_layout_is_the_tree_of_compo_and_workers():
    block = layout_block()
    listed = set(re.findall(r"[\w]+\.py", block))
    modules = {p.name for package in ("compo", "workers") for p in (ROOT / package).rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    folders = {p.name for p in (ROOT / "compo").iterdir() if (p / "__init__.py").is_file()}
    assert sorted(modules - listed) == []  # every module is named
    assert sorted(listed - modules - {p.name for p in (ROOT / "oracle_service").rglob("*.py")}
                  ) == []  # nothing named that is not there
    assert sorted(f for f in folders if f"{f}/" not in block) == []


def test_architecture_doc_names_modules_that_exist():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w/])(?:compo|workers|oracle_service)/[\w/]+\.py", text))
    assert named and sorted(p for p in named if not (ROOT / p).is_file()) == []
