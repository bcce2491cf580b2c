"""`compo pipeline`: split -> first stage on the clean pairs (TRL) -> ComPO on the noisy
pairs from the first stage's checkpoint -> export, plots, evaluation.

Layout of <output_dir>/:
  pipeline.yaml     the resolved config
  split/            clean.jsonl, noisy.jsonl, report.json (margin, CHES, ROPO, overlaps)
  first_stage/      trl/ (resumable TRL checkpoints), model/, log_history.json
  compo/run/        the ComPO run directory (metrics.jsonl, final/, delta.safetensors)
  plots/*.png, eval/report.md, summary.json
Every stage directory holds stage.json: the config the stage was made with and, once it
finished, its outputs. A finished stage is skipped on re-run, an unfinished one resumes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from compo import fileio
from compo.config import DataConfig, ModelConfig, SplitConfig, TrainConfig
from compo.config_files import dump_config, parse_config, require_model_dir, require_path
from compo.errors import ConfigError
from compo.eval.config import EvalConfig
from compo.pipeline.config import PipelineConfig

MARKER = "stage.json"
PIPELINE_SET_KEYS = ("model", "data", "output_dir", "run_id")  # of TrainConfig


@dataclass
class Plan:
    """What every stage reads and writes, resolved before any work starts."""

    out: Path
    clean: DataConfig  # the first stage's pairs
    noisy: DataConfig  # ComPO's pairs
    start_model: ModelConfig  # where ComPO starts
    train: TrainConfig | None  # ComPO's run config (None: stage skipped)

    def stage_dir(self, name: str) -> Path:
        return self.out / name

    @property
    def compo_run(self) -> Path:
        return self.out / "compo" / "run"


def count_rows(path: str | Path) -> int:
    """Non-blank lines of a JSONL file (0 when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def stage_data(config: PipelineConfig, out: Path) -> tuple[DataConfig, DataConfig]:
    """(clean, noisy) pairs of the two training stages."""
    if config.split.skip and config.split.from_dir is None:
        return config.data, config.data  # no split: every pair goes to both stages
    folder = Path(config.split.from_dir) if config.split.skip else out / "split"
    return tuple(config.data.model_copy(update={"path": str(folder / f"{name}.jsonl"),
                                                "split": None})
                 for name in ("clean", "noisy"))


def start_model(config: PipelineConfig, out: Path) -> ModelConfig:
    """The model ComPO starts from: the first stage's output, or the given checkpoint."""
    if not config.first_stage.skip:
        path = out / "first_stage" / "model"
    else:
        path = config.first_stage.checkpoint or config.model.path
    return config.model.model_copy(update={"path": str(path)})


def compo_train_config(config: PipelineConfig, model: ModelConfig, noisy: DataConfig,
                       out: Path) -> TrainConfig:
    """ComPO's TrainConfig: compo.train plus what the pipeline sets."""
    clash = [key for key in PIPELINE_SET_KEYS if key in config.compo.train]
    if clash:
        raise ConfigError(f"compo.train: {clash} are set by the pipeline (ComPO runs on the "
                          "noisy pairs from the first stage's model); remove them")
    data = {**config.compo.train, "model": model.model_dump(), "data": noisy.model_dump(),
            "output_dir": str(out / "compo"), "run_id": "run"}
    train = parse_config(TrainConfig, data, "pipeline config: compo.train")
    if getattr(train, "ray", None) is not None:
        raise ConfigError("compo.train.ray: the pipeline runs ComPO in this process; for a Ray "
                          "cluster set compo.skip: true and run `compo train` on "
                          f"{noisy.path} from {model.path}")
    return train


def split_config(config: PipelineConfig, out: Path) -> SplitConfig:
    """The core SplitConfig of the split stage."""
    split = config.split
    return parse_config(SplitConfig, {
        "model": config.model.model_dump(), "data": config.data.model_dump(),
        "delta": split.delta, "rule": split.rule, "histogram_bins": split.histogram_bins,
        "output_dir": str(out / "split")}, "pipeline config: split")


def check_inputs(config: PipelineConfig, clean: DataConfig, noisy: DataConfig) -> None:
    """Input files exist; a given split directory has non-empty files where needed."""
    split = config.split
    if split.from_dir is None:
        require_path(config.data.path, "data.path")
        return
    needed = [("clean", clean, config.first_stage.skip), ("noisy", noisy, config.compo.skip)]
    for name, data, skipped in needed:
        if not skipped and count_rows(data.path) == 0:
            raise ConfigError(f"split.from_dir: {data.path} is missing or empty, so the "
                              f"{name} pairs' stage has nothing to train on; point from_dir "
                              "at a split made by `compo split`, or skip that stage")


def stage_inputs(config: PipelineConfig) -> dict[str, dict]:
    """Per stage: the config sections its result depends on (its own and upstream)."""
    dump = config.model_dump(mode="json")
    split = {key: dump[key] for key in ("model", "data", "split")}
    first = {**split, "first_stage": dump["first_stage"], "seed": dump["seed"]}
    return {"split": split, "first_stage": first, "compo": {**first, "compo": dump["compo"]}}


def read_marker(folder: Path) -> dict | None:
    """A stage's stage.json, or None."""
    path = folder / MARKER
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def check_stages(config: PipelineConfig, out: Path) -> None:
    """Stages already (partly) done must have been made with the same config."""
    skipped = {"split": config.split.skip, "first_stage": config.first_stage.skip,
               "compo": config.compo.skip}
    for name, inputs in stage_inputs(config).items():
        marker = read_marker(out / name)
        if skipped[name] or marker is None or marker["inputs"] == inputs:
            continue
        changed = sorted(key for key in inputs if marker["inputs"].get(key) != inputs[key])
        raise ConfigError(f"{out / name}: stage {name} was made with a different config "
                          f"(changed: {', '.join(changed)}); delete {out / name} and the "
                          "stages after it to redo them, or use another output_dir")


def validate(config: PipelineConfig) -> Plan:
    """Every check that needs no model loaded, before any work starts."""
    out = Path(config.output_dir)
    require_model_dir(config.model.path, "model.path")
    clean, noisy = stage_data(config, out)
    check_inputs(config, clean, noisy)
    if not config.split.skip:
        split_config(config, out)
    if not config.first_stage.skip:
        from compo.pipeline.first_stage import trl_arguments

        if not config.data.append_eos:
            raise ConfigError("data.append_eos: false, but TRL's trainers end every text "
                              "response with EOS, so the first stage would train on other "
                              "tokens than the split and ComPO score; keep append_eos: true "
                              "or set first_stage.skip: true")

        trl_arguments(config.first_stage, config.model, out / "first_stage" / "trl",
                      config.seed)
    elif config.first_stage.checkpoint is not None:
        require_model_dir(config.first_stage.checkpoint, "first_stage.checkpoint")
    model = start_model(config, out)
    train = None if config.compo.skip else compo_train_config(config, model, noisy, out)
    if config.eval is not None:
        require_path(config.eval.data.path, "eval.data.path")
        if config.eval.judge is not None:
            require_model_dir(config.eval.judge.reference_model.path,
                              "eval.judge.reference_model.path")
    if config.plots:
        require("matplotlib", "plots: true")
    check_stages(config, out)
    return Plan(out, clean, noisy, model, train)


def require(module: str, field: str) -> None:
    """An optional dependency a setting needs."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{field} needs {module}; install it with: pip install "
                          "'compo[train]', or turn the option off")


def run_stage(name: str, folder: Path, inputs: dict, work: Callable[[], dict]) -> dict:
    """Run `work` unless stage.json says it finished; record inputs and outputs."""
    marker = read_marker(folder)
    if marker is not None and marker.get("done"):
        print(f"{name}: finished earlier ({folder / MARKER}); skipped")
        return marker["outputs"]
    fileio.write_json(folder / MARKER, {"stage": name, "done": False, "inputs": inputs})
    started = time.perf_counter()
    print(f"{name}: running")
    outputs = dict(work(), seconds=time.perf_counter() - started)
    fileio.write_json(folder / MARKER, {"stage": name, "done": True, "inputs": inputs,
                                        "outputs": outputs})
    return outputs


def do_split(config: PipelineConfig, out: Path) -> dict:
    """Margin split (plus CHES and ROPO when enabled) with the reference model."""
    from compo.data.ches import ches_criterion
    from compo.data.ropo import ropo_criterion
    from compo.data.split import split

    ches, ropo = config.split.ches, config.split.ropo
    criterion = None
    if ches.enabled:
        criterion = ches_criterion(ches, config.split.criterion == "ches",
                                   config.model.batch_size, config.split.histogram_bins)
    if ropo.enabled:
        criterion = ropo_criterion(ropo, criterion, config.split.criterion == "ropo")
    report = split(split_config(config, out), criterion)
    keys = ("pairs", "noisy", "clean", "criterion", "overlap", "three_way")
    return {key: report[key] for key in keys if key in report}


def check_split_sizes(config: PipelineConfig, plan: Plan) -> None:
    """After the split, before training: both training stages have pairs."""
    rule = (f"criterion {config.split.criterion}, delta {config.split.delta}"
            if not config.split.skip else f"split.from_dir {config.split.from_dir}")
    if not config.compo.skip and count_rows(plan.noisy.path) == 0:
        raise ConfigError(f"{plan.noisy.path}: no noisy pairs ({rule}), so ComPO has nothing "
                          "to train on; raise split.delta, use split.criterion: ches with "
                          "ches.top_fraction, or set compo.skip: true")
    if not config.first_stage.skip and count_rows(plan.clean.path) == 0:
        raise ConfigError(f"{plan.clean.path}: no clean pairs ({rule}), so the first stage has "
                          "nothing to train on; lower split.delta or set first_stage.skip: true")


def do_compo(plan: Plan, progress: bool) -> dict:
    """ComPO from the start model on the noisy pairs (resumes a saved run), then export."""
    from compo.rundir import RunDirectory
    from compo.train import ComPOTrainer, export_run

    run_dir = RunDirectory(plan.compo_run)
    if not run_dir.checkpoint_path.exists():
        run_dir.create(plan.train)
    trainer = ComPOTrainer(plan.train, run_dir)
    try:
        weight = trainer.run(progress=progress)
    finally:
        trainer.close()
    delta = export_run(trainer, weight)
    metrics = run_dir.metrics()
    return {"run_dir": str(run_dir.path), "model": str(run_dir.path / "final"),
            "pairs": len(trainer.pairs), "iterations": len(metrics),
            "accepted": sum(row["accepted"] for row in metrics),
            "delta_entries": delta["entries"], "delta_fraction": delta["fraction"]}


def run_pipeline(config: PipelineConfig, progress: bool = True) -> dict:
    """All stages in order; returns (and writes) summary.json."""
    plan = validate(config)
    fileio.write_text(plan.out / "pipeline.yaml", dump_config(config))
    inputs = stage_inputs(config)
    summary = {"output_dir": str(plan.out)}
    if not config.split.skip:
        summary["split"] = run_stage("split", plan.stage_dir("split"), inputs["split"],
                                     lambda: do_split(config, plan.out))
    check_split_sizes(config, plan)
    if not config.first_stage.skip:
        from compo.pipeline.first_stage import train_first_stage

        summary["first_stage"] = run_stage(
            "first_stage", plan.stage_dir("first_stage"), inputs["first_stage"],
            lambda: train_first_stage(config.first_stage, config.model, plan.clean,
                                      plan.stage_dir("first_stage"), config.seed, progress))
    final = plan.start_model.path
    if plan.train is not None:
        summary["compo"] = run_stage("compo", plan.stage_dir("compo"), inputs["compo"],
                                     lambda: do_compo(plan, progress))
        final = summary["compo"]["model"]
    summary["final_model"] = final
    if config.plots:
        from compo.eval.plots import plot_pipeline

        summary["plots"] = [str(path) for path in plot_pipeline(plan.out)]
    if config.eval is not None:
        summary["eval"] = evaluate_final(config, plan, final)
    fileio.write_json(plan.out / "summary.json", summary)
    return summary


def evaluate_final(config: PipelineConfig, plan: Plan, final: str) -> dict:
    """`compo eval` of the final model on the held-out pairs, against the reference model."""
    from compo.eval.evaluate import evaluate

    spec = config.eval
    eval_config = EvalConfig(
        model=config.model.model_copy(update={"path": final}), data=spec.data,
        base_model=config.model, run_dir=str(plan.out), output_dir=str(plan.out / "eval"),
        generation=spec.generation, judge=spec.judge)
    report = evaluate(eval_config)
    return {key: report[key] for key in ("report", "preference_accuracy", "base_accuracy")
            if key in report}
