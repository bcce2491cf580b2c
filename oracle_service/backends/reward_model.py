"""Local reward-model backend: a Hugging Face sequence-classification model, micro-batched."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from oracle_service.backends.base import Verdict
from oracle_service.core.batching import MicroBatcher
from oracle_service.core.metrics import ServiceMetrics
from oracle_service.core.settings import Settings
from oracle_service.schemas import ComparisonItem, ErrorKind, VerdictLabel

logger = logging.getLogger(__name__)
MS_PER_S = 1000.0
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def format_text(tokenizer: Any, prompt: str, response: str, separator: str) -> str:
    """The text scored for (prompt, response): the chat template if the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        conversation = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": response},
        ]
        return tokenizer.apply_chat_template(conversation, tokenize=False)
    return f"{prompt}{separator}{response}"


class RewardModelBackend:
    """Scores both responses; verdict from the score difference, P = sigmoid(diff)."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics | None = None) -> None:
        if settings.reward_model_path is None:
            raise ValueError("reward_model_path is required for the reward_model backend")
        path = settings.reward_model_path.resolve()
        self._settings = settings
        self._device = pick_device(settings.reward_device)
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModelForSequenceClassification.from_pretrained(
            path, local_files_only=True, dtype=pick_dtype(settings.reward_dtype, self._device)
        )
        self._model.to(self._device).eval()
        self._ensure_padding()
        self._batcher: MicroBatcher[ComparisonItem, Verdict] = MicroBatcher(
            self._compare_batch,
            max_batch_size=settings.reward_max_batch_size,
            max_wait_s=settings.reward_max_wait_ms / MS_PER_S,
            on_batch=metrics.batch_size.observe if metrics is not None else None,
        )
        self.identity = f"reward_model:{path}"
        self.cache_params: dict[str, Any] = {
            "tie_margin": settings.reward_tie_margin,
            "max_length": settings.reward_max_length,
            "separator": settings.reward_text_separator,
            "dtype": str(self._model.dtype),
        }
        logger.info("reward model %s loaded on %s", path, self._device)

    def _ensure_padding(self) -> None:
        """Batched scoring needs a pad token that the model knows about."""
        if self._tokenizer.pad_token is None:
            if self._tokenizer.eos_token is None:
                raise ValueError("reward model tokenizer has neither a pad nor an eos token")
            self._tokenizer.pad_token = self._tokenizer.eos_token
        if self._model.config.pad_token_id is None:
            self._model.config.pad_token_id = self._tokenizer.pad_token_id

    async def compare(
        self, items: Sequence[ComparisonItem], deadline: float | None = None
    ) -> list[Verdict]:
        """Verdicts from the micro-batches; items not scored by `deadline` abstain."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self._settings.item_deadline_s
        futures = self._batcher.enqueue(items)
        await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()))
        return [self._outcome(future) for future in futures]

    def _outcome(self, future: asyncio.Future[Verdict]) -> Verdict:
        if not future.done():
            future.cancel()  # the batcher skips it
            message = f"not scored within item_deadline_s={self._settings.item_deadline_s}"
            return Verdict.abstain(ErrorKind.DEADLINE_EXCEEDED, message)
        if future.exception() is not None:
            error = future.exception()
            return Verdict.abstain(ErrorKind.MODEL_ERROR, f"{type(error).__name__}: {error}")
        return future.result()

    async def aclose(self) -> None:
        await self._batcher.close()

    async def _compare_batch(self, items: list[ComparisonItem]) -> list[Verdict]:
        """Scores of a micro-batch; if it fails, each item alone, so one bad item abstains."""
        try:
            scores = await asyncio.to_thread(self.score_pairs, items)
        except Exception as exc:  # e.g. CUDA OOM, tokenizer errors
            if len(items) == 1:
                return [Verdict.abstain(ErrorKind.MODEL_ERROR, f"{type(exc).__name__}: {exc}")]
            return [(await self._compare_batch([item]))[0] for item in items]
        return [self._verdict(score_a, score_b) for score_a, score_b in scores]

    def score_pairs(self, items: Sequence[ComparisonItem]) -> list[tuple[float, float]]:
        """(score_a, score_b) per item, in one forward pass (blocking: run in a thread)."""
        separator = self._settings.reward_text_separator
        texts = [
            format_text(self._tokenizer, item.prompt, response, separator)
            for item in items
            for response in (item.response_a, item.response_b)
        ]
        encoded = self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self._settings.reward_max_length,
            return_tensors="pt",
        ).to(self._device)
        with torch.inference_mode():
            scores = self._model(**encoded).logits[:, 0].float().cpu().tolist()
        return list(zip(scores[0::2], scores[1::2], strict=True))

    def _verdict(self, score_a: float, score_b: float) -> Verdict:
        diff = score_a - score_b
        if abs(diff) <= self._settings.reward_tie_margin:
            label = VerdictLabel.TIE
        else:
            label = VerdictLabel.A if diff > 0 else VerdictLabel.B
        probability = 1.0 / (1.0 + math.exp(-diff))
        return Verdict(label, probability, raw={"score_a": score_a, "score_b": score_b})
