"""Does ComPO reproduce a model exactly? Base log-probs against the model's own forward, and
perturbed log-prob changes against a float64 full forward with W + r z.

`compo conformance` prints (and with --out writes) the table over the decoder families
transformers ships (tiny random models, compo/demo/families.py), or checks your own
checkpoint with --model (it needs a float64 copy of the model in memory).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from compo.config import ComPOConfig
from compo.data.formats import TokenizedPair
from compo.errors import ModelError
from compo.model.head import output_layer, verified_head
from compo.oracle import LikelihoodOracle, combine, pair_improved
from compo.perturbation import direction, direction_key

RADIUS = 5e-4  # the paper's Mistral-7B radius
SEED = 11
PAIR_SHAPES = ((6, 7, 5), (3, 9, 8))  # (prompt, chosen, rejected) tokens of the probe pairs


@dataclass
class Conformance:
    """One model's row of the table; `refused` holds the reason when it is refused."""

    name: str
    base_error: float | None = None  # largest |ours - model's own| base log-prob, nats
    perturbed_error: float | None = None  # largest relative error of the changes
    vote_agreement: float | None = None  # share of perturbations voting like float64
    perturbations: int = 0
    refused: str | None = None


def probe_pairs(vocab: int, seed: int = SEED) -> list[TokenizedPair]:
    """Pairs of random token ids (special ids 0-2 left out)."""
    generator = torch.Generator().manual_seed(seed)

    def ids(count: int) -> list[int]:
        return torch.randint(3, vocab, (count,), generator=generator).tolist()

    return [TokenizedPair(ids(p), ids(c), ids(r), f"probe {i}")
            for i, (p, c, r) in enumerate(PAIR_SHAPES)]


@torch.no_grad()
def own_logprobs(model: nn.Module, pairs: list[TokenizedPair]) -> torch.Tensor:
    """log pi(y|x) per sequence [2K], float64, from the model's own logits."""
    totals = []
    for pair in pairs:
        for completion in (pair.chosen_ids, pair.rejected_ids):
            device = output_layer(model).weight.device
            ids = torch.tensor([pair.prompt_ids + completion], device=device)
            logits = model(input_ids=ids).logits[0].double()
            logprobs = logits[len(pair.prompt_ids) - 1 : -1].log_softmax(-1)
            target = torch.tensor(completion, device=device)[:, None]
            totals.append(logprobs.gather(1, target).sum())
    return torch.stack(totals).cpu()


def float64_change(model64: nn.Module, pairs, weight: torch.Tensor, key: int,
                   radius: float) -> torch.Tensor:
    """log pi(W + r z) - log pi(W) per sequence, two float64 full forwards."""
    head = output_layer(model64)
    head.weight.data = weight.double().clone()
    base = own_logprobs(model64, pairs)
    head.weight.data = weight.double() + radius * direction(key, tuple(weight.shape)).double()
    return own_logprobs(model64, pairs) - base


def check(model: nn.Module, name: str, perturbations: int,
          radius: float = RADIUS) -> Conformance:
    """The conformance of a float32 model (its float64 copy is the reference)."""
    try:
        verified_head(model, name)
    except ModelError as error:
        return Conformance(name, refused=str(error))
    pairs = probe_pairs(output_layer(model).weight.shape[0])
    oracle = LikelihoodOracle(model, ComPOConfig(radius=radius, block_elements=1 << 16), 0)
    weight = oracle.master_weight()
    state = oracle.prepare(pairs, weight)
    base_error = float((state.base_logprobs.cpu() - own_logprobs(model, pairs)).abs().max())
    indices = list(range(perturbations))
    ours = oracle.changes(state, SEED, 0, indices).cpu()
    model64 = copy.deepcopy(model).double()
    exact = torch.stack([float64_change(model64, pairs, weight, direction_key(SEED, 0, i),
                                        radius) for i in indices])
    relative = (ours - exact).abs().amax(1) / exact.abs().amax(1)
    agree = [combine(pair_improved(a), "any") == combine(pair_improved(b), "any")
             for a, b in zip(ours, exact, strict=True)]
    return Conformance(name, base_error, float(relative.max()), sum(agree) / len(agree),
                       perturbations)


def family_table(perturbations: int) -> list[Conformance]:
    """Every family of compo/demo/families.py."""
    from compo.demo.families import FAMILIES, build_family

    return [check(build_family(name), name, perturbations) for name in FAMILIES]


def markdown(rows: list[Conformance]) -> str:
    """The table as markdown."""
    lines = ["| model | base log-prob error (nats) | perturbed change, max relative error "
             "| votes agree |", "|---|---|---|---|"]
    for row in rows:
        if row.refused is not None:
            lines.append(f"| {row.name} | refused: {row.refused} | | |")
        else:
            lines.append(f"| {row.name} | {row.base_error:.1e} | {row.perturbed_error:.1e} | "
                         f"{row.vote_agreement:.1%} of {row.perturbations} |")
    return "\n".join(lines) + "\n"
