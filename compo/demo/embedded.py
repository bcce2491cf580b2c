"""The embedded default of `compo pipeline` and `compo compare`: the demo's pairs and tiny
model (compo.demo.run), with a held-out part of the pairs that no stage trains on.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from compo import fileio
from compo.demo.pairs import ASSET
from compo.demo.run import DemoSettings, build_start_model

HELDOUT_FRACTION = 0.2  # share of the demo pairs kept out of every training stage
DEFAULT_WORKDIR = Path("runs/pipeline-demo")
# the first stage on the tiny model: a learning rate that moves it within one epoch
FIRST_STAGE = {"trainer": "dpo", "beta": 0.1, "learning_rate": 1e-3, "epochs": 1,
               "batch_size": 16, "max_length": 128, "save_steps": 10, "logging_steps": 2,
               "trl_args": {"gradient_checkpointing": False}}
EVAL_GENERATION = {"max_new_tokens": 24, "max_prompts": 60, "batch_size": 16}


@dataclass
class EmbeddedData:
    """The embedded default's files: start (SFT) model, training and held-out pairs."""

    model_dir: Path
    train: Path
    heldout: Path

    @classmethod
    def at(cls, workdir: str | Path) -> EmbeddedData:
        """Where the files of a workdir are (whether built yet or not)."""
        workdir = Path(workdir)
        return cls(workdir / "model", workdir / "data" / "train.jsonl",
                   workdir / "data" / "heldout.jsonl")


def split_heldout(rows: list[dict], fraction: float, seed: int) -> tuple[list, list]:
    """(train, held-out) rows: a seeded random `fraction` is held out."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    cut = round(fraction * len(rows))
    held = set(order[:cut])
    return ([row for i, row in enumerate(rows) if i not in held],
            [row for i, row in enumerate(rows) if i in held])


def prepare_embedded(workdir: str | Path, settings: DemoSettings | None = None) -> EmbeddedData:
    """Write the pair files and build the start model once (reused when already there)."""
    workdir = Path(workdir)
    settings = replace(settings or DemoSettings(), workdir=workdir / ".model-build")
    train, heldout = split_heldout(fileio.read_jsonl(ASSET), HELDOUT_FRACTION, settings.seed)
    data = EmbeddedData.at(workdir)
    fileio.write_jsonl(data.train, train)
    fileio.write_jsonl(data.heldout, heldout)
    if not (data.model_dir / "config.json").is_file():
        shutil.rmtree(settings.workdir, ignore_errors=True)
        built = build_start_model(settings, train)  # SFT on the training pairs only
        shutil.rmtree(data.model_dir, ignore_errors=True)
        built.rename(data.model_dir)  # whole directory appears at once
        shutil.rmtree(settings.workdir, ignore_errors=True)
    return data


def embedded_pipeline(data: EmbeddedData, output_dir: str | Path,
                      settings: DemoSettings | None = None) -> dict:
    """The embedded default pipeline config (a mapping: --set overrides merge into it)."""
    settings = settings or DemoSettings()
    return {
        "output_dir": str(output_dir), "seed": settings.seed,
        "model": {"path": str(data.model_dir), "batch_size": 16},
        "data": {"path": str(data.train)},
        "split": {"criterion": "margin", "delta": settings.delta},
        "first_stage": FIRST_STAGE,
        "compo": {"train": {"compo": settings.compo.model_dump(mode="json"),
                            "seed": settings.seed, "checkpoint_every": 5}},
        "eval": {"data": {"path": str(data.heldout)}, "generation": EVAL_GENERATION},
    }
