"""Dependency floors that are true: every version-dependent call the code makes exists at
the minimum pyproject.toml declares. Each row names the call, the file that makes it (and
text it contains, so a row goes stale loudly), the earliest release checked to have it, and
how that was checked."""

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with tomllib (3.11+)")
ROOT = Path(__file__).resolve().parents[1]

# (package, call, file using it, text in that file, release checked to have it, evidence)
NEEDS = [
    ("torch", "torch.mm(a, b, out_dtype=)", "compo/oracle.py", "out_dtype=torch.float32",
     "2.8", "out_dtype of mm/bmm is new in 2.8: a TypeError on 2.4-2.7 (issue 22)"),
    ("torch", "torch.ops.aten.segment_reduce(lengths=, initial=)", "compo/model/scoring.py",
     "torch.ops.aten.segment_reduce(", "2.0", "the aten op since 1.11; 2.0 made the Python "
     "name private (torch._segment_reduce, pytorch#93166) and kept the op"),
    ("transformers", "AutoModelForCausalLM.from_pretrained(dtype=)", "compo/model/loading.py",
     "dtype=DTYPES[", "4.56", "4.56.0's from_pretrained reads dtype; 4.55.0 reads torch_dtype"
     " only (the released wheels' modeling_utils.py)"),
    ("transformers", "DynamicCache(config=)", "compo/service_oracle/generation.py",
     "DynamicCache(config=", "4.55", "4.55.0's Cache.__init__ takes config (wheel source)"),
    ("triton", "tl.dot(a, b, acc, input_precision=, out_dtype=)",
     "compo/kernels/triton_kernels.py", 'input_precision="ieee"', "3.4",
     "triton 3.4.0's language/core.py dot signature (wheel source)"),
    ("triton", "tl.reshape, tl.trans", "compo/kernels/triton_kernels.py",
     "tl.reshape(", "3.4", "triton 3.4.0's language/core.py (wheel source)"),
    ("trl", "trl.experimental.cpo / trl.experimental.orpo", "compo/pipeline/first_stage.py",
     '"trl.experimental.cpo"', "1.0", "the trl 1.0.0 wheel has both packages"),
    ("ray", "ray.exceptions.ActorUnavailableError", "workers/transport.py",
     "ray.exceptions.ActorUnavailableError", "2.40", "ray 2.40.0's exceptions.py (wheel)"),
    ("ray", "ray.util.placement_group_table, PlacementGroupSchedulingStrategy",
     "workers/placement.py", "placement_group_table", "2.40", "ray 2.40.0's util (wheel)"),
]


def declared_floors() -> dict[str, Version]:
    """The lowest version pyproject allows for each package (main and optional deps)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs += [s for s in extra if not s.startswith("compo[")]
    floors = {}
    for spec in specs:
        requirement = Requirement(spec)
        lows = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
        if lows:
            floors[requirement.name] = min(lows + [floors.get(requirement.name, lows[0])])
    return floors


@pytest.mark.parametrize("package, call, path, text, since, evidence", NEEDS,
                         ids=[f"{row[0]}: {row[1]}" for row in NEEDS])
def test_the_declared_floor_has_the_call(package, call, path, text, since, evidence):
    floor = declared_floors().get(package)
    assert floor is not None, f"pyproject.toml declares no minimum for {package}"
    assert floor >= Version(since), (f"{call} ({path}) needs {package} >= {since} "
                                     f"({evidence}); pyproject.toml allows {floor}")
    assert text in (ROOT / path).read_text(), f"{path} no longer has {text!r}: update NEEDS"


def test_every_dependency_has_a_floor():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = declared_floors()
    names = [Requirement(s).name for s in project["dependencies"]]
    assert all(name in floors for name in names)
    assert {row[0] for row in NEEDS} <= set(floors)
    assert re.fullmatch(r"\d+(\.\d+)*", str(floors["torch"]))
