"""`compo demo`: the whole method on a tiny local model, end to end, in minutes on a CPU.

Builds a tokenizer and a small Llama from scratch, fits it briefly to part of the shipped
preference pairs (so log-probs mean something), splits by the margin, runs ComPO on the
noisy pairs, and reports how the trained pairs moved.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from compo import fileio
from compo.config import ComPOConfig, DataConfig, ModelConfig, SplitConfig, TrainConfig
from compo.data.encoding import pair_ids
from compo.data.formats import PreferencePair
from compo.data.split import split
from compo.demo.pairs import ASSET
from compo.demo.tiny import build_llama, build_tokenizer, save_model
from compo.model.loading import load_model, load_tokenizer
from compo.train import ComPOTrainer, export_run, start_run


@dataclass
class DemoSettings:
    """Sizes and knobs of the demo (small enough for 2 CPU cores)."""

    workdir: Path = Path("runs/demo")
    seed: int = 0
    vocab_size: int = 384
    hidden: int = 64
    layers: int = 2
    fit_fraction: float = 0.6  # pairs whose chosen response the model is fitted on
    fit_steps: int = 300
    fit_batch: int = 16
    fit_lr: float = 3e-3
    delta: float = 3.0
    # a 64-wide head needs a larger radius and step than a 4096-wide one to move visibly
    compo: ComPOConfig = field(default_factory=lambda: ComPOConfig(
        num_perturbations=1600, radius=2e-2, step_scale=2.0, accept_ratio=0.2))

    def __post_init__(self):
        self.workdir = Path(self.workdir)


def fit(model, tokenizer, rows: list[dict], settings: DemoSettings) -> list[float]:
    """Brief supervised fit on prompt + chosen (loss on the response tokens only)."""
    sequences = []
    for row in rows:
        pair = PreferencePair(row["prompt"], row["chosen"], row["rejected"], "fit")
        prompt, chosen, _ = pair_ids(pair, tokenizer, append_eos=True)
        sequences.append((prompt + chosen, len(prompt)))
    model.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.fit_lr)
    rng = random.Random(settings.seed)
    losses = []
    for _ in range(settings.fit_steps):
        batch = rng.sample(sequences, min(settings.fit_batch, len(sequences)))
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        for i, (seq, prompt_len) in enumerate(batch):
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, prompt_len : len(seq)] = torch.tensor(seq[prompt_len:])
        loss = model(input_ids=ids, attention_mask=(labels != -100) | (ids != 0),
                     labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval().requires_grad_(False)
    return losses


def build_start_model(settings: DemoSettings, rows: list[dict]) -> Path:
    """Tokenizer + tiny Llama, fitted on a fraction of the pairs, saved to workdir/model."""
    texts = [row[key] for row in rows for key in ("prompt", "chosen", "rejected")]
    tokenizer = build_tokenizer(texts, settings.vocab_size)
    model = build_llama(len(tokenizer), settings.hidden, settings.layers, seed=settings.seed)
    rng = random.Random(settings.seed)
    fitted = rng.sample(rows, int(settings.fit_fraction * len(rows)))
    losses = fit(model, tokenizer, fitted, settings)
    print(f"fitted tiny Llama ({sum(p.numel() for p in model.parameters()):,} params) "
          f"on {len(fitted)} pairs: loss {losses[0]:.2f} -> {losses[-1]:.2f}")
    return save_model(model, tokenizer, settings.workdir / "model")


def compare(run_dir: Path, model_dir: Path, noisy_path: Path) -> dict:
    """Log-probs of the trained noisy pairs before (start model) and after (exported)."""
    from compo.data.encoding import load_tokenized
    from compo.model.scoring import score_pairs

    tokenizer = load_tokenizer(model_dir)
    pairs, _ = load_tokenized(DataConfig(path=str(noisy_path), too_long="truncate"),
                              tokenizer)
    results = {}
    for name, path in (("before", model_dir), ("after", run_dir / "final")):
        model = load_model(ModelConfig(path=str(path)))
        results[name] = score_pairs(model, pairs, tokenizer.pad_token_id)
    (c0, r0), (c1, r1) = results["before"], results["after"]
    return {
        "pairs": len(pairs),
        "chosen_up": int((c1 > c0).sum()), "rejected_down": int((r1 < r0).sum()),
        "both": int(((c1 > c0) & (r1 < r0)).sum()),
        "mean_chosen_change": float((c1 - c0).mean()),
        "mean_rejected_change": float((r1 - r0).mean()),
        "margin_before": float((c0 - r0).mean()), "margin_after": float((c1 - r1).mean()),
    }


def run_demo(settings: DemoSettings | None = None, progress: bool = True) -> dict:
    """The whole demo; returns the before/after summary (also written to summary.json)."""
    settings = settings or DemoSettings()
    started = time.perf_counter()
    shutil.rmtree(settings.workdir, ignore_errors=True)
    data_path = settings.workdir / "data" / "pairs.jsonl"
    data_path.parent.mkdir(parents=True)
    shutil.copyfile(ASSET, data_path)
    rows = fileio.read_jsonl(data_path)
    model_dir = build_start_model(settings, rows)
    model = ModelConfig(path=str(model_dir))
    report = split(SplitConfig(model=model, data=DataConfig(path=str(data_path)),
                               delta=settings.delta, output_dir=str(settings.workdir / "split")))
    print(f"split (|margin| <= {settings.delta}): {report['noisy']} noisy, "
          f"{report['clean']} clean of {report['pairs']} pairs")
    noisy_path = settings.workdir / "split" / "noisy.jsonl"
    config = TrainConfig(model=model, data=DataConfig(path=str(noisy_path)),
                         compo=settings.compo, seed=settings.seed, run_id="compo",
                         output_dir=str(settings.workdir / "runs"))
    trainer = ComPOTrainer(config, start_run(config))
    export_run(trainer, trainer.run(progress=progress))
    summary = compare(trainer.run_dir.path, model_dir, noisy_path)
    metrics = trainer.run_dir.metrics()
    summary["iterations"] = len(metrics)
    summary["accepted"] = sum(row["accepted"] for row in metrics)
    summary["seconds"] = time.perf_counter() - started
    fileio.write_json(settings.workdir / "summary.json", summary)
    print_table(summary, trainer.run_dir.path)
    return summary


def print_table(s: dict, run_dir: Path) -> None:
    """The before/after table a newcomer reads."""
    n = s["pairs"]
    print(f"\nComPO on {n} noisy pairs: {s['accepted']}/{s['iterations']} iterations "
          f"accepted, {s['seconds']:.0f} s total")
    print(f"{'':32}{'pairs':>8}{'share':>8}")
    for label, key in (("log pi(y+) went up", "chosen_up"),
                       ("log pi(y-) went down", "rejected_down"),
                       ("both (the ComPO goal)", "both")):
        print(f"{label:32}{s[key]:>8}{s[key] / n:>8.0%}")
    print(f"mean change of log pi(y+): {s['mean_chosen_change']:+.3f}, of log pi(y-): "
          f"{s['mean_rejected_change']:+.3f}; mean margin {s['margin_before']:+.3f} -> "
          f"{s['margin_after']:+.3f}")
    print(f"run directory: {run_dir} (metrics.jsonl, final/, delta.safetensors)")
