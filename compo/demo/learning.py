"""Does ComPO learn from votes on generated responses? The library's pieces of the check on
the embedded default (bench/learning.py runs it with the service's reward model and fake
judge, tests/compo/demo/test_learning.py at a smaller scale): ComPO with the oracle service
as its oracle, and responses of the start and the trained output layers on held-out
prompts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from compo import fileio
from compo.config import (
    ClipConfig,
    ComPOConfig,
    DataConfig,
    GenerationRadius,
    ModelConfig,
    OracleConfig,
    TrainConfig,
)
from compo.data.encoding import load_tokenized
from compo.data.formats import TokenizedPair
from compo.demo.embedded import EmbeddedData
from compo.model.head import head_of, output_layer
from compo.model.loading import load_model, load_tokenizer
from compo.service_oracle.generation import (
    PerturbedHead,
    encode_prefix,
    generate,
    sampling_seed,
)
from compo.train import ComPOTrainer, start_run


@dataclass(frozen=True)
class LearningSettings:
    """One ComPO run against the service (small enough for 2 CPU cores)."""

    iterations: int = 90
    perturbations: int = 64
    radius: float = 2.0  # oracle.radius value (mode logit)
    step_scale: float = 8.0  # a step of the size of a perturbation's effect on the logits
    accept_ratio: float = 0.05
    keep: float = 0.1  # clip: the share of entries of the unit estimate kept
    batch_size: int = 1  # prompts per iteration
    max_new_tokens: int = 24
    heldout_prompts: int = 40
    temperature: float = 1.0  # oracle.temperature of the run (shared noise: CRN)
    samples: int = 16  # sampled responses per held-out prompt for the expected metrics
    sample_temperature: float = 1.0
    directions: str = "gaussian"  # compo.directions: gaussian, or low rank r as "rank<r>"


def directions_field(name: str) -> dict:
    """compo.directions of a family name (gaussian: the default, left out)."""
    if name == "gaussian":
        return {}
    if not name.startswith("rank") or not name[4:].isdigit():
        raise ValueError(f"directions {name!r}: use gaussian or rank<r>, e.g. rank4")
    return {"directions": {"kind": "low_rank", "rank": int(name[4:])}}


def compo_config(data: EmbeddedData, url: str, token_env: str, run_dir: Path, seed: int,
                 settings: LearningSettings) -> TrainConfig:
    """ComPO on the training pairs' prompts, voting with the service at `url`."""
    return TrainConfig(
        model=ModelConfig(path=str(data.model_dir)), data=DataConfig(path=str(data.train)),
        compo=ComPOConfig(num_perturbations=settings.perturbations,
                          step_scale=settings.step_scale, accept_ratio=settings.accept_ratio,
                          clip=ClipConfig(mode="fraction", value=settings.keep),
                          vote_rule="majority", **directions_field(settings.directions)),
        seed=seed, batch_size=settings.batch_size, max_iterations=settings.iterations,
        output_dir=str(run_dir),
        run_id=f"learn-{seed}", checkpoint_every=settings.iterations,
        oracle=OracleConfig(kind="service", service_url=url, token_env=token_env,
                            radius=GenerationRadius(value=settings.radius),
                            max_new_tokens=settings.max_new_tokens, signal_checks=0,
                            temperature=settings.temperature))


def train_compo(config: TrainConfig) -> torch.Tensor:
    """Run ComPO; the trained float32 output layer."""
    trainer = ComPOTrainer(config, start_run(config))
    try:
        return trainer.run(progress=False)
    finally:
        trainer.close()


def heldout_rows(data: EmbeddedData) -> list[dict]:
    """The held-out pairs whose prompt no training pair has (the demo's pairs repeat a few
    prompts with another rejected response; those stay out of the held-out set)."""
    trained = {row["prompt"] for row in fileio.read_jsonl(data.train)}
    return [row for row in fileio.read_jsonl(data.heldout) if row["prompt"] not in trained]


def heldout_prompts(data: EmbeddedData, tokenizer, count: int) -> list[TokenizedPair]:
    """The first `count` held-out pairs of heldout_rows: prompts never trained on."""
    pairs = load_tokenized(DataConfig(path=str(data.heldout)), tokenizer)[0]
    kept = {row["prompt"] for row in heldout_rows(data)}
    return [pair for pair in pairs if pair.row["prompt"] in kept][:count]


@torch.inference_mode()
def greedy_responses(model, tokenizer, weight: torch.Tensor, pairs: list[TokenizedPair],
                     max_new_tokens: int) -> tuple[list[str], list[bool]]:
    """Greedy responses to the pairs' prompts with output layer `weight` (float32), and
    whether each ended (EOS within max_new_tokens)."""
    head = PerturbedHead(weight, None, 0.0, head_of(model))
    config = OracleConfig(max_new_tokens=max_new_tokens, temperature=0)
    texts, ended = [], []
    for pair in pairs:
        tokens = generate(model, encode_prefix(model, pair.prompt_ids), head, config,
                          [torch.Generator()], tokenizer.eos_token_id).tokens[0]
        texts.append(tokenizer.decode(tokens, skip_special_tokens=True))
        ended.append(tokenizer.eos_token_id in tokens)
    return texts, ended


@dataclass
class HeldOut:
    """Responses to the held-out prompts under one output layer."""

    greedy: list[str]  # one per prompt
    ended: list[bool]  # per greedy response: EOS reached (else cut at max_new_tokens)
    sampled: list[list[str]]  # settings.samples per prompt, the same streams for every layer

    def greedy_facts(self, pairs: list[TokenizedPair]) -> dict[str, float]:
        """What the reward model cannot be trusted with, from the demo's ground truth:
        mean greedy length, share that ended, share equal to the pair's chosen response."""
        right = sum(text.strip() == pair.row["chosen"].strip()
                    for text, pair in zip(self.greedy, pairs, strict=True))
        return {"greedy_length": mean_length(self.greedy),
                "greedy_ended": sum(self.ended) / len(self.ended),
                "greedy_correct": right / len(pairs)}


def heldout_responses(model, tokenizer, weight: torch.Tensor, pairs: list[TokenizedPair],
                      settings: LearningSettings) -> HeldOut:
    """Greedy and sampled responses to the pairs' prompts with output layer `weight`."""
    greedy, ended = greedy_responses(model, tokenizer, weight, pairs, settings.max_new_tokens)
    return HeldOut(greedy, ended, sampled_responses(model, tokenizer, weight, pairs, settings))


def start_and_trained(data: EmbeddedData, weights: dict[str, torch.Tensor],
                      settings: LearningSettings
                      ) -> tuple[list[TokenizedPair], HeldOut, dict[str, HeldOut]]:
    """Held-out prompts, their responses under the start model's output layer and under
    each trained one (by name)."""
    model = load_model(ModelConfig(path=str(data.model_dir)))
    tokenizer = load_tokenizer(data.model_dir)
    pairs = heldout_prompts(data, tokenizer, settings.heldout_prompts)
    start = output_layer(model).weight.detach().float().clone()
    return (pairs, heldout_responses(model, tokenizer, start, pairs, settings),
            {name: heldout_responses(model, tokenizer, weight, pairs, settings)
             for name, weight in weights.items()})


def mean_length(texts: list[str]) -> float:
    """Mean length in characters."""
    return sum(map(len, texts)) / len(texts)


@torch.inference_mode()
def sampled_responses(model, tokenizer, weight: torch.Tensor, pairs: list[TokenizedPair],
                      settings: LearningSettings, seed: int = 0) -> list[list[str]]:
    """settings.samples responses per prompt sampled with output layer `weight`; the same
    seeded streams for every weight (common random numbers between start and trained)."""
    head = PerturbedHead(weight, None, 0.0, head_of(model), copies=settings.samples)
    config = OracleConfig(max_new_tokens=settings.max_new_tokens,
                          temperature=settings.sample_temperature)
    out = []
    for number, pair in enumerate(pairs):
        generators = [torch.Generator().manual_seed(sampling_seed(seed, 0, i, number))
                      for i in range(settings.samples)]
        tokens = generate(model, encode_prefix(model, pair.prompt_ids), head, config,
                          generators, tokenizer.eos_token_id).tokens
        out.append([tokenizer.decode(t, skip_special_tokens=True) for t in tokens])
    return out
