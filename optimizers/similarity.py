"""Text similarity for GPO's relevance retrieval: cosine similarity of embeddings from the endpoint's /v1/embeddings
(through the openai client the run already uses), with a lexical fallback (rapidfuzz token-set ratio) when the
endpoint has no embeddings or the user turns them off. Which backend answered is recorded with every retrieval.

Embeddings are cached per text in memory and, when the run has a response cache, on disk, so a resumed run replays
its retrievals without new requests.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

from rapidfuzz import fuzz

from .llm import Endpoint, LLMError, ResponseCache

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

    def __init__(self, mode: Mode = "auto", endpoint: Endpoint | None = None, model: str | None = None,
                 cache: ResponseCache | None = None):
        self.mode = mode
        self.endpoint, self.model, self.cache = endpoint, model, cache
        self._vectors: dict[str, list[float]] = {}
        self.fallback_reason: str | None = None
        self.requests = 0  # embedding requests actually sent (cache hits excluded)
        if mode != "lexical" and (endpoint is None or not model):
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
                reason = f"{type(e).__name__}: {e}"
                if self.endpoint is not None:
                    reason = self.endpoint.redact(reason)
                self.fallback_reason = reason[:300]
                log.warning("embeddings unavailable, using lexical similarity: %s", self.fallback_reason)
            else:
                q = vecs[0]
                return [cosine(q, v) for v in vecs[1:]], self.backend
        return [lexical(query, t) for t in texts], "lexical"

    # --- embeddings ---------------------------------------------------------------------------------------------
    def _key(self, text: str) -> str:
        assert self.endpoint is not None and self.model
        return ResponseCache.key(self.endpoint.cache_id, self.model, [{"role": "embedding", "content": text}],
                                 {"kind": "embedding"})

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text; unknown texts are embedded in one request."""
        todo: list[str] = []
        for t in texts:
            if t in self._vectors or t in todo:
                continue
            hit = self.cache.get(self._key(t)) if self.cache is not None else None
            if hit is not None and isinstance(hit.get("embedding"), list):
                self._vectors[t] = hit["embedding"]
            else:
                todo.append(t)
        if todo:
            vecs = self._request(todo)
            for t, v in zip(todo, vecs, strict=True):
                self._vectors[t] = v
                if self.cache is not None:
                    self.cache.set(self._key(t), {"embedding": v})
        return [self._vectors[t] for t in texts]

    def _request(self, texts: list[str]) -> list[list[float]]:
        assert self.endpoint is not None and self.model
        ep, model = self.endpoint, self.model
        self.requests += 1
        if self.mode == "embeddings":  # required: retry transient faults with the endpoint's patience
            resp: Any = ep.call(lambda: ep.client.embeddings.create(model=model, input=texts))
        else:  # optional: fail fast, then fall back
            client = ep.client.with_options(max_retries=min(ep.client.max_retries, 1), timeout=30.0)
            resp = client.embeddings.create(model=model, input=texts)
        data = sorted(getattr(resp, "data", None) or [], key=lambda d: d.index)
        if len(data) != len(texts):
            raise ValueError(f"the endpoint returned {len(data)} embeddings for {len(texts)} texts")
        out = [list(map(float, d.embedding)) for d in data]
        if any(not v for v in out):
            raise ValueError("the endpoint returned an empty embedding")
        return out
