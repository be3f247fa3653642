"""Which server answers: an OpenAI-compatible endpoint the user configured, or the embedded local model.

Resolution order: an explicit base URL, then OPENAI_BASE_URL, then PROMPTOPT_EMBEDDED_URL (a worker process reusing
the app's embedded server), then a llama.cpp server started here on a free loopback port.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .llm import Endpoint


@dataclass
class Backend:
    endpoint: Endpoint
    embedded: bool
    model: str  # default model name for both roles
    cache_id: str  # identifies the answers' source in the cache key (a random local port must not matter)


def embedded_model_alias() -> str:
    from .local_model import DEFAULT_MODEL

    return os.environ.get("PROMPTOPT_MODEL", DEFAULT_MODEL)


def default_endpoint_model() -> str:
    """The task model on a configured endpoint when none is named."""
    return os.environ.get("PROMPTOPT_TASK_MODEL", "gpt-4o-mini")


def _patience(patience: float | None) -> float:
    return float(os.environ.get("PROMPTOPT_PATIENCE", 120)) if patience is None else patience


def open_backend(base_url: str | None = None, api_key: str | None = None, *, max_concurrency: int | None = None,
                 patience: float | None = None, timeout: float = 300.0) -> Backend:
    """patience: how long transient faults are retried before a run pauses (env PROMPTOPT_PATIENCE, default 120 s)."""
    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    if base_url:
        ep = Endpoint(base_url, api_key, max_concurrency=max_concurrency or 4, patience=_patience(patience),
                      timeout=timeout)
        model = default_endpoint_model()
        return Backend(ep, False, model, ep.base_url)
    url = os.environ.get("PROMPTOPT_EMBEDDED_URL")
    if url:
        alias = os.environ.get("PROMPTOPT_EMBEDDED_ALIAS") or embedded_model_alias()
    else:
        from .local_model import shared_server

        server = shared_server()
        url, alias = server.base_url, server.model_alias
    return embedded_backend(url, alias, max_concurrency=max_concurrency, patience=patience, timeout=timeout)


def embedded_backend(url: str, alias: str, *, max_concurrency: int | None = None, patience: float | None = None,
                     timeout: float = 300.0) -> Backend:
    """The embedded llama.cpp server at `url`, whichever process started it (the dashboard starts it once)."""
    # llama.cpp serialises requests: more than 2 in flight only queues them; 2 overlaps HTTP with decoding.
    ep = Endpoint(url, "local", max_concurrency=max_concurrency or 2, patience=_patience(patience), timeout=timeout,
                  llamacpp=True, cache_id=f"embedded:{alias}")
    return Backend(ep, True, alias, ep.cache_id)
