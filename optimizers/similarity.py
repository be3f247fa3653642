"""Text similarity for GPO's relevance retrieval: cosine similarity of embeddings from the model's endpoint
(`LanguageModel.embed`), with a lexical fallback (rapidfuzz token-set ratio) when the
endpoint has no embeddings or the user turns them off. Which backend answered is recorded with every retrieval.

Embeddings are kept per text in memory here and cached on disk by the model, so a resumed run replays its retrievals
without new requests.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

from rapidfuzz import fuzz

from .llm import LLMError
from .lm import LanguageModel

log = logging.getLogger(__name__)

Mode = Literal["auto", "embeddings", "lexical"]


class SimilarityError(LLMError):
    """Embeddings were required (mode "embeddings") but the endpoint could not provide them."""


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    if not na or not nb:
        return 0.0
    return sum(x * y for x, y in zip(a, b, strict=False)) / (na * nb)


def lexical(a: str, b: str) -> float:
    """Word-set overlap in [0, 1] (rapidfuzz token_set_ratio / 100): order-insensitive, robust to small edits."""
    return fuzz.token_set_ratio(a or "", b or "") / 100.0


class Similarity:
    """similarities(query, texts) -> (scores, backend). backend is "embeddings:<model>" or "lexical".

    mode "auto": try embeddings once; on any failure fall back to lexical for the rest of the run (and keep the
    reason in `fallback_reason`). mode "embeddings": embeddings or SimilarityError. mode "lexical": never ask.
    """

    def __init__(self, mode: Mode = "auto", lm: LanguageModel | None = None, model: str | None = None):
        self.mode = mode
        self.lm, self.model = lm, model
        self._vectors: dict[str, list[float]] = {}
        self.fallback_reason: str | None = None
        if mode != "lexical" and (lm is None or not model):
            if mode == "embeddings":
                raise SimilarityError("embeddings need an endpoint and an embedding model name")
            self.fallback_reason = "no endpoint or embedding model"

    @property
    def use_embeddings(self) -> bool:
        return self.mode != "lexical" and self.fallback_reason is None

    @property
    def backend(self) -> str:
        return f"embeddings:{self.model}" if self.use_embeddings else "lexical"

    def similarities(self, query: str, texts: Sequence[str]) -> tuple[list[float], str]:
        if not texts:
            return [], self.backend
        if self.use_embeddings:
            try:
                vecs = self.embed([query, *texts])
            except Exception as e:  # noqa: BLE001 - any failure of the optional backend means: fall back
                if self.mode == "embeddings":
                    if isinstance(e, SimilarityError):
                        raise
                    raise SimilarityError(f"embeddings failed: {type(e).__name__}: {e}") from None
                self.fallback_reason = f"{type(e).__name__}: {e}"[:300]
                log.warning("embeddings unavailable, using lexical similarity: %s", self.fallback_reason)
            else:
                q = vecs[0]
                return [cosine(q, v) for v in vecs[1:]], self.backend
        return [lexical(query, t) for t in texts], "lexical"

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text; the texts not seen before are asked for in one request."""
        assert self.lm is not None and self.model
        todo = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if todo:
            vecs = self.lm.embed(todo, model=self.model, patient=self.mode == "embeddings")
            self._vectors.update(zip(todo, vecs, strict=True))
        return [self._vectors[t] for t in texts]
