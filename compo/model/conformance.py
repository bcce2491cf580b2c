"""Does ComPO reproduce a model exactly? Base log-probs against the model's own forward, and
perturbed log-prob changes against a float64 full forward with W + r z — with the output
layer alone, and with the MLPs of the last MOVED_LAYERS layers moving too
(compo.perturb.mlp_last_layers).

`compo conformance` prints (and with --out writes) the table over the decoder families
transformers ships (tiny random models, compo/demo/families.py), or checks your own
checkpoint with --model (it needs a float64 copy of the model in memory).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from compo.config import ComPOConfig, PerturbConfig
from compo.data.formats import TokenizedPair
from compo.errors import ModelError
from compo.model.head import output_layer, verified_head
from compo.oracle import LikelihoodOracle, combine, pair_improved
from compo.perturbation import direction, direction_key

RADIUS = 5e-4  # the paper's Mistral-7B radius
SEED = 11
PAIR_SHAPES = ((6, 7, 5), (3, 9, 8))  # (prompt, chosen, rejected) tokens of the probe pairs
MOVED_LAYERS = 2  # the paper's Table 5: the output layer and the last 2 layers' MLPs


@dataclass
class Conformance:
    """One model's row of the table; `refused` holds the reason when it is refused."""

    name: str
    base_error: float | None = None  # largest |ours - model's own| base log-prob, nats
    perturbed_error: float | None = None  # largest relative error of the changes
    vote_agreement: float | None = None  # share of perturbations voting like float64
    perturbations: int = 0
    refused: str | None = None
    moved_error: float | None = None  # the same with the last layers' MLPs moving too
    moved_agreement: float | None = None
    moved_refused: str | None = None


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


@torch.no_grad()
def float64_changes(model64: nn.Module, pairs, oracle: LikelihoodOracle, keys: list[int],
                    radius: float) -> torch.Tensor:
    """log pi(moved + r z) - log pi(moved) per direction and sequence [P, 2K]: float64 full
    forwards with every tensor of the oracle's layout set from its master."""
    layout, master = oracle.layout, oracle.master_weight()
    params = dict(model64.named_parameters(remove_duplicate=False))
    start = {name: value.double() for name, value in layout.tensors(master).items()}

    def logprobs(shift: torch.Tensor | None) -> torch.Tensor:
        moved = start if shift is None else layout.tensors(master.double() + radius * shift)
        for name, value in moved.items():
            params[name].data = value.clone()
        return own_logprobs(model64, pairs)

    base = logprobs(None)
    return torch.stack([logprobs(direction(key, layout.shape).double()) - base
                        for key in keys])


def exactness(model: nn.Module, pairs, config: ComPOConfig, perturbations: int
              ) -> tuple[float, float, float]:
    """(base log-prob error, largest relative error of the changes, vote agreement)."""
    oracle = LikelihoodOracle(model, config, 0)
    state = oracle.prepare(pairs, oracle.master_weight())
    base_error = float((state.base_logprobs.cpu() - own_logprobs(model, pairs)).abs().max())
    indices = list(range(perturbations))
    ours = oracle.changes(state, SEED, 0, indices).cpu()
    keys = [direction_key(SEED, 0, i) for i in indices]
    exact = float64_changes(copy.deepcopy(model).double(), pairs, oracle, keys, config.radius)
    relative = (ours - exact).abs().amax(1) / exact.abs().amax(1)
    agree = [combine(pair_improved(a), "any") == combine(pair_improved(b), "any")
             for a, b in zip(ours, exact, strict=True)]
    return base_error, float(relative.max()), sum(agree) / len(agree)


def check(model: nn.Module, name: str, perturbations: int,
          radius: float = RADIUS) -> Conformance:
    """The conformance of a float32 model (its float64 copy is the reference)."""
    try:
        verified_head(model, name)
    except ModelError as error:
        return Conformance(name, refused=str(error))
    pairs = probe_pairs(output_layer(model).weight.shape[0])
    config = ComPOConfig(radius=radius, block_elements=1 << 16)
    row = Conformance(name, *exactness(model, pairs, config, perturbations), perturbations)
    moved = config.model_copy(update={"perturb": PerturbConfig(mlp_last_layers=MOVED_LAYERS)})
    try:
        _, row.moved_error, row.moved_agreement = exactness(model, pairs, moved, perturbations)
    except ModelError as error:
        row.moved_refused = str(error)
    return row


def family_table(perturbations: int) -> list[Conformance]:
    """Every family of compo/demo/families.py."""
    from compo.demo.families import FAMILIES, build_family

    return [check(build_family(name), name, perturbations) for name in FAMILIES]


def markdown(rows: list[Conformance]) -> str:
    """The table as markdown."""
    lines = ["| model | base log-prob error (nats) | perturbed change, max relative error "
             "| votes agree | with the last 2 MLPs: max relative error | votes agree |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        if row.refused is not None:
            lines.append(f"| {row.name} | refused: {row.refused} | | | | |")
            continue
        moved = (f"refused: {row.moved_refused} | " if row.moved_refused is not None else
                 f"{row.moved_error:.1e} | {row.moved_agreement:.1%} of {row.perturbations}")
        lines.append(f"| {row.name} | {row.base_error:.1e} | {row.perturbed_error:.1e} | "
                     f"{row.vote_agreement:.1%} of {row.perturbations} | {moved} |")
    return "\n".join(lines) + "\n"
