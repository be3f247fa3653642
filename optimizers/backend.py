"""Which server answers each role, the task model's and the optimizer model's: an OpenAI-compatible endpoint the
user configured, or the embedded local model.

Resolution, per role, from what the run stored (optimizers.config.RoleEndpoint) and the environment of the process
that executes it (keys are never stored; the dashboard hands its session's keys to workers through the environment):

    task       base URL  stored, else OPENAI_BASE_URL, else the embedded backend
               model     stored, else on an endpoint PROMPTOPT_TASK_MODEL (else gpt-4o-mini), embedded
                         PROMPTOPT_MODEL (else qwen2.5-coder-1.5b)
               key       given, else OPENAI_API_KEY
    optimizer  base URL  stored, else PROMPTOPT_OPTIMIZER_BASE_URL, else the task role's
               model     stored, else on an endpoint PROMPTOPT_OPTIMIZER_MODEL (else the task model on the task's
                         endpoint, gpt-4o-mini on another), embedded PROMPTOPT_OPTIMIZER_MODEL_EMBEDDED (else the task
                         model)
               key       given, else PROMPTOPT_OPTIMIZER_API_KEY, else the task role's key on the task's endpoint,
                         else OPENAI_API_KEY

Two roles on the same server share one Endpoint, so its concurrency limit counts both.

Embedded: the models the roles need (bundled names or GGUF paths) are served by one llama.cpp child, started once per
process (local_model.shared_server); when the roles name two models (the 0.5B answers the task, the 1.5B writes the
prompts) that child swaps the loaded model per request, which measured faster and smaller than two children on 2 cores
(bench/bench_roles.py). Each role still has its own Endpoint view (its own cache identity) sharing one concurrency
limit, because one server computes one request at a time.

A dashboard worker finds the app's servers through PROMPTOPT_EMBEDDED_URL / PROMPTOPT_EMBEDDED_ALIAS (the task
role's) and PROMPTOPT_OPTIMIZER_EMBEDDED_URL / PROMPTOPT_OPTIMIZER_EMBEDDED_ALIAS (the optimizer role's); a role whose
model was not handed over starts its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .config import RoleEndpoint
from .llm import Endpoint

ROLES = ("task", "optimizer")
DEFAULT_ENDPOINT_MODEL = "gpt-4o-mini"
_HANDOFF_ENV = {"task": ("PROMPTOPT_EMBEDDED_URL", "PROMPTOPT_EMBEDDED_ALIAS"),
                "optimizer": ("PROMPTOPT_OPTIMIZER_EMBEDDED_URL", "PROMPTOPT_OPTIMIZER_EMBEDDED_ALIAS")}
KEY_HINT = {"task": "OPENAI_API_KEY or the task key field",
            "optimizer": "PROMPTOPT_OPTIMIZER_API_KEY (else OPENAI_API_KEY) or the optimizer key field"}


def _env(name: str) -> str | None:
    return (os.environ.get(name) or "").strip() or None


@dataclass
class Backend:
    endpoint: Endpoint
    embedded: bool
    model: str  # the model this role's requests name (embedded: the server's alias)
    cache_id: str  # identifies the answers' source in the cache key (a random local port must not matter)

    def describe(self) -> str:
        """Where the answers come from, for people (never the key; never an embedded server's random port)."""
        return "embedded llama.cpp" if self.embedded else self.endpoint.base_url


@dataclass
class RoleBackends:
    task: Backend
    optimizer: Backend

    @classmethod
    def on_one(cls, backend: Backend, task: RoleEndpoint, optimizer: RoleEndpoint) -> RoleBackends:
        """Both roles on one given backend (a test's stub server): the stored models, the optimizer's defaulting to
        the task's."""
        t = replace(backend, model=task.model or backend.model)
        return cls(t, replace(backend, model=optimizer.model or t.model))

    def endpoints(self) -> list[Endpoint]:
        return [self.task.endpoint] + ([self.optimizer.endpoint]
                                       if self.optimizer.endpoint is not self.task.endpoint else [])

    def redact(self, text: str) -> str:
        """Text without either role's key (a crash message may quote any of them)."""
        for ep in self.endpoints():
            text = ep.redact(text)
        return text


@dataclass(frozen=True)
class Handoff:
    """An embedded server another process started, as a worker receives it."""

    url: str
    alias: str


def handoff_env(servers: Mapping[str, Handoff]) -> dict[str, str]:
    """The environment that hands each role's embedded server to a worker process."""
    env: dict[str, str] = {}
    for role, h in servers.items():
        url_var, alias_var = _HANDOFF_ENV[role]
        env[url_var], env[alias_var] = h.url, h.alias
    return env


def _handed_off() -> dict[str, Handoff]:
    out = {}
    for role, (url_var, alias_var) in _HANDOFF_ENV.items():
        url = _env(url_var)
        if url:
            out[role] = Handoff(url, _env(alias_var) or embedded_model_alias())
    return out


def handed_off(model: str) -> Handoff | None:
    """The server for `model` (a bundled name, a GGUF path or an alias) that this process was handed, if any."""
    from .local_model import model_alias

    return next((h for h in _handed_off().values() if h.alias in (model, model_alias(model))), None)


@dataclass(frozen=True)
class RolePlan:
    """One role resolved from its stored endpoint and the environment, before anything is opened or started."""

    base_url: str | None  # None: the embedded backend
    model: str  # endpoint: the model name; embedded: a bundled model, a GGUF path, or a handed-off server's alias

    @property
    def embedded(self) -> bool:
        return self.base_url is None


def embedded_model_alias() -> str:
    """The embedded task model's name when none is configured."""
    from .local_model import model_alias

    return model_alias(_default_embedded_task_model())


def _default_embedded_task_model() -> str:
    from .local_model import DEFAULT_MODEL

    return _env("PROMPTOPT_MODEL") or DEFAULT_MODEL


def plan_roles(task: RoleEndpoint, optimizer: RoleEndpoint | None = None) -> dict[str, RolePlan]:
    """Each role's base URL and model under the rules of the module docstring."""
    handed = _handed_off()
    t_url = (task.base_url or "").strip() or _env("OPENAI_BASE_URL")
    if t_url:
        t_model = task.model or _env("PROMPTOPT_TASK_MODEL") or DEFAULT_ENDPOINT_MODEL
    else:
        t_model = task.model or (handed["task"].alias if "task" in handed else _default_embedded_task_model())
    plans = {"task": RolePlan(t_url, t_model)}
    if optimizer is None:
        return plans
    o_url = (optimizer.base_url or "").strip() or _env("PROMPTOPT_OPTIMIZER_BASE_URL") or t_url
    if o_url:
        o_model = optimizer.model or _env("PROMPTOPT_OPTIMIZER_MODEL") or (
            t_model if _same_url(o_url, t_url) else DEFAULT_ENDPOINT_MODEL)
    else:
        o_model = optimizer.model or (handed["optimizer"].alias if "optimizer" in handed else None) or _env(
            "PROMPTOPT_OPTIMIZER_MODEL_EMBEDDED") or t_model
    plans["optimizer"] = RolePlan(o_url, o_model)
    return plans


def _same_url(a: str | None, b: str | None) -> bool:
    return bool(a and b) and a.rstrip("/") == b.rstrip("/")  # type: ignore[union-attr]


def role_keys(plans: Mapping[str, RolePlan], task_key: str | None = None,
              optimizer_key: str | None = None) -> dict[str, str | None]:
    """Each role's API key (in memory only). None: the Endpoint's own fallback, OPENAI_API_KEY."""
    keys = {"task": task_key or _env("OPENAI_API_KEY")}
    if "optimizer" in plans:
        same = _same_url(plans["optimizer"].base_url, plans["task"].base_url)
        keys["optimizer"] = optimizer_key or _env("PROMPTOPT_OPTIMIZER_API_KEY") or (
            keys["task"] if same else None) or _env("OPENAI_API_KEY")
    return keys


def default_endpoint_model() -> str:
    """The task model on a configured endpoint when none is named."""
    return _env("PROMPTOPT_TASK_MODEL") or DEFAULT_ENDPOINT_MODEL


def _patience(patience: float | None) -> float:
    return float(os.environ.get("PROMPTOPT_PATIENCE", 120)) if patience is None else patience


class Server(Protocol):
    """What opening needs of a started embedded server (local_model.LocalServer)."""

    base_url: str | None
    model_alias: str


# (model, threads[, together]) -> the running server for it (local_model.shared_server); `together`: the other models
# the same server must serve (passed only when there are any)
StartEmbedded = Callable[..., Server]


class EndpointLimits:
    """One concurrency limit per server, shared by every run of a process that uses it (a sweep's runs at once), so
    a sweep never floods a server or the embedded model. `limits`: base URL (or "embedded") -> requests in flight;
    a server not named gets the default (2 embedded, 4 on an endpoint, as a single run)."""

    def __init__(self, limits: Mapping[str, int] | None = None,
                 factory: Callable[[str, int], Any] | None = None):
        """factory(key, limit): the semaphore for a server (default a thread semaphore of this process; the Ray
        executor gives one held by a cluster-wide actor)."""
        self.factory = factory
        self.limits = {("embedded" if k == "embedded" else k.rstrip("/")): int(v) for k, v in (limits or {}).items()}
        for k, v in self.limits.items():
            if v < 1:
                raise ValueError(f"concurrency for {k}: at least 1 request in flight, not {v}")
        self._sems: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def limit(self, key: str, default: int) -> int:
        return self.limits.get(key, default)

    def semaphore(self, key: str, default: int) -> threading.BoundedSemaphore:
        with self._lock:
            if key not in self._sems:
                n = self.limit(key, default)
                self._sems[key] = self.factory(key, n) if self.factory else threading.BoundedSemaphore(n)
            return self._sems[key]


def embedded_models(plans: Mapping[str, RolePlan]) -> list[str]:
    """The distinct embedded models the roles need, the task's first (one server serves them all)."""
    from .local_model import model_alias

    seen: dict[str, str] = {}
    for p in plans.values():
        if p.embedded:
            seen.setdefault(model_alias(p.model), p.model)
    return list(seen.values())


def start_for(start: StartEmbedded, model: str, plans: Mapping[str, RolePlan]) -> Server:
    """The embedded server for `model` in these plans: one server for all their embedded models."""
    from .local_model import model_alias

    together = [m for m in embedded_models(plans) if model_alias(m) != model_alias(model)]
    threads = embedded_threads(plans)
    return start(model, threads, together) if together else start(model, threads)


class _Opener:
    """Opens the planned roles, one Endpoint per server: a second role on the same server shares the first's
    concurrency limit (embedded: as its own view, so each model keeps its own cache identity)."""

    def __init__(self, max_concurrency: int | None, patience: float | None, timeout: float,
                 start: StartEmbedded | None, plans: Mapping[str, RolePlan], limits: EndpointLimits | None = None):
        self.max_concurrency, self.patience, self.timeout = max_concurrency, _patience(patience), timeout
        self.start = start
        self.plans = plans
        self.limits = limits
        self._opened: dict[tuple[str, str | None], Backend] = {}

    def open(self, role: str, plan: RolePlan, key: str | None) -> Backend:
        if plan.embedded:
            url, alias = self._embedded_server(plan.model)
            first = self._opened.get(("embedded", url))
            if first is None:
                n = self.max_concurrency or 2
                sem = self.limits.semaphore("embedded", n) if self.limits else None
                first = self._opened[("embedded", url)] = embedded_backend(
                    url, alias, max_concurrency=self.limits.limit("embedded", n) if self.limits else n,
                    patience=self.patience, timeout=self.timeout, semaphore=sem)
            if first.model == alias:
                return first
            return Backend(first.endpoint.view(f"embedded:{alias}"), True, alias, f"embedded:{alias}")
        ep_key = (plan.base_url.rstrip("/"), key)  # type: ignore[union-attr]
        opened = self._opened.get(ep_key)
        if opened is None:
            url = plan.base_url.rstrip("/")  # type: ignore[union-attr]
            n = self.max_concurrency or 4
            ep = Endpoint(plan.base_url, key, max_concurrency=self.limits.limit(url, n) if self.limits else n,  # type: ignore[arg-type]
                          patience=self.patience, timeout=self.timeout, key_hint=KEY_HINT[role],
                          semaphore=self.limits.semaphore(url, n) if self.limits else None)
            opened = self._opened[ep_key] = Backend(ep, False, plan.model, ep.base_url)
        return Backend(opened.endpoint, False, plan.model, opened.cache_id)

    def _embedded_server(self, model: str) -> tuple[str, str]:
        """(URL, alias) of the server for `model`: one handed over by another process, else this process's own."""
        from .local_model import model_alias, shared_server

        h = handed_off(model)
        if h is not None:
            return h.url, h.alias
        server = start_for(self.start or shared_server, model, self.plans)
        return server.base_url, model_alias(model)  # type: ignore[return-value]


def embedded_threads(plans: Mapping[str, RolePlan]) -> int:
    """Threads of the embedded server: all usable cores (one server serves every role, local_model.LocalServer)."""
    from .local_model import threads_per_server

    return threads_per_server(1)


def open_role_backends(task: RoleEndpoint, optimizer: RoleEndpoint, *, task_key: str | None = None,
                       optimizer_key: str | None = None, max_concurrency: int | None = None,
                       patience: float | None = None, timeout: float = 300.0,
                       start_embedded: StartEmbedded | None = None,
                       limits: EndpointLimits | None = None) -> RoleBackends:
    """Both roles' backends, starting the embedded servers they need (with `start_embedded`: the dashboard's cached
    one). patience: how long transient faults are retried before a run pauses (env PROMPTOPT_PATIENCE, default
    120 s)."""
    plans = plan_roles(task, optimizer)
    keys = role_keys(plans, task_key, optimizer_key)
    opener = _Opener(max_concurrency, patience, timeout, start_embedded, plans, limits)
    return RoleBackends(*(opener.open(role, plans[role], keys[role]) for role in ROLES))


def open_backend(base_url: str | None = None, api_key: str | None = None, *, model: str | None = None,
                 max_concurrency: int | None = None, patience: float | None = None, timeout: float = 300.0,
                 start_embedded: StartEmbedded | None = None) -> Backend:
    """The task role's backend alone (scoring prompts: the CLI's eval, Home, Compare, the benches)."""
    plans = plan_roles(RoleEndpoint(base_url=base_url, model=model))
    opener = _Opener(max_concurrency, patience, timeout, start_embedded, plans)
    return opener.open("task", plans["task"], role_keys(plans, api_key)["task"])


def embedded_backend(url: str, alias: str, *, max_concurrency: int | None = None, patience: float | None = None,
                     timeout: float = 300.0, semaphore: threading.BoundedSemaphore | None = None) -> Backend:
    """The embedded llama.cpp server at `url`, whichever process started it (the dashboard starts it once)."""
    # llama.cpp serialises requests: more than 2 in flight only queues them; 2 overlaps HTTP with decoding.
    ep = Endpoint(url, "local", max_concurrency=max_concurrency or 2, patience=_patience(patience), timeout=timeout,
                  llamacpp=True, cache_id=f"embedded:{alias}", semaphore=semaphore)
    return Backend(ep, True, alias, ep.cache_id)
