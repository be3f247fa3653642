"""LLM access: the openai client against any OpenAI-compatible endpoint, with a response cache, retries, a concurrency
limit, token and cost accounting, and a budget that refuses the request that would exceed it.

The cache is what makes runs reproducible and resumable: the key covers the endpoint, the model, the full messages and
every sampling parameter including the seed, so a replayed run asks exactly the same questions and pays nothing.
API keys live only in memory: never in the cache key, the store, logs or error messages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import diskcache
import openai
import tenacity

from .lm import Completion

log = logging.getLogger(__name__)



def default_cache_dir() -> Path:
    """Read at use, not import, so a process (or test) that sets PROMPTOPT_CACHE_DIR later is honoured."""
    return Path(os.environ.get("PROMPTOPT_CACHE_DIR") or Path.home() / ".cache" / "promptopt") / "llm"


class LLMError(RuntimeError):
    """A request the endpoint refused for good (bad model name, auth, bad request): retrying will not help."""


class EndpointDown(LLMError):
    """The endpoint kept failing for longer than the client's patience; the run can be resumed once it is back."""


class BudgetExceeded(RuntimeError):
    """Raised before a request that the run's budget no longer allows; nothing was sent."""


class BadReply(RuntimeError):
    """HTTP 200 but unusable (no choices, unparseable body): retried like a server error."""


@dataclass
class Budget:
    max_calls: int | None = None
    max_tokens: int | None = None
    max_cost: float | None = None

    def describe(self) -> str:
        parts = [f"{k.removeprefix('max_')}={v}" for k, v in asdict(self).items() if v is not None]
        return ", ".join(parts) or "unlimited"


@dataclass
class Counters:
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    cost: float = 0.0

    def add(self, other: Counters) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cost"] = round(d["cost"], 6)
        return d


class Meter:
    """Shared by all roles of a run: one budget, totals and per-role counters, safe across threads."""

    def __init__(self, budget: Budget | None = None, prices: dict[str, tuple[float, float]] | None = None,
                 start: Counters | None = None):
        self.budget = budget or Budget()
        self.prices = prices or {}
        self.total = Counters()
        if start:
            self.total.add(start)
        self.by_role: dict[str, Counters] = {}
        self._inflight = 0
        self._lock = threading.Lock()

    def reserve(self) -> None:
        """Claim one call against the budget or raise BudgetExceeded; calls in flight count, so threads cannot overshoot."""
        with self._lock:
            b, t = self.budget, self.total
            if b.max_calls is not None and t.calls + self._inflight >= b.max_calls:
                raise BudgetExceeded(f"call budget reached ({b.max_calls} calls)")
            if b.max_tokens is not None and t.prompt_tokens + t.completion_tokens >= b.max_tokens:
                raise BudgetExceeded(f"token budget reached ({b.max_tokens} tokens)")
            if b.max_cost is not None and t.cost >= b.max_cost:
                raise BudgetExceeded(f"money budget reached (${b.max_cost})")
            self._inflight += 1

    def release(self) -> None:
        with self._lock:
            self._inflight -= 1

    def exhausted(self) -> str | None:
        """Why the budget allows no further call, or None."""
        try:
            self.reserve()
        except BudgetExceeded as e:
            return str(e)
        self.release()
        return None

    def record(self, role: str, model: str, *, cached: bool, prompt_tokens: int = 0, completion_tokens: int = 0,
               error: bool = False) -> None:
        c = Counters()
        if error:
            c.errors = 1
        elif cached:
            c.cache_hits = 1
        else:
            c.calls = 1
            c.prompt_tokens, c.completion_tokens = prompt_tokens, completion_tokens
            price = self.prices.get(model)
            if price:
                c.cost = (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6
        with self._lock:
            self.total.add(c)
            self.by_role.setdefault(role, Counters()).add(c)

    def snapshot(self) -> Counters:
        with self._lock:
            c = Counters()
            c.add(self.total)
            return c


class ResponseCache:
    """Persistent answers keyed by everything that determines them. A hit costs no call."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(str(self.directory), size_limit=2**32)

    @staticmethod
    def key(base_url: str, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        blob = json.dumps({"endpoint": base_url.rstrip("/"), "model": model, "messages": messages, "params": params},
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        return self._cache.get(key)

    def set(self, key: str, value: dict[str, Any]) -> None:
        self._cache.set(key, value)

    def close(self) -> None:
        self._cache.close()


_TRANSIENT = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError, openai.APIResponseValidationError,
              BadReply, json.JSONDecodeError)


def _redact(text: str, secret: str | None) -> str:
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    return text


class Endpoint:
    """One OpenAI-compatible server: the openai client, a concurrency limit, and patience for outages."""

    def __init__(self, base_url: str, api_key: str | None = None, *, max_concurrency: int = 4, timeout: float = 120.0,
                 max_retries: int = 3, patience: float = 120.0, llamacpp: bool = False,
                 on_wait: Callable[[str], None] | None = None, cache_id: str | None = None,
                 key_hint: str = "OPENAI_API_KEY or the key field"):
        self.base_url = base_url.rstrip("/")
        self.key_hint = key_hint  # where this endpoint's key comes from, named when the endpoint refuses it
        self.cache_id = cache_id or self.base_url
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or "none"
        # openai's own retries cover short faults and honour Retry-After; `patience` covers longer outages.
        self.client = openai.OpenAI(base_url=self.base_url, api_key=self._api_key, timeout=timeout,
                                    max_retries=max_retries)
        self.max_concurrency = max_concurrency
        self._sem = threading.BoundedSemaphore(max_concurrency)
        self.patience = patience
        self.llamacpp = llamacpp
        self.on_wait = on_wait

    def __repr__(self) -> str:  # never show the key
        return f"Endpoint({self.base_url!r}, llamacpp={self.llamacpp})"

    def redact(self, text: str) -> str:
        return _redact(text, self._api_key)

    def list_models(self) -> list[str]:
        try:
            return sorted(m.id for m in self.client.models.list())
        except openai.APIError as e:
            raise LLMError(f"could not list models at {self.base_url}: {self.redact(str(e))}") from None

    def is_up(self, timeout: float = 5.0) -> bool:
        """One quick probe (GET /models, no retries): used to notice that a paused run's endpoint is back."""
        try:
            self.client.with_options(max_retries=0, timeout=timeout).models.list()
            return True
        except openai.APIStatusError as e:
            return e.status_code < 500 and e.status_code != 429  # it answers: /models may just be unsupported
        except openai.APIError:
            return False

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run one request with the concurrency limit, retrying transient faults until `patience` runs out."""

        def request() -> Any:
            with self._sem:
                return fn()

        def before_sleep(state: tenacity.RetryCallState) -> None:
            e = state.outcome.exception() if state.outcome else None
            msg = self.redact(f"{type(e).__name__}: {e}")[:300]
            log.warning("endpoint fault, retrying in %.0f s: %s", state.next_action.sleep if state.next_action else 0, msg)
            if self.on_wait:
                self.on_wait(msg)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_TRANSIENT), wait=tenacity.wait_exponential(multiplier=1, max=30),
            stop=tenacity.stop_after_delay(self.patience), before_sleep=before_sleep, reraise=True)
        try:
            return retrying(request)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise LLMError(f"the endpoint {self.base_url} refused the API key (HTTP {e.status_code}); "
                           f"check {self.key_hint}") from None
        except openai.NotFoundError as e:
            raise LLMError(f"not found at {self.base_url}: {self.redact(e.message)} (is the model name right?)") from None
        except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
            raise LLMError(f"the endpoint rejected the request: {self.redact(e.message)}") from None
        except _TRANSIENT as e:
            reason = self.redact(f"{type(e).__name__}: {e}")[:300]
            raise EndpointDown(f"{self.base_url} is unreachable or failing ({reason}); gave up after "
                               f"{self.patience:.0f} s; resume the run when it is back") from None

    def embed(self, model: str, texts: list[str], *, patient: bool = False) -> list[list[float]]:
        """One vector per text from /embeddings. Patient: retried like a completion; else one quick try, so an
        optional caller can fall back at once. Errors never carry the key."""
        if patient:
            resp: Any = self.call(lambda: self.client.embeddings.create(model=model, input=texts))
        else:
            client = self.client.with_options(max_retries=min(self.client.max_retries, 1), timeout=30.0)
            try:
                resp = client.embeddings.create(model=model, input=texts)
            except openai.APIError as e:
                raise LLMError(self.redact(f"{type(e).__name__}: {e}")) from None
        data = sorted(getattr(resp, "data", None) or [], key=lambda d: d.index)
        if len(data) != len(texts):
            raise ValueError(f"the endpoint returned {len(data)} embeddings for {len(texts)} texts")
        out = [list(map(float, d.embedding)) for d in data]
        if any(not v for v in out):
            raise ValueError("the endpoint returned an empty embedding")
        return out


class LLM:
    """A model bound to a role (task or optimizer), sharing the endpoint, cache and meter of its run: the
    `lm.LanguageModel` over an OpenAI-compatible endpoint."""

    def __init__(self, endpoint: Endpoint, model: str, *, role: str = "task", meter: Meter | None = None,
                 cache: ResponseCache | None = None, defaults: dict[str, Any] | None = None):
        self.endpoint, self.model, self.role = endpoint, model, role
        self.meter = meter or Meter()
        self.cache = cache
        self.defaults = {"temperature": 0.0, "max_tokens": 256, **(defaults or {})}

    def __repr__(self) -> str:
        return f"LLM({self.model!r}, role={self.role!r}, {self.endpoint!r})"

    @property
    def max_concurrency(self) -> int:
        return self.endpoint.max_concurrency

    @property
    def accepts_extras(self) -> bool:
        return self.endpoint.llamacpp

    def complete(self, messages: list[dict[str, str]], **params: Any) -> Completion:
        p = {**self.defaults, **{k: v for k, v in params.items() if v is not None}}
        key = None
        if self.cache is not None:
            key = ResponseCache.key(self.endpoint.cache_id, self.model, messages, p)
            hit = self.cache.get(key)
            if hit is not None:
                self.meter.record(self.role, self.model, cached=True)
                return Completion(**{**hit, "cached": True})
        self.meter.reserve()
        try:
            comp = self.endpoint.call(lambda: self._request(messages, p))
        except BaseException:
            self.meter.release()
            self.meter.record(self.role, self.model, cached=False, error=True)
            raise
        self.meter.release()
        self.meter.record(self.role, self.model, cached=False, prompt_tokens=comp.prompt_tokens,
                          completion_tokens=comp.completion_tokens)
        if key is not None:
            self.cache.set(key, {k: v for k, v in asdict(comp).items() if k != "cached"})
        return comp

    def embed(self, texts: Sequence[str], *, model: str | None = None, patient: bool = False) -> list[list[float]]:
        """Cached per text like completions, so a resumed run replays its retrievals without new requests; the texts
        not cached go in one request."""
        model = model or self.model
        vectors: dict[str, list[float]] = {}
        todo: list[str] = []
        for t in texts:
            if t in vectors or t in todo:
                continue
            hit = self.cache.get(self._embedding_key(model, t)) if self.cache is not None else None
            if hit is not None and isinstance(hit.get("embedding"), list):
                vectors[t] = hit["embedding"]
            else:
                todo.append(t)
        if todo:
            for t, v in zip(todo, self.endpoint.embed(model, todo, patient=patient), strict=True):
                vectors[t] = v
                if self.cache is not None:
                    self.cache.set(self._embedding_key(model, t), {"embedding": v})
        return [vectors[t] for t in texts]

    def _embedding_key(self, model: str, text: str) -> str:
        return ResponseCache.key(self.endpoint.cache_id, model, [{"role": "embedding", "content": text}],
                                 {"kind": "embedding"})

    def _request(self, messages: list[dict[str, str]], p: dict[str, Any]) -> Completion:
        kw = dict(p)
        extra = kw.pop("extra_body", None)
        if extra and not self.endpoint.llamacpp:
            extra = None  # llama.cpp extras (grammar) must never reach a real OpenAI endpoint
        resp = self.endpoint.client.chat.completions.create(model=self.model, messages=messages, extra_body=extra, **kw)
        if isinstance(resp, str) or not getattr(resp, "choices", None):
            raise BadReply("the endpoint answered with no choices")
        ch = resp.choices[0]
        text = (ch.message.content if ch.message else None) or ""
        usage = resp.usage
        lp = None
        if getattr(ch, "logprobs", None) is not None and ch.logprobs.content:
            lp = [{"token": t.token, "logprob": t.logprob,
                   "top": [{"token": x.token, "logprob": x.logprob} for x in (t.top_logprobs or [])]}
                  for t in ch.logprobs.content]
        return Completion(text=text, finish_reason=ch.finish_reason,
                          prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                          completion_tokens=getattr(usage, "completion_tokens", 0) or 0, logprobs=lp)


def resolve_api_key(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get("OPENAI_API_KEY")
