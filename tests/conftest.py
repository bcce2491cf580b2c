"""Shared fixtures: a tiny tokenizer and Llama built locally (no download)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# On a machine without CUDA, Triton kernels can only run in Triton's CPU interpreter, and
# only when it is on before triton is first imported (triton.language's own helpers are
# made then), so it is switched on here, before any test module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

TEXTS = [
    "What is 2 plus 3? 2 plus 3 is 5.",
    "The sky is blue. The grass is green. The snow is white.",
    "A dog barks. A cat meows. A cow moos.",
    "Sure, happy to help: 12 plus 30 is 42.",
    "\n\nHuman: hello there \n\nAssistant: hi, how can I help?",
]


@pytest.fixture(scope="session")
def tokenizer():
    from compo.demo.tiny import build_tokenizer

    return build_tokenizer(TEXTS * 4, vocab_size=300)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny Llama (random weights) with its tokenizer."""
    from compo.demo.tiny import build_llama, save_model

    path = tmp_path_factory.mktemp("tiny_model")
    return save_model(build_llama(len(tokenizer), hidden=32, layers=2, seed=1), tokenizer, path)


def read_until(stream, text: str) -> list[str]:
    """Lines of a child's stream up to the first one containing `text` (fails at its end)."""
    lines = []
    for raw in iter(stream.readline, b""):
        lines.append(raw.decode(errors="replace"))
        if text in lines[-1]:
            return lines
    raise AssertionError(f"{text!r} was never printed; the process wrote:\n{''.join(lines)}")


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows as JSON lines (dicts are dumped; bytes are written raw)."""
    with open(path, "wb") as handle:
        for row in rows:
            handle.write(row if isinstance(row, bytes) else json.dumps(row).encode() + b"\n")
    return path


PAIRS = [
    {"prompt": "What is 2 plus 3?", "chosen": " 2 plus 3 is 5.", "rejected": " 2 plus 3 is 6."},
    {"prompt": "What color is the sky?", "chosen": " The sky is blue.",
     "rejected": " The sky is green."},
    {"prompt": "What does a dog do?", "chosen": " A dog barks.", "rejected": " A dog moos."},
    {"prompt": "What does a cat do?", "chosen": " A cat meows.", "rejected": " A cat barks."},
]


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
