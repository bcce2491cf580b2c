"""Atomic file writes: write a temporary file beside the target, fsync, rename."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file

HEADER_ALIGN = 8  # safetensors pads its JSON header to a multiple of 8 bytes
SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_path), then move tmp_path over `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write a UTF-8 text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: object) -> Path:
    """Atomically write JSON (indented, trailing newline)."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Atomically write one JSON object per line."""
    return write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one JSON line and flush it to disk (metrics logs)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON-lines file written by this project."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def safetensors_header(tensors: dict[str, torch.Tensor], metadata: dict | None) -> bytes:
    """The safetensors header (length + JSON) with sorted keys and tensors in name order,
    so the same tensors and metadata always give the same bytes."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % HEADER_ALIGN)
    return struct.pack("<Q", len(text)) + text


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata=None) -> Path:
    """Atomically save tensors as safetensors (never pickle), byte-identical for equal input."""
    cpu = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(safetensors_header(cpu, metadata))
            for name in sorted(cpu):
                handle.write(cpu[name].reshape(-1).view(torch.uint8).numpy().data)

    return atomic_write(path, write)


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU."""
    return load_file(str(path), device="cpu")
