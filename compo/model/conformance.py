"""Does ComPO reproduce a model exactly? Base log-probs against the model's own forward, and
perturbed log-prob changes against a float64 full forward with W + r z — with the output
layer alone, and with each target of compo/model/targets/ that moves weights of the last
MOVED_LAYERS layers too (compo.perturb.target: mlp, ...), and with rank-4 low-rank
directions of the output layer (compo.directions, LOW_RANK).

`compo conformance` prints (and with --out writes) the table over every causal-LM type the
installed transformers ships (tiny random models with random multipliers, soft-caps and
biases, compo/demo/families.py): each exact, refused at load time with the reason, or not
buildable as a tiny model. --model checks your own checkpoint (it needs a float64 copy of
the model in memory).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from compo.config import ComPOConfig, PerturbConfig
from compo.data.formats import TokenizedPair
from compo.directions import DirectionsConfig
from compo.directions.products import dense_direction
from compo.errors import ModelError
from compo.model.head import head_input, head_of, output_layer, probe_ids, verified_head
from compo.model.targets import layer_targets
from compo.oracle import LikelihoodOracle, combine, pair_improved
from compo.perturbation import direction_key

log = logging.getLogger(__name__)

RADIUS = 5e-4  # the paper's Mistral-7B radius
SEED = 11
PAIR_SHAPES = ((6, 7, 5), (3, 9, 8), (2, 4, 11))  # (prompt, chosen, rejected) probe tokens
MOVED_LAYERS = 2  # the paper's Table 5: the output layer and the last 2 layers' MLPs
BASE_TOLERANCE = 1e-4  # nats: a float32 model against its own float32 forward
CHANGE_TOLERANCE = 1e-3  # relative error of the perturbed changes against float64
LOW_RANK = DirectionsConfig(kind="low_rank", rank=4)  # the output layer, rank-4 directions


class NoReference(Exception):
    """The float64 copy of the model cannot run: the changes cannot be checked."""


@dataclass
class Moved:
    """One layer target's result: its figures, or why it is refused for the model."""

    error: float | None = None  # largest relative error of the changes
    agreement: float | None = None  # share of perturbations voting like float64
    refused: str | None = None

    @property
    def ok(self) -> bool:
        return self.refused is not None or (self.error <= CHANGE_TOLERANCE
                                            and self.agreement == 1.0)


@dataclass
class Conformance:
    """One model's row of the table; `refused` holds the reason when it is refused."""

    name: str
    base_error: float | None = None  # largest |ours - model's own| base log-prob, nats
    perturbed_error: float | None = None  # largest relative error of the changes
    vote_agreement: float | None = None  # share of perturbations voting like float64
    perturbations: int = 0
    refused: str | None = None
    moved: dict[str, Moved] = field(default_factory=dict)  # per layer target: the same
    low_rank: Moved | None = None  # the same with LOW_RANK directions (compo.directions)
    not_buildable: str | None = None  # why no tiny model of this type could be built
    unverified: str | None = None  # why the float64 reference could not run
    failed: str | None = None  # a raw error after the load-time check: a bug to fix
    model_class: str = ""

    @property
    def status(self) -> str:
        """not buildable, refused, failed, unverified, exact, or WRONG (silently wrong)."""
        for status, reason in (("not buildable", self.not_buildable), ("refused", self.refused),
                               ("failed", self.failed), ("unverified", self.unverified)):
            if reason is not None:
                return status
        checked = [*self.moved.values(), *[self.low_rank] * (self.low_rank is not None)]
        moved_ok = all(result.ok for result in checked)
        exact = (self.base_error <= BASE_TOLERANCE and self.perturbed_error <= CHANGE_TOLERANCE
                 and self.vote_agreement == 1.0 and moved_ok)
        return "exact" if exact else "WRONG"

    @property
    def reason(self) -> str | None:
        """Why the row has no figures, if it has none."""
        return self.not_buildable or self.refused or self.failed or self.unverified


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
            logits = sequence_logits(model, ids)
            logprobs = logits[len(pair.prompt_ids) - 1 : -1].log_softmax(-1)
            target = torch.tensor(completion, device=device)[:, None]
            totals.append(logprobs.gather(1, target).sum())
    return torch.stack(totals).cpu()


def sequence_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The model's own logits [L, V] for ids [1, L], float64. A float64 model whose forward
    casts its logits to float32 (Mamba, xLSTM, Mllama, ...) would round the reference's
    changes to float32: its head (verified against those logits at load time) is then
    applied in float64 to the float64 input of its output layer."""
    logits = model(input_ids=ids).logits[0]
    weight = output_layer(model).weight
    if weight.dtype == torch.float64 and logits.dtype != torch.float64:
        return head_of(model).logits(head_input(model, input_ids=ids)[0], weight, torch.float64)
    return logits.double()


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
    directions = oracle.config.directions
    return torch.stack([logprobs(dense_direction(directions, key, layout.shape)) - base
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
    try:
        exact = float64_changes(copy.deepcopy(model).double(), pairs, oracle, keys,
                                config.radius)
    except Exception as error:  # e.g. a family that casts to float32 inside its forward
        raise NoReference(f"{type(error).__name__}: {error}") from error
    relative = (ours - exact).abs().amax(1) / exact.abs().amax(1)
    agree = [combine(pair_improved(a), "any") == combine(pair_improved(b), "any")
             for a, b in zip(ours, exact, strict=True)]
    return base_error, float(relative.max()), sum(agree) / len(agree)


def check(model: nn.Module, name: str, perturbations: int,
          radius: float = RADIUS) -> Conformance:
    """The conformance of a float32 model (its float64 copy is the reference)."""
    row = Conformance(name, perturbations=perturbations, model_class=type(model).__name__)
    try:
        verified_head(model, name)
    except ModelError as error:
        row.refused = str(error)
        return row
    pairs = probe_pairs(output_layer(model).weight.shape[0])
    config = ComPOConfig(radius=radius, block_elements=1 << 16)
    try:
        row.base_error, row.perturbed_error, row.vote_agreement = exactness(
            model, pairs, config, perturbations)
        for target in layer_targets():
            row.moved[target.name] = moved_exactness(model, pairs, config, target.name,
                                                     perturbations)
        _, error, agreement = exactness(model, pairs, config.model_copy(
            update={"directions": LOW_RANK}), perturbations)
        row.low_rank = Moved(error, agreement)
    except ModelError as error:
        row.refused = str(error)
    except NoReference as error:
        row.unverified = f"its float64 copy (the reference) does not run: {error}"
    except Exception as error:  # the table shows it; scoring must not hide it
        row.failed = f"{type(error).__name__}: {error}"
    return row


def moved_exactness(model: nn.Module, pairs, config: ComPOConfig, target: str,
                    perturbations: int) -> Moved:
    """exactness() with `target` moving in the last MOVED_LAYERS layers too."""
    perturb = PerturbConfig(target=target, last_layers=MOVED_LAYERS)
    try:
        _, error, agreement = exactness(model, pairs, config.model_copy(
            update={"perturb": perturb}), perturbations)
    except ModelError as refusal:
        return Moved(refused=str(refusal))
    return Moved(error, agreement)


def sweep(perturbations: int, types: list[str] | None = None, seed: int = 0
          ) -> list[Conformance]:
    """check() of a tiny random model of every causal-LM type (or of `types`); a type whose
    tiny model cannot be built, or cannot run one plain sequence, is not buildable."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from compo.demo.families import build_type, causal_lm_types

    rows = []
    for model_type in types or causal_lm_types():
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, "")
        try:
            model = build_type(model_type, seed).requires_grad_(False)
            with torch.no_grad():
                model(input_ids=probe_ids(model))
        except Exception as error:  # the builder's limits, not the family's
            reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
            rows.append(Conformance(model_type, not_buildable=reason, model_class=model_class))
            continue
        rows.append(check(model, model_type, perturbations))
        log.info("conformance of %s: %s", model_type, rows[-1].status)
    return rows


def family_table(perturbations: int) -> list[Conformance]:
    """Every causal-LM type the installed transformers ships."""
    return sweep(perturbations)


STATUSES = ("exact", "refused", "not buildable", "unverified", "WRONG", "failed")


def summary(rows: list[Conformance]) -> str:
    """One line of counts per status."""
    import transformers

    counts = {status: sum(row.status == status for row in rows) for status in STATUSES}
    return (f"{len(rows)} causal-LM types (transformers {transformers.__version__}): "
            f"{counts['exact']} exact, {counts['refused']} refused with the reason, "
            f"{counts['not buildable']} not buildable as a tiny model, {counts['unverified']} "
            f"without a float64 reference, {counts['WRONG']} silently wrong, "
            f"{counts['failed']} failed after the load-time check")


def _cell(text: str) -> str:
    """Text as one markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _moved_cells(result: Moved | None, perturbations: int) -> str:
    """A layer target's two cells: its error and votes, or why it is refused."""
    if result is None:
        return " | "
    if result.refused is not None:
        return f"refused: {_cell(result.refused)} | "
    return f"{result.error:.1e} | {result.agreement:.1%} of {perturbations}"


def markdown(rows: list[Conformance]) -> str:
    """The counts and the table as markdown (two columns per layer target, two for
    low-rank directions)."""
    targets = layer_targets()
    header = "".join(f" with {t.summary} of the last {MOVED_LAYERS} layers: max relative "
                     "error | votes agree |" for t in targets)
    header += f" {LOW_RANK.name} directions: max relative error | votes agree |"
    lines = [summary(rows), "",
             "| type | class | result | base log-prob error (nats) | perturbed change, max "
             "relative error | votes agree |" + header,
             "|---|---|---|---|---|---|" + "---|---|" * (len(targets) + 1)]
    for row in rows:
        start = f"| {row.name} | {row.model_class} | {row.status}"
        if row.reason is not None:
            lines.append(f"{start}: {_cell(row.reason)}" + " |" * (6 + 2 * len(targets)))
            continue
        moved = " | ".join(_moved_cells(result, row.perturbations) for result in
                           [*(row.moved.get(t.name) for t in targets), row.low_rank])
        lines.append(f"{start} | {row.base_error:.1e} | {row.perturbed_error:.1e} | "
                     f"{row.vote_agreement:.1%} of {row.perturbations} | {moved} |")
    return "\n".join(lines) + "\n"
