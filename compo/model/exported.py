"""final/ written and measured: what the exported model keeps of the run's update.

A run's update lives in a float32 master output layer; paper-scale steps (~1e-6 per entry
on a 7B head) are far below bf16's spacing, so a bf16 export can keep nothing of them.
export.dtype float32 stores the output layer in float32 and marks the checkpoint float32,
so that `from_pretrained(final, dtype="auto")` loads it without rounding (the body's files
are copied as they are and upcast on load). export_report.json says what was kept, measured
on final/ loaded exactly that way against the base loaded in the same dtype.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from compo import fileio
from compo.config import ModelConfig
from compo.data.formats import TokenizedPair
from compo.model.checkpoint import copy_with_tensors
from compo.model.head import head_of
from compo.model.layout import Layout, layout_of
from compo.model.loading import DTYPES, load_model, prepare_model
from compo.model.scoring import head_inputs, pair_sequences, sequence_logprobs
from compo.model.tail import Tail

log = logging.getLogger(__name__)

KEEP_AT_LEAST = 0.9  # below this share of the master's change, the export warns
REPORT_DTYPE = torch.float64  # changes of ~1e-4 nats on sums of ~-10: float32 is not enough
LOAD_HINT = 'AutoModelForCausalLM.from_pretrained("{path}", dtype="auto")'


def export_dtype(export: str, model: ModelConfig) -> torch.dtype:
    """The dtype final/'s output layer is stored in: float32, or the run's model dtype."""
    return torch.float32 if export == "float32" else DTYPES[model.dtype]


def write_final(base: str | Path, tensors: dict[str, torch.Tensor], out: str | Path,
                dtype: torch.dtype) -> Path:
    """The checkpoint with its moved tensors (by name) replaced; float32 tensors mark the
    checkpoint float32 so that dtype="auto" loads them as they are."""
    out = copy_with_tensors(base, tensors, out, dtype)
    if dtype == torch.float32:
        config_path = out / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["dtype"] = "float32"
        config.pop("torch_dtype", None)
        fileio.write_json(config_path, config)
    return out


def pair_changes(model, pairs: list[TokenizedPair], pad_id: int, batch_size: int,
                 before: torch.Tensor, after: torch.Tensor, layout: Layout | None = None
                 ) -> torch.Tensor:
    """[y+, y-] change of log-probs summed over pairs, from master before to after (stacked
    as `layout`, the output layer alone by default; the body runs once)."""
    layout, head, sequences = layout or layout_of(model), head_of(model), pair_sequences(pairs)
    if layout.moved_layers:
        tail = Tail(model, layout)
        batches, targets = tail.prepare(sequences, pad_id, batch_size)
        change = (tail.logprobs(batches, targets, after, head, REPORT_DTYPE)
                  - tail.logprobs(batches, targets, before, head, REPORT_DTYPE))
    else:
        inputs = head_inputs(model, sequences, pad_id, batch_size)
        change = (sequence_logprobs(inputs, after, head, REPORT_DTYPE)
                  - sequence_logprobs(inputs, before, head, REPORT_DTYPE))
    return torch.stack([change[0::2].sum(), change[1::2].sum()]).cpu()


def loaded_logprobs(path: str | Path, dtype, device: str, pairs, pad_id: int,
                    batch_size: int) -> tuple[torch.Tensor, torch.dtype]:
    """[y+, y-] log-probs summed over pairs of the model at `path` loaded as from_pretrained
    loads it with `dtype` ("auto": as README tells users), and the dtype it got."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    model = prepare_model(model.to(device), str(path))
    inputs = head_inputs(model, pair_sequences(pairs), pad_id, batch_size)
    totals = sequence_logprobs(inputs, model.get_output_embeddings().weight, head_of(model),
                               REPORT_DTYPE)
    return torch.stack([totals[0::2].sum(), totals[1::2].sum()]).cpu(), model.dtype


def kept(exported: torch.Tensor, master: torch.Tensor) -> list[float | None]:
    """exported / master change per component (None where the master did not move)."""
    return [float(e / m) if m != 0 else None for e, m in zip(exported, master, strict=True)]


def measure_export(model: ModelConfig, final: str | Path, pairs: list[TokenizedPair],
                   pad_id: int, base_weight: torch.Tensor, master: torch.Tensor,
                   network=None, layout: Layout | None = None) -> dict:
    """export_report.json's figures; `network`: the run's model if it is still loaded;
    `layout`: what the masters stack (the run's)."""
    network = network if network is not None else load_model(model)
    master_change = pair_changes(network, pairs, pad_id, model.batch_size, base_weight,
                                 master, layout)
    final_logprobs, dtype = loaded_logprobs(final, "auto", model.device, pairs, pad_id,
                                            model.batch_size)
    base_logprobs, _ = loaded_logprobs(model.path, dtype, model.device, pairs, pad_id,
                                       model.batch_size)
    exported = final_logprobs - base_logprobs
    return {"pairs": len(pairs), "master_change": master_change.tolist(),
            "base_logprobs": base_logprobs.tolist(),
            "exported_change": exported.tolist(), "kept_fraction": kept(exported,
                                                                        master_change),
            "final_dtype": str(dtype).removeprefix("torch."),
            "load": LOAD_HINT.format(path=final)}


def check_kept(report: dict, export: str) -> bool:
    """Warn (once, with the fix) when the export keeps too little of the change."""
    low = [f for f in report["kept_fraction"] if f is not None and f < KEEP_AT_LEAST]
    if not low:
        return True
    fix = ("export.dtype: float32 (final/ is then loaded in float32)" if export != "float32"
           else "apply delta.safetensors to a float32 copy of the base (compo apply-delta)")
    log.warning("final/ keeps %s of the change of log pi(y+), log pi(y-) on the trained pairs "
                "(the float32 master moved them by %s nats); set %s", report["kept_fraction"],
                report["master_change"], fix)
    return False
