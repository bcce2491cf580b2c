"""Fit the reward model the `reward_model` backend serves: a Hugging Face
sequence-classification model (one score) trained on preference pairs with the
Bradley-Terry loss -log sigmoid(r(prompt, chosen) - r(prompt, rejected)).

The texts scored are exactly the backend's (format_text: the tokenizer's chat template of
(user prompt, assistant response), or prompt + separator + response), so the model serves
as it was trained. `compo reward-model fit` (oracle_service/reward_cli.py) runs it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional

from oracle_service.backends.reward_model import format_text

DEFAULT_SEPARATOR = "\n\n"  # Settings.reward_text_separator's default
FIELDS = ("prompt", "chosen", "rejected")


class FitError(ValueError):
    """Bad input for the fit: the message names the file, line or option and the fix."""


@dataclass(frozen=True)
class FitSettings:
    """How the reward model is trained."""

    steps: int = 150
    batch_size: int = 16  # pairs per step
    learning_rate: float = 2e-3
    seed: int = 0
    max_length: int = 4096  # tokens per (prompt, response) text: Settings.reward_max_length
    separator: str = DEFAULT_SEPARATOR
    device: str = "cpu"


@dataclass(frozen=True)
class ScratchShape:
    """A small Llama built from scratch on the base's tokenizer (no pretrained weights)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    max_positions: int = 1024


def read_pairs(path: str | Path) -> list[dict]:
    """Preference pairs from a JSONL file: string `prompt`, `chosen`, `rejected` per line."""
    path, rows = Path(path), []
    if not path.is_file():
        raise FitError(f"{path}: no such file (JSONL of prompt, chosen, rejected)")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise FitError(f"{path}:{number}: not JSON ({error.msg})") from None
        missing = [name for name in FIELDS if not isinstance(row.get(name), str)]
        if missing:
            raise FitError(f"{path}:{number}: {', '.join(missing)} must be strings (a pair "
                           "is {\"prompt\": ..., \"chosen\": ..., \"rejected\": ...})")
        rows.append(row)
    if not rows:
        raise FitError(f"{path}: no pairs")
    return rows


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:  # batched scoring pads, as the backend does
        if tokenizer.eos_token is None:
            raise FitError(f"{path}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def new_model(base: str | Path, tokenizer, scratch: ScratchShape | None, seed: int):
    """The model to fit: `base` with a new one-score head, or a scratch Llama."""
    from transformers import (
        AutoModelForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    torch.manual_seed(seed)
    if scratch is None:
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=1, local_files_only=True, dtype=torch.float32)
    else:
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=scratch.hidden,
                             intermediate_size=3 * scratch.hidden,
                             num_hidden_layers=scratch.layers,
                             num_attention_heads=scratch.heads,
                             num_key_value_heads=scratch.kv_heads, num_labels=1,
                             pad_token_id=tokenizer.pad_token_id,
                             max_position_embeddings=scratch.max_positions)
        model = LlamaForSequenceClassification(config)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def scores(model, tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    """Scalar rewards [N] of the texts (one padded batch)."""
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(model.device)
    return model(**encoded).logits[:, 0]


def pair_texts(tokenizer, rows: list[dict], key: str, separator: str) -> list[str]:
    return [format_text(tokenizer, row["prompt"], row[key], separator) for row in rows]


def fit(model, tokenizer, rows: list[dict], settings: FitSettings) -> list[float]:
    """Train in place (seeded batches of pairs, AdamW); the loss of every step."""
    model.to(settings.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    rng = random.Random(settings.seed)
    chosen, rejected = (pair_texts(tokenizer, rows, key, settings.separator)
                        for key in ("chosen", "rejected"))
    losses = []
    for _ in range(settings.steps):
        batch = rng.sample(range(len(rows)), min(settings.batch_size, len(rows)))
        margin = (scores(model, tokenizer, [chosen[i] for i in batch], settings.max_length)
                  - scores(model, tokenizer, [rejected[i] for i in batch], settings.max_length))
        loss = -functional.logsigmoid(margin).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.inference_mode()
def pair_accuracy(model, tokenizer, rows: list[dict], settings: FitSettings) -> float:
    """Share of pairs whose chosen response scores above the rejected one."""
    model.eval()
    right = 0
    for start in range(0, len(rows), settings.batch_size):
        batch = rows[start : start + settings.batch_size]
        chosen = scores(model, tokenizer, pair_texts(tokenizer, batch, "chosen",
                                                     settings.separator), settings.max_length)
        rejected = scores(model, tokenizer, pair_texts(tokenizer, batch, "rejected",
                                                       settings.separator), settings.max_length)
        right += int((chosen > rejected).sum())
    return right / len(rows)


def save(model, tokenizer, out: str | Path) -> Path:
    """save_pretrained (safetensors) of model and tokenizer: a reward_model_path."""
    out = Path(out)
    model.eval().save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def fit_reward_model(base: str | Path, rows: list[dict], out: str | Path,
                     settings: FitSettings = FitSettings(),
                     scratch: ScratchShape | None = None) -> tuple[Path, list[float]]:
    """Fit on `rows` from `base` (its weights, or only its tokenizer with `scratch`), save
    to `out`; the directory and the losses."""
    tokenizer = load_tokenizer(base)
    model = new_model(base, tokenizer, scratch, settings.seed)
    losses = fit(model, tokenizer, rows, settings)
    return save(model, tokenizer, out), losses
