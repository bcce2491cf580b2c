#!/usr/bin/env bash
# The GPU check, on one GPU (expected under 10 minutes): the GPU-marked tests, the Mistral-7B-shape
# throughput benchmark (random bf16 weights; seconds per 1,800 perturbations), the fused
# kernel against the eager oracle, a Ray run with 2 workers sharing the GPU, the compile
# table of every Triton kernel variant (sm_80 and sm_90: registers, spills) and every
# variant launched once against the eager path. Every step's figures go into one JSON
# file; a failed step is recorded there and the next runs.
#
#   bench/gpu_check.sh [--out FILE]     # on a machine with a CUDA GPU
#   bench/gpu_check.sh --dry-run        # every step at toy sizes on CPU (CI runs this)
#
# PYTHON picks the interpreter (default .venv/bin/python, else python3). Exit status 0 when
# every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."

dry_run=0
out="bench/gpu_check.json"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --out) out="${2:?--out needs a file}"; shift ;;
        *) echo "usage: bench/gpu_check.sh [--dry-run] [--out FILE]" >&2; exit 2 ;;
    esac
    shift
done
python="${PYTHON:-}"
[ -n "$python" ] || { [ -x .venv/bin/python ] && python=.venv/bin/python || python=python3; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # see bench/perturbation_throughput.py
steps="$(mktemp -d)"
trap 'rm -rf "$steps"' EXIT

if [ "$dry_run" = 0 ] && ! "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: no CUDA GPU visible to $python; run with --dry-run on CPU" >&2
    exit 2
fi

# step NAME TIMEOUT_S COMMAND...: stdout's last line (JSON) goes to $steps/NAME.json,
# the rest to $steps/NAME.log; status and seconds to $steps/NAME.status
step() {
    local name="$1" limit="$2"
    shift 2
    local started=$SECONDS
    echo "gpu_check: $name ..." >&2
    timeout "$limit" "$@" >"$steps/$name.out" 2>"$steps/$name.log"
    local status=$?
    tail -n 1 "$steps/$name.out" >"$steps/$name.json"
    echo "$status $((SECONDS - started))" >"$steps/$name.status"
    echo "gpu_check: $name exit $status in $((SECONDS - started)) s" >&2
}

if [ "$dry_run" = 1 ]; then
    device=cpu
    test_paths=(tests/compo/kernels tests/compo/test_perturbation.py)  # collecting all: minutes
    interpret=(TRITON_INTERPRET=1)  # the fused kernel in Triton's CPU interpreter
    throughput=(--device cpu --shape tiny --prompt-tokens 8 --completion-tokens 16 --rounds 1
                --ours-per-round 2 --reference-per-round 1 --agreement 2)
    agreement=(--device cpu --tokens 40 --hidden 64 --vocab 100 --perturbations 2)
    ray=(--workers 2 --perturbations 32 --iterations 1 --vocab 512 --hidden 32)
    moved=(--device cpu --shape tiny --prompt-tokens 8 --completion-tokens 16
           --perturbations 2 --rounds 1)
    compile_table=(--defaults-only --targets sm_90 --jobs 2)  # tests/bench: sm_80 and sm_90
    launches=(--device cpu --defaults-only)  # in Triton's interpreter, at toy sizes
    compile_limit=240 launch_limit=180  # 2 shared CPU cores
else
    device=cuda
    test_paths=(tests)
    interpret=()
    throughput=(--device cuda --shape mistral-7b --prompt-tokens 128 --completion-tokens 1000
                --rounds 3 --ours-per-round 200 --reference-per-round 2 --agreement 50)
    agreement=(--device cuda --perturbations 50)
    ray=(--workers 1 2 --gpus-per-worker 0.3 --perturbations 800 --iterations 2
         --vocab 32000 --hidden 512 --chunk-size 64)
    moved=(--device cuda --shape mistral-7b --prompt-tokens 128 --completion-tokens 1000
           --perturbations 8 --rounds 3)
    compile_table=(--jobs 8)  # every variant for sm_80 and sm_90 (~60 compiles on 16 cores)
    launches=(--device cuda)  # every variant, JIT-compiled for this GPU one by one
    compile_limit=120 launch_limit=180
fi

# the step limits add up to 14 minutes on a GPU (expected: under 10), 16 in the dry run
step gpu_tests 150 "$python" -m pytest -q -m gpu -p no:cacheprovider \
    --junitxml "$steps/gpu_tests.xml" "${test_paths[@]}"
step throughput 150 "$python" bench/perturbation_throughput.py "${throughput[@]}"
step fused_agreement 60 env "${interpret[@]}" "$python" bench/fused_agreement.py "${agreement[@]}"
step ray_two_workers 120 "$python" bench/ray_scaling.py "${ray[@]}"
step moved_layers 60 "$python" bench/moved_layers.py "${moved[@]}"
step compile_table "$compile_limit" env -u TRITON_INTERPRET "$python" bench/kernel_compile.py --json \
    "${compile_table[@]}"
step kernel_launch "$launch_limit" env "${interpret[@]}" "$python" bench/kernel_launch.py "${launches[@]}"

"$python" - "$steps" "$out" "$device" "$dry_run" <<'EOF'
"""Gather every step's status, seconds and JSON figures into one file (written atomically)."""
import json, os, sys, xml.etree.ElementTree as ET
from pathlib import Path

steps, out, device, dry_run = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
report = {"check": "gpu_check", "device": device, "dry_run": dry_run == "1", "steps": {}}
for status_file in sorted(steps.glob("*.status")):
    name = status_file.stem
    status, seconds = (int(v) for v in status_file.read_text().split())
    entry = {"exit": status, "seconds": seconds, "passed": status == 0}
    try:
        entry["figures"] = json.loads((steps / f"{name}.json").read_text())
    except (OSError, ValueError):
        entry["log_tail"] = (steps / f"{name}.log").read_text(errors="replace")[-2000:]
    report["steps"][name] = entry
junit = steps / "gpu_tests.xml"
if junit.exists():
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    report["steps"]["gpu_tests"]["figures"] = counts
    report["steps"]["gpu_tests"].pop("log_tail", None)
report["passed"] = all(entry["passed"] for entry in report["steps"].values())
report["seconds"] = sum(entry["seconds"] for entry in report["steps"].values())
partial = out.with_name(out.name + ".part")
partial.write_text(json.dumps(report, indent=2) + "\n")
os.replace(partial, out)
print(json.dumps({"out": str(out), "passed": report["passed"], "seconds": report["seconds"]}))
sys.exit(0 if report["passed"] else 1)
EOF
