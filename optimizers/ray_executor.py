"""Sweep cells on a Ray cluster (`python -m optimizers sweep FILE --executor ray [--address ADDR]`).

Each cell is a Ray *task* that executes its stored run (optimizers.runner.Runner.execute), not a Ray Tune trial:
a cell already is a complete, budgeted, resumable run whose every event lands in the store, so Tune's trial
bookkeeping, checkpoints and result logging would duplicate the store, and its schedulers (ASHA, PBT) would stop or
mutate runs mid-way, which a paired comparison of finished runs must not do. A task that dies with its node is retried
by Ray (max_retries) on another node and resumes the same run by replay: the store says what was done, the response
cache answers it again for free (across machines when the cache is in PostgreSQL, optimizers.shared_cache). Every endpoint's concurrency limit holds across the whole cluster: one small actor hands out permits.

Ray is optional (requirements-ray.txt) and imported only here. The store must be reachable from every node:
PostgreSQL (PROMPTOPT_DB=postgresql://...) on a real cluster, a SQLite file for a local one. Keys are never sent by
the driver: each node's environment holds them (OPENAI_API_KEY, PROMPTOPT_OPTIMIZER_API_KEY), as for any worker.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from .sweep import Cell, SweepSpec, plan_sweep

RETRIES = 3  # a cell whose node or worker dies is run again (it resumes) this many times
LEASE_S = 20.0  # a permit whose holder has not renewed it for this long (it died holding it) goes back to the pool


class RayError(RuntimeError):
    """Ray is missing or its head cannot be reached: one clear message, no run created."""


def _ray():
    try:
        import ray
    except ImportError:
        raise RayError("--executor ray needs Ray: pip install -r requirements-ray.txt") from None
    return ray


def _probe(address: str | None) -> None:
    if address and address != "auto":  # Ray itself retries a missing head for minutes: probe it first
        import socket

        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise RayError(f"cannot reach the Ray head at {address}: {getattr(e, 'strerror', None) or e}") from None


def precheck(address: str | None) -> None:
    """What the dashboard checks before it starts a worker for a Ray sweep, without importing Ray in its own
    process: Ray installed, the head (when one is named) answering."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise RayError("running cells on Ray needs Ray: pip install -r requirements-ray.txt")
    _probe(address)


def connect(address: str | None) -> Any:
    """ray.init to the head at `address` (or a local cluster started here); RayError if it cannot be reached."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    _probe(address)
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RayError(f"cannot reach the Ray head at {address}: {first}") from None
    return ray


class _Permits:
    """Cluster-wide permits per server key, with leases (a holder that died does not keep its permit)."""

    def __init__(self, limits: dict[str, int]):
        self.limits = dict(limits)
        self.held: dict[str, dict[str, float]] = {}
        self.cond = asyncio.Condition()
        self.most: dict[str, int] = {}

    async def acquire(self, key: str, limit: int, lease: float = LEASE_S) -> str:
        async with self.cond:
            while True:
                held = self.held.setdefault(key, {})
                now = time.monotonic()
                for t in [t for t, at in held.items() if now - at > lease]:
                    del held[t]
                if len(held) < self.limits.get(key, limit):
                    token = uuid.uuid4().hex
                    held[token] = now
                    self.most[key] = max(self.most.get(key, 0), len(held))
                    return token
                try:
                    await asyncio.wait_for(self.cond.wait(), timeout=1.0)
                except TimeoutError:
                    pass

    async def renew(self, key: str, tokens: list[str]) -> None:
        """The holder is alive and its requests still in flight: their leases start again."""
        now = time.monotonic()
        held = self.held.get(key, {})
        for t in tokens:
            if t in held:
                held[t] = now

    async def release(self, key: str, token: str) -> None:
        async with self.cond:
            self.held.get(key, {}).pop(token, None)
            self.cond.notify_all()

    def peak(self) -> dict[str, int]:
        return dict(self.most)


class RaySemaphore:
    """A semaphore whose permits live in the cluster's actor: `with sem:` as a thread semaphore (optimizers.llm).
    While this process holds permits a daemon thread renews their leases, so a process that dies holding one frees
    it within LEASE_S and a retried run on another worker is not left waiting for it."""

    def __init__(self, actor: Any, key: str, limit: int):
        self.actor, self.key, self.limit = actor, key, limit
        self._tokens = threading.local()
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    def _renew_forever(self) -> None:
        ray = _ray()
        while True:
            time.sleep(LEASE_S / 4)
            with self._lock:
                tokens = list(self._held)
            if tokens:
                try:
                    ray.get(self.actor.renew.remote(self.key, tokens))
                except Exception:  # the sweep ended (its actor is gone): nothing to renew
                    return

    def acquire(self) -> bool:
        ray = _ray()
        token = ray.get(self.actor.acquire.remote(self.key, self.limit))
        stack = getattr(self._tokens, "stack", None)
        if stack is None:
            stack = self._tokens.stack = []
        stack.append(token)
        with self._lock:
            self._held.add(token)
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_forever, daemon=True, name="permit-renewal")
                self._renewer.start()
        return True

    def release(self) -> None:
        ray = _ray()
        token = self._tokens.stack.pop()
        with self._lock:
            self._held.discard(token)
        ray.get(self.actor.release.remote(self.key, token))

    def __enter__(self) -> RaySemaphore:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _execute_cell(location: str, run_id: str, limits: dict[str, int], actor: Any) -> str:
    """A Ray task: execute (or resume) one stored run on whichever node Ray chose."""
    from . import methods  # noqa: F401  (registers the optimizers in the worker)
    from .backend import EndpointLimits
    from .runner import Runner
    from .store import Store

    lim = EndpointLimits(limits, factory=lambda key, n: RaySemaphore(actor, key, n))
    result = Runner(Store(location), limits=lim).execute(run_id)
    return str(result.status)


def run_sweep_on_ray(store, location: str, spec: SweepSpec, cells: list[Cell], *, address: str | None = None,
                     on_cell: Callable[[Cell, str, str], None] | None = None) -> tuple[str, dict[str, int]]:
    """Run (or continue) the sweep on the Ray cluster at `address` (a local one when None); (sweep id, the most
    requests each endpoint had in flight at once, cluster-wide). Connects before anything is created."""
    ray = connect(address)
    sid, todo = plan_sweep(store, spec, cells)
    permits = ray.remote(num_cpus=0)(_Permits).options(max_concurrency=1000).remote(
        {("embedded" if k == "embedded" else k.rstrip("/")): v for k, v in spec.concurrency.items()})
    task = ray.remote(num_cpus=0, max_retries=RETRIES, retry_exceptions=False)(_execute_cell)
    pending: dict[Any, tuple[Cell, str]] = {}
    queue = list(todo)
    while queue or pending:
        while queue and len(pending) < spec.parallel:  # the sweep's `parallel` bounds runs at once on the cluster
            cell, run_id = queue.pop(0)
            pending[task.remote(location, run_id, dict(spec.concurrency), permits)] = (cell, run_id)
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            cell, run_id = pending.pop(ref)
            try:
                status = ray.get(ref)
            except Exception as e:  # the task failed after its retries: the run stays stored, resumable
                status = f"failed on the cluster: {type(e).__name__}"
            if on_cell:
                on_cell(cell, run_id, status)
    peak = ray.get(permits.peak.remote())
    return sid, peak
