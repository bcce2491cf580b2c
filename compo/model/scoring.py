"""Sequence log-probs of completions, and the hidden states that feed the output layer.

log pi(y|x) = sum over completion tokens of log softmax(logits)[token]; prompt tokens
do not count. The body of the network runs once and what the output layer receives is
captured (compo/model/head.py); everything after it (the head, log-softmax) is done here
in float32 so the output layer can be swapped cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from compo.data.formats import TokenizedPair
from compo.errors import DataError
from compo.model.head import Head, head_input, head_of, output_layer
from compo.model.loading import model_device

TOKEN_CHUNK = 1024  # positions per float32 logits block: bounds memory at chunk * V floats


@dataclass
class HeadInputs:
    """What the output layer sees at every position that predicts a completion token."""

    hidden: torch.Tensor  # [N, d] output-layer inputs, model dtype
    targets: torch.Tensor  # [N] the completion token predicted at each position
    segment: torch.Tensor  # [N] index of the sequence each position belongs to
    num_sequences: int


def pair_sequences(pairs: Sequence[TokenizedPair]) -> list[tuple[list[int], list[int]]]:
    """(prompt, completion) per sequence: pair k gives 2k (chosen) and 2k+1 (rejected)."""
    sequences = []
    for pair in pairs:
        sequences.append((pair.prompt_ids, pair.chosen_ids))
        sequences.append((pair.prompt_ids, pair.rejected_ids))
    return sequences


def pad_batch(sequences, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and attention mask for prompt+completion sequences."""
    rows = [prompt + completion for prompt, completion in sequences]
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def completion_index(sequences, width: int, first_sequence: int, device
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a padded batch [B, width]: flat positions that predict completion tokens, those
    tokens, and the sequence number (first_sequence + row) of each."""
    index, targets, segment = [], [], []
    for row, (prompt, completion) in enumerate(sequences):
        if not prompt:  # compo/data/encoding.py refuses such pairs, naming the row
            raise DataError("a sequence without prompt tokens: nothing predicts its "
                            "first completion token")
        first = row * width + len(prompt) - 1  # position whose output predicts completion[0]
        index.append(torch.arange(first, first + len(completion)))
        targets.append(torch.tensor(completion))
        segment.append(torch.full((len(completion),), first_sequence + row))
    return (torch.cat(index).to(device), torch.cat(targets).to(device),
            torch.cat(segment).to(device))


def head_inputs(model: nn.Module, sequences, pad_id: int, batch_size: int = 8) -> HeadInputs:
    """Run the body once per sequence; keep the hidden states at completion positions."""
    device = model_device(model)
    hidden, targets, segment = [], [], []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        ids, mask = pad_batch(batch, pad_id, device)
        states = head_input(model, input_ids=ids, attention_mask=mask)
        index, batch_targets, batch_segment = completion_index(batch, ids.shape[1], start,
                                                               device)
        hidden.append(states.reshape(-1, states.shape[-1])[index])
        targets.append(batch_targets)
        segment.append(batch_segment)
    return HeadInputs(torch.cat(hidden), torch.cat(targets), torch.cat(segment), len(sequences))


def segment_sums(values: torch.Tensor, segment: torch.Tensor, count: int) -> torch.Tensor:
    """Per-sequence sums of values [..., N] (float64) over the contiguous runs of `segment`
    [N] (sorted sequence numbers < count): [..., count]. Each sum is added left to right
    from 0 in one pass, so it is deterministic on every device (no atomics, unlike
    index_add_ on CUDA) and on CPU has the bits of a sequential index_add_."""
    lengths = torch.bincount(segment, minlength=count)
    if lengths.numel() != count or bool((segment[1:] < segment[:-1]).any()):
        raise ValueError(f"segment must be sorted sequence numbers below {count}")
    flat = values.reshape(-1, values.shape[-1]).T.contiguous()  # [N, rest]: one pass each
    sums = torch.ops.aten.segment_reduce(flat, "sum", lengths=lengths, initial=0.0)  # [count, *]
    return sums.T.reshape(*values.shape[:-1], count)


def sequence_logprobs(inputs: HeadInputs, weight: torch.Tensor, head: Head,
                      dtype: torch.dtype = torch.float32):
    """log pi(completion | prompt) per sequence [S], float64, for output weight [V, d]
    (the head's math in `dtype`)."""
    picked = []
    for start in range(0, inputs.targets.numel(), TOKEN_CHUNK):
        rows = slice(start, start + TOKEN_CHUNK)
        logprobs = head.logits(inputs.hidden[rows], weight, dtype).log_softmax(-1)
        picked.append(logprobs.gather(1, inputs.targets[rows, None]).squeeze(1).double())
    if not picked:
        return torch.zeros(inputs.num_sequences, dtype=torch.float64, device=weight.device)
    return segment_sums(torch.cat(picked), inputs.segment, inputs.num_sequences)


def score_pairs(model: nn.Module, pairs: Sequence[TokenizedPair], pad_id: int,
                batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y+|x) and log pi(y-|x) for every pair, scored in batches: two tensors [K]."""
    weight, head = output_layer(model).weight, head_of(model)
    chosen, rejected = [], []
    pairs_per_batch = max(1, batch_size // 2)
    for start in range(0, len(pairs), pairs_per_batch):
        sequences = pair_sequences(pairs[start : start + pairs_per_batch])
        totals = sequence_logprobs(head_inputs(model, sequences, pad_id, batch_size),
                                   weight, head)
        chosen.append(totals[0::2])
        rejected.append(totals[1::2])
    return torch.cat(chosen).cpu(), torch.cat(rejected).cpu()
