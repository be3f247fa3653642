"""LLM access: the openai client against any OpenAI-compatible endpoint, with a response cache, retries, a concurrency
limit, token and cost accounting, and a budget that refuses the request that would exceed it.

The cache is what makes runs reproducible and resumable: the key covers the endpoint, the model, the full messages and
every sampling parameter including the seed, so a replayed run asks exactly the same questions and pays nothing.
API keys live only in memory: never in the cache key, the store, logs or error messages.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import diskcache
import httpx2  # openai's HTTP library (its declared dependency)
import openai
import tenacity

from .budget import PER_MESSAGE_TOKENS, Budget, BudgetExceeded, Claim, Counters, Meter  # noqa: F401  (re-exported)
from .journal import Journal
from .lm import Completion

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Read at use, not import, so a process (or test) that sets PROMPTOPT_CACHE_DIR later is honoured."""
    return Path(os.environ.get("PROMPTOPT_CACHE_DIR") or Path.home() / ".cache" / "promptopt") / "llm"


class LLMError(RuntimeError):
    """A request the endpoint refused for good (bad model name, auth, bad request): retrying will not help."""


class EndpointDown(LLMError):
    """The endpoint kept failing for longer than the client's patience; the run can be resumed once it is back."""


class BadReply(RuntimeError):
    """HTTP 200 but unusable (no choices, unparseable body): retried like a server error."""


_CULL_EVERY = 1000


class ResponseCache:
    """Persistent answers keyed by everything that determines them. A hit costs no call."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        # culled every _CULL_EVERY writes rather than at each (diskcache's default): its size query on every write
        # was a quarter of a write's CPU
        self._cache = diskcache.Cache(str(self.directory), size_limit=2**32, cull_limit=0)
        self._writes = 0
        self._inflight = Journal(self.directory / "journal")
        # One thread at a time writes: 64 threads writing at once spent their time in SQLite's lock contention and
        # its sleeping busy handler (0.85 ms a call, against 0.3 ms without a cache: bench/bench_engine.py). A
        # writer thread with group commit measured worse (a handoff per write). Reads need no lock (WAL).
        self._lock = threading.Lock()

    @staticmethod
    def key(base_url: str, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        blob = json.dumps({"endpoint": base_url.rstrip("/"), "model": model, "messages": messages, "params": params},
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        return self._cache.get(key)

    def set(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._write(key, value)

    def _write(self, key: str, value: dict[str, Any]) -> None:
        self._cache.set(key, value)
        self._writes += 1
        if self._writes % _CULL_EVERY == 0:
            self._cache.cull()

    def store(self, key: str, value: dict[str, Any], tokens: Sequence[str] = ()) -> None:
        """A reply into the cache, then its tries out of the journal (a kill between leaves them billed)."""
        with self._lock:
            self._write(key, value)
        for t in tokens:
            self._inflight.delete(t)

    def close(self) -> None:
        self._cache.close()

    # --- requests in flight: a killed process leaves them here, and the resumed run bills them -----------------
    def sent(self, run_id: str, claim: Claim) -> str:
        token = f"{run_id}:{uuid.uuid4().hex}"
        self._inflight.put(token, {"role": claim.role, "model": claim.model, "tokens": claim.upper.tokens,
                                   "cost": claim.upper.cost})
        return token

    def billed(self, token: str, role: str, model: str, counters: Counters, at: float) -> None:
        """A reply that was billed but will not be cached (an unusable one, retried): it stays in the journal, so a
        process killed before its next usage snapshot still has it counted on resume."""
        self._inflight.put(token, {"role": role, "model": model, "tokens": counters.tokens, "cost": counters.cost,
                                   "billed_at": at})

    def answered(self, token: str) -> None:
        """The reply is in the cache (whose stamp carries its bill from here) or never came: out of the journal."""
        self._inflight.delete(token)

    def orphans(self, run_id: str, recorded_until: float) -> list[dict[str, Any]]:
        """This run's requests a dead process left unbilled in its stored usage: those it had in flight (marked billed
        now, at their worst case) and those it billed after its last usage snapshot. An entry stays until a snapshot
        covers it, so a resumed process killed before its own first snapshot leaves them for the next one."""
        with self._lock:
            return self._orphans(run_id, recorded_until)

    def _orphans(self, run_id: str, recorded_until: float) -> list[dict[str, Any]]:
        entries = {**self._legacy(run_id), **self._inflight.entries(run_id)}
        kept: dict[str, dict[str, Any]] = {}
        now = time.time()
        for token, entry in entries.items():
            if entry.get("billed_at") is None:
                entry = {**entry, "billed_at": now}
            elif float(entry["billed_at"]) <= recorded_until:
                continue  # in the snapshot the run resumes from
            kept[token] = entry
        self._inflight.replace(run_id, kept)
        return list(kept.values())

    def _legacy(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Entries of the SQLite journal that versions before the file journal kept (a run killed before an
        upgrade), moved out of it."""
        folder = self.directory / "inflight"
        if not folder.is_dir():
            return {}
        out = {}
        with diskcache.Cache(str(folder)) as old:
            for token in list(old.iterkeys()):
                if str(token).startswith(run_id + ":") and isinstance(entry := old.get(token), dict):
                    out[str(token)] = entry
                    old.delete(token)
        return out


def open_cache(location: str | os.PathLike | None = None) -> Any:
    """The response cache at `location`: a folder (diskcache, the default), or a postgresql:// URL whose database
    several machines share (optimizers.shared_cache). Without a location: PROMPTOPT_CACHE_DB if set, else the
    default folder."""
    loc = location if location is not None else os.environ.get("PROMPTOPT_CACHE_DB")
    if loc is not None and str(loc).startswith(("postgresql://", "postgres://")):
        from .shared_cache import PgResponseCache

        return PgResponseCache(str(loc))
    return ResponseCache(location)


_TRANSIENT = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError, openai.APIResponseValidationError,
              BadReply, json.JSONDecodeError)


def _pooled(embedding: Any) -> list[float]:
    """One vector: a server without a pooling setting (llama-cpp-python's, for a generative model) returns one vector
    per token; their mean is the text's embedding."""
    if embedding and isinstance(embedding[0], (list, tuple)):
        rows = [list(map(float, r)) for r in embedding]
        return [sum(col) / len(rows) for col in zip(*rows, strict=True)]
    return list(map(float, embedding))


def _redact(text: str, secret: str | None) -> str:
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    return text


class Endpoint:
    """One OpenAI-compatible server: the openai client, a concurrency limit, and patience for outages."""

    def __init__(self, base_url: str, api_key: str | None = None, *, max_concurrency: int = 4, timeout: float = 120.0,
                 max_retries: int = 3, patience: float = 120.0, llamacpp: bool = False,
                 on_wait: Callable[[str], None] | None = None, cache_id: str | None = None,
                 key_hint: str = "OPENAI_API_KEY or the key field",
                 semaphore: threading.BoundedSemaphore | None = None, processes: int | None = None):
        self.base_url = base_url.rstrip("/")
        self.key_hint = key_hint  # where this endpoint's key comes from, named when the endpoint refuses it
        self.cache_id = cache_id or self.base_url
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or "none"
        # openai's own retries cover short faults and honour Retry-After; `patience` covers longer outages.
        self._client_args = {"base_url": self.base_url, "api_key": self._api_key, "timeout": timeout,
                             "max_retries": max_retries}
        # one TLS context for all of this endpoint's clients: building one costs ~20 ms of CPU (the CA store)
        self._tls = httpx2.create_ssl_context()
        self.client = self._new_client()  # for the occasional request: models, embeddings
        self._idle: list[openai.OpenAI] = []  # completions' clients, one per request in flight (see `leased`)
        self.max_concurrency = max_concurrency
        # `semaphore`: a limit this endpoint shares with every other run on the same server (a sweep's)
        self._sem = semaphore or threading.BoundedSemaphore(max_concurrency)
        self.patience = patience
        self.llamacpp = llamacpp
        self.on_wait = on_wait
        # `processes` > 0: chat requests are sent from that many worker processes (optimizers/http_workers.py);
        # None: PROMPTOPT_HTTP_PROCESSES, else 0 (sent from this process's threads, as before)
        if processes is None:
            processes = int(os.environ.get("PROMPTOPT_HTTP_PROCESSES") or 0)
        self._workers = None
        if processes > 0:
            from .http_workers import WorkerPool

            self._workers = WorkerPool(self.client, self._client_args, min(processes, max_concurrency))

    def __repr__(self) -> str:  # never show the key
        return f"Endpoint({self.base_url!r}, llamacpp={self.llamacpp})"

    def view(self, cache_id: str) -> Endpoint:
        """The same server, client and concurrency limit under another cache identity (a second model one
        embedded server swaps in must not share the first's cache entries' source)."""
        other = copy.copy(self)
        other.cache_id = cache_id
        return other

    def _new_client(self) -> openai.OpenAI:
        return openai.OpenAI(**self._client_args, http_client=openai.DefaultHttpxClient(verify=self._tls))

    @contextlib.contextmanager
    def leased(self) -> Iterator[openai.OpenAI]:
        """A client of its own for one request, returned after it. httpx's connection pool scans every connection it
        holds on each request and each release, under a lock: one client shared by 64 requests in flight spent more
        CPU there than on anything else (profiled); a client per request in flight keeps one connection each, alive
        across requests, and never more clients than the concurrency limit lets requests in."""
        try:
            client = self._idle.pop()
        except IndexError:
            client = self._new_client()
        try:
            yield client
        finally:
            self._idle.append(client)

    def post_chat(self, body: dict[str, Any]) -> bytes:
        """POST /chat/completions through the openai client's own transport: the reply's raw bytes, or its error."""
        if self._workers is not None:
            return self._workers.post(body)
        with self.leased() as client:
            return client.post("/chat/completions", body=body, cast_to=bytes, options={"security": {"bearer_auth": True}})

    def close(self) -> None:
        """Stops this endpoint's HTTP worker processes, if any (they stop at exit anyway)."""
        if self._workers is not None:
            self._workers.close()

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

    def embed(self, model: str, texts: list[str], *, patient: bool = False) -> tuple[list[list[float]], int | None]:
        """One vector per text from /embeddings, and the prompt tokens the server billed (None when it says nothing).
        Patient: retried like a completion; else one quick try, so an optional caller can fall back at once. Errors
        never carry the key."""
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
        out = [_pooled(d.embedding) for d in data]
        if any(not v for v in out):
            raise ValueError("the endpoint returned an empty embedding")
        usage = getattr(resp, "usage", None)
        return out, getattr(usage, "prompt_tokens", None) if usage is not None else None

    def count_tokens(self, messages: list[dict[str, str]]) -> int | None:
        """Prompt tokens counted by the server's own tokenizer (llama.cpp's /extras/tokenize/count), for a reply that
        came without usage; None where there is no such tokenizer. Never a download."""
        if not self.llamacpp:
            return None
        root = self.base_url.removesuffix("/v1")
        text = "\n".join(m.get("content") or "" for m in messages)
        req = urllib.request.Request(f"{root}/extras/tokenize/count", data=json.dumps({"input": text}).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {self._api_key}"})
        try:
            with urllib.request.urlopen(req, timeout=10.0) as r:
                return int(json.loads(r.read())["count"]) + PER_MESSAGE_TOKENS * len(messages)
        except (OSError, urllib.error.URLError, KeyError, ValueError, TypeError):
            return None


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

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The sampling parameters a request is sent (and cached) with."""
        return {**self.defaults, **{k: v for k, v in params.items() if v is not None}}

    def cache_key(self, messages: list[dict[str, str]], **params: Any) -> str | None:
        """The request's cache key, or None without a cache: what the run's report hold is keyed by."""
        if self.cache is None:
            return None
        return ResponseCache.key(self.endpoint.cache_id, self.model, messages, self.params(params))

    def is_cached(self, key: str | None) -> bool:
        return key is not None and self.cache is not None and self.cache.get(key) is not None

    def complete(self, messages: list[dict[str, str]], **params: Any) -> Completion:
        p = self.params(params)
        key = None
        if self.cache is not None:
            key = ResponseCache.key(self.endpoint.cache_id, self.model, messages, p)
            hit = self.cache.get(key)
            if hit is not None:
                self.meter.replayed(self.role, self.model, key, hit)
                return Completion(**{k: v for k, v in hit.items() if k in _COMPLETION_FIELDS}, cached=True)
        tokens: list[str] = []  # the journal token of the try that succeeded
        try:
            comp = self.endpoint.call(lambda: self._attempt(messages, p, key, tokens))
        except BudgetExceeded:
            raise
        except BaseException:
            self.meter.error(self.role)
            raise
        if key is not None:
            # the tries leave the journal only with the reply in the cache: a kill before leaves them billed on resume
            self.cache.store(key, {**{k: getattr(comp, k) for k in _COMPLETION_FIELDS}, **self.meter.stamp()},
                             tokens)
        return comp

    def _attempt(self, messages: list[dict[str, str]], p: dict[str, Any], key: str | None,
                 tokens: list[str] | None = None) -> Completion:
        """One try, with its own claim on the budget: every try that reached the model and came back with tokens is
        billed (an unusable reply too, before it is retried); a try that got no reply is not. The try is journaled
        from before it is sent until its bill is durable (the cache's stamp, or the journal's own billed entry)."""
        claim = self.meter.claim(self.role, self.model, messages, int(p.get("max_tokens") or 0), key=key)
        token = self.cache.sent(self.meter.run_id, claim) if self.cache is not None and self.meter.run_id else None
        try:
            resp = self._send(messages, p)
        except BaseException:
            self.meter.cancel(claim)
            if token:
                self.cache.answered(token)  # type: ignore[union-attr]
            raise
        usage = resp.get("usage") if isinstance(resp, dict) else None
        usage = usage if isinstance(usage, dict) else None
        pt = _count(usage.get("prompt_tokens")) if usage is not None else None
        ct = _count(usage.get("completion_tokens")) if usage is not None else None
        try:
            comp = self._parse(resp)
        except BadReply:
            if usage is None:
                self.meter.cancel(claim)
                if token:
                    self.cache.answered(token)  # type: ignore[union-attr]
            else:
                c = self.meter.settle(claim, pt, ct)
                if token:
                    self.cache.billed(token, self.role, self.model, c, time.time())  # type: ignore[union-attr]
            raise
        metered = pt is not None and ct is not None
        if pt is None:
            pt = self.endpoint.count_tokens(messages)  # None: the claim's bound is billed
        if ct is None:
            ct = comp_tokens_bound(comp, p)
        billed = self.meter.settle(claim, pt, ct, metered=metered)
        comp.prompt_tokens, comp.completion_tokens = billed.prompt_tokens, billed.completion_tokens
        if token:
            if key is None:
                self.cache.billed(token, self.role, self.model, billed, time.time())  # type: ignore[union-attr]
            elif tokens is not None:
                tokens.append(token)
            else:
                self.cache.answered(token)  # type: ignore[union-attr]
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
            msgs = [{"role": "user", "content": t} for t in todo]
            claim = self.meter.claim(self.role, model, msgs, 0)
            try:
                got, pt = self.endpoint.embed(model, todo, patient=patient)
            except BaseException:
                self.meter.cancel(claim)
                raise
            self.meter.settle(claim, pt, 0, metered=pt is not None)
            for t, v in zip(todo, got, strict=True):
                vectors[t] = v
                if self.cache is not None:
                    self.cache.set(self._embedding_key(model, t), {"embedding": v})
        return [vectors[t] for t in texts]

    def _embedding_key(self, model: str, text: str) -> str:
        return ResponseCache.key(self.endpoint.cache_id, model, [{"role": "embedding", "content": text}],
                                 {"kind": "embedding"})

    def _send(self, messages: list[dict[str, str]], p: dict[str, Any]) -> Any:
        """The request through the openai client's own transport (its auth, retries, error types), with the body as
        we build it and the reply as JSON: the SDK's per-request TypedDict transform and pydantic models cost ~5 ms
        of CPU a call, ten times the rest of the engine, which caps a run's throughput on a fast serving cluster."""
        body = {k: v for k, v in p.items() if k != "extra_body"}
        extra = p.get("extra_body")
        if extra and self.endpoint.llamacpp:  # llama.cpp extras (grammar) must never reach a real OpenAI endpoint
            body.update(extra)
        body.update(model=self.model, messages=messages)
        return json.loads(self.endpoint.post_chat(body))

    @staticmethod
    def _parse(resp: Any) -> Completion:
        choices = resp.get("choices") if isinstance(resp, dict) else None
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise BadReply("the endpoint answered with no choices")
        ch = choices[0]
        msg = ch.get("message") if isinstance(ch.get("message"), dict) else {}
        text = msg.get("content") or ""
        if not isinstance(text, str):
            raise BadReply("the endpoint answered with a non-text message")
        lp = None
        content = (ch.get("logprobs") or {}).get("content") if isinstance(ch.get("logprobs"), dict) else None
        if content:
            lp = [{"token": t.get("token"), "logprob": t.get("logprob"),
                   "top": [{"token": x.get("token"), "logprob": x.get("logprob")} for x in (t.get("top_logprobs") or [])]}
                  for t in content]
        return Completion(text=text, finish_reason=ch.get("finish_reason"), logprobs=lp)


def _count(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


_COMPLETION_FIELDS = {"text", "finish_reason", "prompt_tokens", "completion_tokens", "logprobs"}


def comp_tokens_bound(comp: Completion, p: dict[str, Any]) -> int:
    """A reply's tokens when the server gave none: its bytes (each token covers one at least), at most max_tokens."""
    return min(len(comp.text.encode()), int(p.get("max_tokens") or len(comp.text.encode())))


def resolve_api_key(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get("OPENAI_API_KEY")
