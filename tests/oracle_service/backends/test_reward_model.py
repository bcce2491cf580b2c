"""Local reward-model backend with a tiny random Llama built from a config (no downloads)."""

from __future__ import annotations

import asyncio
import math
import re
import threading
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

from oracle_service.client import OracleClient
from oracle_service.core.settings import Settings

TOKEN = "reward-test-token-9f8e7d6c5b4a"
WORDS = "the a cat dog sat on mat ran fast slow red blue big small good bad answer question".split()
PROMPTS = ["the cat sat", "a dog ran", "the big red mat", "a small blue dog"]
RESPONSES = [
    "the cat sat on the mat",
    "a dog ran fast",
    "bad answer",
    "good answer big",
    "slow red cat",
    "the mat",
    "a big blue dog ran on the mat",
    "small",
]


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer Llama reward model (hidden 32) and a word-level tokenizer, saved locally."""
    path = tmp_path_factory.mktemp("tiny-reward-model")
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]"
    )
    tokenizer.save_pretrained(path)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        num_labels=1,
        pad_token_id=vocab["[PAD]"],
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path)
    return path


def reference_scores(path: Path, texts: list[str]) -> list[float]:
    """Score each text alone (no padding), independently of the service."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    model = LlamaForSequenceClassification.from_pretrained(path).eval()
    with torch.inference_mode():
        return [model(**tokenizer(text, return_tensors="pt")).logits[0, 0].item() for text in texts]


FILL_WAIT_MS = 60_000.0  # only a lost request would make a micro-batch wait this long


def pairs() -> list[tuple[str, str, str]]:
    return [(PROMPTS[i % 4], RESPONSES[i], RESPONSES[(i + 3) % 8]) for i in range(8)]


def reward_settings(path: Path, tmp_path: Path, **overrides: object) -> Settings:
    values = {
        "api_token": TOKEN,
        "backend": "reward_model",
        "reward_model_path": path,
        "reward_device": "cpu",
        "db_path": tmp_path / "oracle.sqlite3",
    }
    return Settings(**{**values, **overrides})


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
            ],
        ),
    ],
)
def test_verdicts_follow_score_differences(reward_model_dir, tmp_path, running_service, device):
    texts = [f"{p}\n\n{r}" for p, a, b in pairs() for r in (a, b)]
    scores = reference_scores(reward_model_dir, texts)
    diffs = [scores[2 * i] - scores[2 * i + 1] for i in range(len(pairs()))]
    ordered = sorted(abs(d) for d in diffs)
    margin = (ordered[2] + ordered[3]) / 2  # the 3 smallest differences become ties
    settings = reward_settings(
        reward_model_dir,
        tmp_path,
        reward_tie_margin=margin,
        reward_device=device,
        reward_dtype="float32",
    )
    items = [{"prompt": p, "response_a": a, "response_b": b} for p, a, b in pairs()]

    with running_service(settings) as http:
        http.headers["Authorization"] = f"Bearer {TOKEN}"
        results = http.post("/v1/comparisons", json={"items": items}).json()["results"]

    for diff, result in zip(diffs, results, strict=True):
        expected = "tie" if abs(diff) <= margin else ("a" if diff > 0 else "b")
        assert result["verdict"] == expected
        assert result["probability"] == pytest.approx(1 / (1 + math.exp(-diff)), abs=1e-4)
    assert sum(r["verdict"] == "tie" for r in results) == 3


def test_concurrent_requests_are_coalesced_into_micro_batches(
    reward_model_dir, tmp_path, running_service
):
    # the micro-batch goes out when its 8th pair arrives, however slowly they come
    settings = reward_settings(
        reward_model_dir, tmp_path, reward_max_wait_ms=FILL_WAIT_MS, reward_max_batch_size=8
    )
    with running_service(settings) as http:
        base_url = str(http.base_url)

        async def fire() -> list:
            async with OracleClient(base_url, TOKEN, batch_size=1) as client:
                calls = [
                    client.compare([{"prompt": p, "response_a": a, "response_b": b}])
                    for p, a, b in pairs()
                ]
                return await asyncio.gather(*calls)

        answers = asyncio.run(fire())
        metrics = http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text

    assert all(result.verdict.value in ("a", "b", "tie") for [result] in answers)
    batches = float(re.search(r"^oracle_backend_batch_size_count (\S+)$", metrics, re.M)[1])
    pairs_scored = float(re.search(r"^oracle_backend_batch_size_sum (\S+)$", metrics, re.M)[1])
    assert pairs_scored == 8  # 8 single-item HTTP requests ...
    assert batches == 1  # ... answered by one forward pass


def run_backend(backend, items, deadline_in_s: float | None = None,
                release: threading.Event | None = None):
    """The backend's verdicts; `release` is set once they are in (a held scorer goes on)."""
    async def go():
        try:
            deadline = None
            if deadline_in_s is not None:
                deadline = asyncio.get_running_loop().time() + deadline_in_s
            return await backend.compare(items, deadline)
        finally:
            if release is not None:
                release.set()
            await backend.aclose()

    return asyncio.run(go())


def test_one_failing_item_abstains_alone_and_late_items_abstain(reward_model_dir, tmp_path):
    """A micro-batch that fails is scored again item by item; a deadline cuts the wait."""
    from oracle_service.backends.reward_model import RewardModelBackend
    from oracle_service.schemas import ComparisonItem

    settings = reward_settings(reward_model_dir, tmp_path, reward_max_wait_ms=50.0)
    items = [ComparisonItem(prompt=p, response_a=a, response_b=b) for p, a, b in pairs()]
    poison = ComparisonItem(prompt="poison", response_a="the cat", response_b="a dog")
    backend = RewardModelBackend(settings)
    expected = [v.label for v in run_backend(RewardModelBackend(settings), items)]
    real = backend.score_pairs

    def fails_on_poison(batch):  # our own failure, injected to test the isolation
        if any(item.prompt == "poison" for item in batch):
            raise RuntimeError("CUDA error: device-side assert triggered")
        return real(batch)

    backend.score_pairs = fails_on_poison
    verdicts = run_backend(backend, [*items[:4], poison, *items[4:]])
    assert verdicts[4].error is not None and verdicts[4].error.kind.value == "model_error"
    assert [v.label for v in verdicts[:4] + verdicts[5:]] == expected

    slow = RewardModelBackend(settings)
    release = threading.Event()  # the scorer answers only after the deadline has passed
    slow.score_pairs = lambda batch: release.wait() and real(batch)
    late = run_backend(slow, items[:2], deadline_in_s=0.2, release=release)
    assert [v.error.kind.value for v in late] == ["deadline_exceeded"] * 2
