"""Preference data in TRL's formats: load, validate, render, tokenize.

Formats (detected per row):
  explicit prompt   {"prompt": str, "chosen": str, "rejected": str}
  conversational    prompt/chosen/rejected as lists of {"role", "content"} messages
  implicit prompt   only "chosen"/"rejected"; the prompt is their shared prefix (messages:
                    the shared turns; also when a text "prompt" sits next to whole
                    conversations, as in HuggingFaceH4/ultrafeedback_binarized)
Token ids follow TRL's rule (compo/data/encoding.py).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from compo.config import DataConfig
from compo.errors import DataError

ASSISTANT_MARKER = "\n\nAssistant:"



@dataclass(frozen=True)
class PreferencePair:
    """One (x, y+, y-) triple, still as text or messages; `source` is 'file:line'."""

    prompt: str | list
    chosen: str | list
    rejected: str | list
    source: str


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of a pair; completions exclude the prompt."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    source: str
    row: dict = field(default_factory=dict, compare=False)


@dataclass
class LoadReport:
    """What loading did: rows read, rows kept, rows skipped by reason."""

    rows: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"rows": self.rows, "kept": self.kept, "skipped": dict(self.skipped)}


def read_rows(path: str | Path, split: str | None = None) -> list[tuple[str, dict | Exception]]:
    """(source, row-or-error) for each row of a JSONL file or a saved HF dataset."""
    path = Path(path)
    if path.is_dir():
        return _read_saved_dataset(path, split)
    if not path.is_file():
        raise DataError(f"{path}: no such file or directory; give a JSONL file or a "
                        "directory written by datasets.save_to_disk")
    rows = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                rows.append((f"{path}:{number}", _parse_line(raw)))
    return rows


def _parse_line(raw: bytes) -> dict | Exception:
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        return DataError(f"bytes that are not UTF-8 at byte {error.start}; re-encode the "
                         "file as UTF-8")
    except json.JSONDecodeError as error:
        return DataError(f"not valid JSON ({error.msg}); each line must be one JSON object")
    if not isinstance(row, dict):
        return DataError("each line must be a JSON object with chosen/rejected fields")
    return row


def _read_saved_dataset(path: Path, split: str | None) -> list[tuple[str, dict]]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split is None or split not in loaded:
            raise DataError(f"{path}: a DatasetDict with splits {list(loaded)}; set "
                            "data.split to one of them")
        loaded, path = loaded[split], Path(f"{path}[{split}]")
    return [(f"{path}#{index}", row) for index, row in enumerate(loaded)]


def to_pair(row: dict, source: str) -> PreferencePair:
    """Validate one row and return it as a pair (DataError on any problem)."""
    for name in ("chosen", "rejected"):
        if name not in row:
            raise DataError(f"{source}: missing field '{name}'; rows need 'chosen' and "
                            "'rejected' (and optionally 'prompt')")
    chosen, rejected = row["chosen"], row["rejected"]
    prompt = row.get("prompt")
    # implicit prompt; a text prompt next to whole conversations (UltraFeedback as
    # HuggingFaceH4 ships it) repeats their first turn, so the shared turns are the prompt
    whole_conversations = isinstance(chosen, list) and isinstance(rejected, list)
    if prompt is None or (isinstance(prompt, str) and whole_conversations):
        prompt, chosen, rejected = split_shared_prefix(chosen, rejected, source)
    _check_kind(prompt, chosen, rejected, source)
    if _is_empty(chosen) or _is_empty(rejected):
        raise DataError(f"{source}: empty response; drop the row or set data.bad_rows: skip")
    if chosen == rejected:
        raise DataError(f"{source}: chosen == rejected, the pair carries no preference; "
                        "drop the row or set data.bad_rows: skip")
    return PreferencePair(prompt, chosen, rejected, source)


def _check_kind(prompt, chosen, rejected, source: str) -> None:
    kinds = {type(value).__name__ for value in (prompt, chosen, rejected)}
    if kinds not in ({"str"}, {"list"}):
        raise DataError(f"{source}: prompt/chosen/rejected must all be strings or all be "
                        f"lists of messages, got {sorted(kinds)}")
    if kinds == {"list"}:
        for message in [*prompt, *chosen, *rejected]:
            if not (isinstance(message, dict) and {"role", "content"} <= set(message)):
                raise DataError(f"{source}: each message needs 'role' and 'content'")


def _is_empty(response: str | list) -> bool:
    if isinstance(response, str):
        return not response.strip()
    return not response or all(not str(m.get("content", "")).strip() for m in response)


def split_shared_prefix(chosen, rejected, source: str):
    """Implicit prompt: the shared prefix of chosen and rejected becomes the prompt."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        cut = 0
        while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
            cut += 1
        return chosen[:cut], chosen[cut:], rejected[cut:]
    if not (isinstance(chosen, str) and isinstance(rejected, str)):
        raise DataError(f"{source}: without 'prompt', chosen and rejected must both be "
                        "strings or both be message lists")
    cut = 0
    while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
        cut += 1
    shared = chosen[:cut]
    marker = shared.rfind(ASSISTANT_MARKER)
    if marker >= 0:  # HH-style transcript: the prompt ends after the last "Assistant:"
        cut = marker + len(ASSISTANT_MARKER)
    else:  # never split inside a word
        while cut > 0 and not chosen[cut - 1].isspace():
            cut -= 1
    return chosen[:cut], chosen[cut:], rejected[cut:]


def load_pairs(config: DataConfig) -> tuple[list[PreferencePair], LoadReport]:
    """Read and validate all rows; bad rows raise or are skipped per config.bad_rows."""
    report = LoadReport()
    pairs = []
    for source, row in read_rows(config.path, config.split):
        report.rows += 1
        try:
            if isinstance(row, Exception):
                raise DataError(f"{source}: {row}")
            pairs.append(to_pair(row, source))
        except DataError as error:
            if config.bad_rows == "error":
                raise
            report.skipped[_reason(str(error))] += 1
    report.kept = len(pairs)
    return pairs, report


def _reason(message: str) -> str:
    """Short skip reason for the report, from an error message."""
    text = message.split(": ", 1)[-1]
    return text.split(";")[0].split("(")[0].strip()
