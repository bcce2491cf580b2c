"""An append-only log of sparse weight changes: one framed record per accepted iteration.

A record is a header (magic, iteration, entry count, bytes per position, CRC32 of the
rest) and the flat positions then the new float32 values. Appends are fsync'd; a reader
stops at the first record that is cut short or fails its checksum (a torn tail), so what
comes before it is kept. Never pickle: plain little-endian numbers.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MAGIC = b"CPDL"
HEADER = struct.Struct("<4sQQII")  # magic, iteration, count, position bytes, crc32
POSITION_DTYPES = {4: np.dtype("<i4"), 8: np.dtype("<i8")}
VALUE_DTYPE = np.dtype("<f4")


@dataclass
class DeltaRecord:
    """The entries one iteration set: flat positions in W.view(-1) and their new values."""

    iteration: int
    positions: np.ndarray
    values: np.ndarray  # float32

    def apply_(self, weight: torch.Tensor) -> None:
        """Set the record's entries of `weight` (exact: the values are the new ones)."""
        flat = weight.view(-1)
        positions = torch.from_numpy(self.positions.astype(np.int64)).to(flat.device)
        flat[positions] = torch.from_numpy(self.values.copy()).to(flat.device, flat.dtype)


def encode(iteration: int, positions: torch.Tensor, values: torch.Tensor) -> bytes:
    """One framed record: positions as int32 when they fit, else int64."""
    positions = positions.cpu().numpy()
    width = 4 if positions.size == 0 or positions.max() <= np.iinfo(np.int32).max else 8
    body = (positions.astype(POSITION_DTYPES[width]).tobytes()
            + values.detach().float().cpu().numpy().astype(VALUE_DTYPE).tobytes())
    head = HEADER.pack(MAGIC, iteration, positions.size, width, 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(head + body)) + body


def append(path: Path, record: bytes, keep: int) -> int:
    """Append `record` after the first `keep` bytes (anything later, a torn or
    uncommitted tail, is dropped first); fsync'd. Returns the file's length."""
    with open(path, "r+b" if path.exists() else "w+b") as handle:
        handle.truncate(keep)
        handle.seek(keep)
        handle.write(record)
        handle.flush()
        os.fsync(handle.fileno())
        return handle.tell()


def read(path: Path, limit: int | None = None) -> tuple[list[DeltaRecord], int]:
    """The whole records in the first `limit` bytes (all when None) up to the first torn
    or damaged one, and the length they span."""
    data = path.read_bytes() if path.exists() else b""
    data = data if limit is None else data[:limit]
    records, offset = [], 0
    while offset + HEADER.size <= len(data):
        magic, iteration, count, width, crc = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + count * (width + VALUE_DTYPE.itemsize)
        if magic != MAGIC or width not in POSITION_DTYPES or end > len(data):
            break
        body = data[offset + HEADER.size : end]
        if zlib.crc32(data[offset : offset + HEADER.size - 4] + body) != crc:
            break
        split = count * width
        records.append(DeltaRecord(iteration,
                                   np.frombuffer(body[:split], POSITION_DTYPES[width]),
                                   np.frombuffer(body[split:], VALUE_DTYPE)))
        offset = end
    return records, offset
