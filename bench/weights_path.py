"""Work and bytes on the weights path at a head's shape (#21): the coordinator's versions,
a lagging worker's catch-up, and checkpoint bytes, before and after, in one run.

Steps keep a `--kept` fraction of the entries (ComPO's clipped step, ~2% by default).
  before: WeightVersions compared the whole master to a held copy at each publish (two
          publishes per iteration: the step, then the next round's no-change check), and a
          worker that missed a version got the full patch (every entry changed since load);
          a checkpoint wrote the dense float32 master every checkpoint_every = 10 iterations.
  after:  the step's positions are watched, so a publish compares only those; a lagging
          worker gets the chain of step patches or a dense snapshot, whichever is fewer
          bytes; a checkpoint appends the step's entries to the delta log (a dense master
          every dense_every = 100 iterations, sooner if the log reaches 4 masters).
The "before" compares are the old code inline (timed on the same master, same steps).

  python bench/weights_path.py                     # Mistral-7B's head: 32000 x 4096
  python bench/weights_path.py --rows 2000 --cols 512 --versions 20   # quick
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from compo.rundir import LOG_MASTERS, Checkpoint, RunDirectory
from workers.protocol import WeightChain, WeightVersions

POSITION_AND_VALUE = 8  # int32 position + float32 value: a patch's bytes per entry


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=32000)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--kept", type=float, default=0.02, help="fraction kept per step")
    parser.add_argument("--versions", type=int, default=100, help="accepted steps in all")
    parser.add_argument("--timed", type=int, default=5, help="steps timed both ways")
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--dense-every", type=int, default=100)
    return parser.parse_args()


def sparse_step(numel: int, kept: float, generator: torch.Generator):
    """Unique sorted flat positions (about `kept` of them) and the values added there."""
    positions = torch.randint(0, numel, (int(kept * numel),), generator=generator).unique()
    return positions, torch.randn(len(positions), generator=generator) * 1e-3


def old_publish(weight: torch.Tensor, held: torch.Tensor) -> int:
    """The old WeightVersions.advance: a full compare with the held copy, then its update."""
    changed = (weight != held).view(-1).nonzero().squeeze(1)
    held.view(-1)[changed] = weight.view(-1)[changed]
    return changed.numel()


def versions_and_catch_up(args, master: torch.Tensor) -> dict:
    """Steps published both ways (the old one timed on the first --timed steps), then the
    bytes a worker 1, 50 and --versions behind is sent."""
    generator, numel = torch.Generator().manual_seed(0), master.numel()
    versions, held = WeightVersions(master.clone()), master.clone()
    versions.advance(master)  # adopt: version 0, what every worker loaded
    touched = torch.zeros(numel, dtype=torch.bool)  # the old full patch's entries
    old_s, new_s, patch_bytes, full_bytes, answers = [], [], [], {}, {}
    for version in range(1, args.versions + 1):
        positions, values = sparse_step(numel, args.kept, generator)
        started = time.perf_counter()
        versions.watch(positions)  # the rebuild's "step" results
        watched = time.perf_counter() - started
        master.view(-1).index_add_(0, positions, values)  # the step (not the versions' work)
        started = time.perf_counter()
        patch = versions.advance(master)  # the publish of the step
        assert versions.advance(master) is None  # the next round's check: nothing moved
        new_s.append(watched + time.perf_counter() - started)
        if held is not None:
            started = time.perf_counter()
            changed = old_publish(master, held)
            assert changed == len(patch.indices) and old_publish(master, held) == 0
            old_s.append(time.perf_counter() - started)
            held = held if version < args.timed else None  # free it: one master from here
        patch_bytes.append(patch.nbytes)
        touched[positions] = True
        if version in (50, args.versions):
            full_bytes[version] = int(touched.sum()) * POSITION_AND_VALUE
            answers[version] = versions.patch_for(0)  # a worker `version` behind
    behind = {}
    for version, answer in answers.items():
        behind[str(version)] = {
            "old_full_patch_bytes": full_bytes[version],
            "chain_bytes": sum(patch_bytes[:version]), "dense_bytes": numel * 4,
            "sent": "chain" if isinstance(answer, WeightChain) else "dense",
            "sent_bytes": answer.nbytes}
    behind["1"] = {"old_step_bytes": patch_bytes[-1], "sent_bytes":
                   versions.patch_for(args.versions - 1).nbytes}
    return {"publish_seconds_per_iteration": {"before": median(old_s), "after": median(new_s)},
            "catch_up": behind, "chain_patches_kept": len(versions.chain),
            "step_patch_bytes": median(patch_bytes)}


def checkpoints(args, master: torch.Tensor) -> dict:
    """A real run directory: the first commit's dense master, --timed log records, a commit;
    resuming it (dense + replay) gives the master bit for bit."""
    generator, numel = torch.Generator().manual_seed(1), master.numel()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = RunDirectory(tmp)
        started = time.perf_counter()
        run_dir.save_checkpoint(Checkpoint(0, master), args.dense_every)
        dense_s = time.perf_counter() - started
        dense = (run_dir.path / run_dir.weights).stat().st_size
        log, append_s = run_dir.path / run_dir.log.name, []
        for iteration in range(args.timed):
            positions, values = sparse_step(numel, args.kept, generator)
            master.view(-1).index_add_(0, positions, values)
            started = time.perf_counter()
            run_dir.append_delta(iteration, positions, master)
            append_s.append(time.perf_counter() - started)
        record = log.stat().st_size / args.timed
        run_dir.save_checkpoint(Checkpoint(args.timed, master), args.dense_every)
        started = time.perf_counter()
        resumed = RunDirectory(tmp).load_checkpoint()  # the dense master + the log replayed
        load_s = time.perf_counter() - started
        assert resumed.iterations_done == args.timed and torch.equal(resumed.weight, master)
    period = max(args.checkpoint_every, min(args.dense_every, round_up(
        LOG_MASTERS * dense / record, args.checkpoint_every)))
    return {"dense_master_bytes": dense, "dense_write_seconds": dense_s,
            "log_record_bytes": record, "log_append_seconds": median(append_s),
            "resume_seconds": load_s, "dense_period_iterations": period,
            "bytes_per_iteration": {"before": dense / args.checkpoint_every,
                                    "after": record + dense / period}}


def round_up(value: float, step: int) -> int:
    return int(-(-value // step) * step)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


def main() -> None:
    args = parse_args()
    master = torch.randn(args.rows, args.cols, generator=torch.Generator().manual_seed(2))
    report = {"shape": [args.rows, args.cols], "kept": args.kept, "versions": args.versions,
              **versions_and_catch_up(args, master), "checkpoint": checkpoints(args, master)}
    publish, ckpt = report["publish_seconds_per_iteration"], report["checkpoint"]
    behind = report["catch_up"][str(args.versions)]
    report["ratios"] = {
        "publish_seconds": publish["before"] / publish["after"],
        "catch_up_50_bytes": report["catch_up"]["50"]["old_full_patch_bytes"]
        / report["catch_up"]["50"]["sent_bytes"] if "50" in report["catch_up"] else None,
        f"catch_up_{args.versions}_bytes": behind["old_full_patch_bytes"] / behind["sent_bytes"],
        "checkpoint_bytes_per_iteration": ckpt["bytes_per_iteration"]["before"]
        / ckpt["bytes_per_iteration"]["after"],
        "log_record_of_dense": ckpt["log_record_bytes"] / ckpt["dense_master_bytes"]}
    for key, value in report["ratios"].items():
        print(f"{key}: {value:.3g}" if value is not None else f"{key}: -")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
