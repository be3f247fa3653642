"""The model boundary: what the evaluator, the optimizers and the estimator may ask of a language model (as
TextGrad's EngineLM or GEPA's LanguageModel). `llm.LLM` is the implementation over an OpenAI-compatible endpoint,
with its cache, retries and budget; the estimator's dry run is another. Callers hold a `LanguageModel`, never an
endpoint or a client."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    logprobs: list[dict[str, Any]] | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class LanguageModel(Protocol):
    @property
    def model(self) -> str:
        """The model's name, as recorded with every request."""
        ...

    @property
    def max_concurrency(self) -> int:
        """How many requests may be in flight at once (the evaluator's thread count)."""
        ...

    @property
    def accepts_extras(self) -> bool:
        """Whether llama.cpp request extras (`extra_body`, e.g. a label grammar) may be sent."""
        ...

    def complete(self, messages: list[dict[str, str]], **params: Any) -> Completion:
        """One chat completion; raises llm.BudgetExceeded before a request the budget no longer allows."""
        ...

    def embed(self, texts: Sequence[str], *, model: str | None = None, patient: bool = False) -> list[list[float]]:
        """One vector per text (`model`: an embedding model at the same endpoint). Impatient: fail fast, so the
        caller can fall back; patient: retry transient faults like a completion."""
        ...
