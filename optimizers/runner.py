"""The run engine: builds a run from its stored config, drives the optimizer, stores every event before anything
shows it, enforces the budget and stop requests, and reports the initial and best prompts on every split.

Resume is replay: the optimizer is restarted with the same seed, and every request it makes up to the point where
the run stopped is answered from the response cache (free), so it walks the same path; the events it re-emits are
matched against the stored ones and not stored twice. New work starts where the stored stream ends.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from . import __version__
from .backend import Backend, EndpointLimits, Handoff, RoleBackends, handoff_env, open_role_backends, plan_roles
from .base import REGISTRY, Context, candidate_id
from .budget import BudgetExceeded, Counters, Meter, Prices
from .config import RunConfig
from .data import Splits
from .evaluate import EvalResult, Evaluator
from .events import CandidateScored, Error, Event, RoleServed, RunFinished, RunStarted, StepDone, Usage
from .llm import LLM, EndpointDown, LLMError, open_cache
from .methods.demos import DemoParams, Steps, then_demo_search
from .methods.demos import fitted as fitted_demo_search
from .methods.demos import share as demo_search_share
from .report import ReportReserve, report_leaves_little, score_splits
from .result import Paired, RunResult, Score, Spend
from .status import HEARTBEAT_S, RunStatus
from .store import Store

log = logging.getLogger(__name__)


class _Stopped(Exception):
    pass


class ReplayDiverged(RuntimeError):
    pass


def _live_spend(meter: Meter | None) -> dict[str, Any] | None:
    """The meter's totals as the heartbeat writes them (read in the heartbeat thread; the meter locks)."""
    if meter is None:
        return None
    c = meter.snapshot()
    return {"calls": c.calls, "cache_hits": c.cache_hits, "tokens": c.tokens, "inflight": meter.inflight_calls(),
            "at": time.time()}


def _usage_event(meter: Meter, step: int) -> Usage:
    total, roles, phases, at = meter.checkpoint()
    return Usage(step=step, **total.as_dict(), by_role=roles, by_phase=phases, at=at)


def check_money_cap(cfg: RunConfig) -> None:
    """A money budget is only a promise when every paid model has a price: refuse the run before any call."""
    if cfg.budget.max_cost is None:
        return
    prices = Prices(dict(cfg.prices))
    paid = [p.model for p in plan_roles(cfg.task_endpoint, cfg.optimizer_endpoint).values() if not p.embedded]
    missing = [m for m in dict.fromkeys(paid) if prices.of(m) is None]  # the embedded models are free
    if missing:
        raise ValueError(f"a money budget needs a price for {', '.join(missing)}: set it with --price "
                         f"{missing[0]}=IN,OUT (USD per 1M input and output tokens) or on the Optimize page")


def _meter(run_id: str, cfg: RunConfig, last: Usage | None) -> Meter:
    """The run's meter, starting from what every earlier execution of the run spent (its last usage event)."""
    if last is None:
        meter = Meter(cfg.budget, Prices(dict(cfg.prices)))
    else:
        counters = {name: Counters.from_dict(d) for name, d in last.by_phase.items()}
        meter = Meter(cfg.budget, Prices(dict(cfg.prices)), start=Counters.from_dict(last.model_dump()),
                      start_by_role={r: Counters.from_dict(d) for r, d in last.by_role.items()},
                      start_by_phase=counters or {"optimization": Counters.from_dict(last.model_dump())})
        meter.recorded_until = last.at
    meter.run_id = run_id
    return meter


@contextmanager
def _heartbeat(store: Store, run_id: str, live: Callable[[], dict[str, Any] | None] = lambda: None
               ) -> Iterator[None]:
    """Beat while the run executes, so a step that scores for minutes without an event is not judged crashed; each
    beat carries the spend so far, so a page shows progress between events (the first within seconds)."""
    done = threading.Event()

    def beat() -> None:
        while True:
            store.heartbeat(run_id, live())
            if done.wait(HEARTBEAT_S):
                break
        store.close()  # this thread's connection

    t = threading.Thread(target=beat, name=f"heartbeat-{run_id}", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()


class Runner:
    """api_key / optimizer_api_key: each role's key, held in memory (else the environment's, see optimizers.backend).
    backend_factory: tests' servers instead of the configured ones (one Backend serves both roles)."""

    def __init__(self, store: Store, *, api_key: str | None = None, optimizer_api_key: str | None = None,
                 backend_factory: Callable[[RunConfig], Backend | RoleBackends] | None = None,
                 limits: EndpointLimits | None = None):
        self.store = store
        self.limits = limits  # per-server concurrency shared with other runs of this process (a sweep's)
        self._api_key, self._optimizer_api_key = api_key, optimizer_api_key
        self._live: dict[str, Meter] = {}
        self._backend_factory = backend_factory

    def create(self, config: RunConfig, splits: Splits) -> str:
        if config.optimizer not in REGISTRY:
            raise ValueError(f"unknown optimizer {config.optimizer!r}; choose one of {sorted(REGISTRY)}")
        REGISTRY[config.optimizer].Params(**config.params)  # fail now, not in the worker
        check_money_cap(config)
        return self.store.create_run(config.model_dump(mode="json"), optimizer=config.optimizer, seed=config.seed,
                                     data_name=config.data.name, splits=splits)

    def backends(self, cfg: RunConfig) -> RoleBackends:
        """Each role's server and model for this run (starting the embedded servers it needs)."""
        if self._backend_factory:
            made = self._backend_factory(cfg)
            return made if isinstance(made, RoleBackends) else RoleBackends.on_one(
                made, cfg.task_endpoint, cfg.optimizer_endpoint)
        return open_role_backends(cfg.task_endpoint, cfg.optimizer_endpoint, task_key=self._api_key,
                                  optimizer_key=self._optimizer_api_key, max_concurrency=cfg.max_concurrency,
                                  limits=self.limits)

    def execute(self, run_id: str, *, on_event: Callable[[int, Event], None] | None = None) -> RunResult:
        """Run (or resume) to the end, the budget, a stop request or a fault."""
        run = self.store.get_run(run_id)
        if run is None:
            raise KeyError(f"no run {run_id!r}")
        with _heartbeat(self.store, run_id, lambda: _live_spend(self._live.get(run_id))):
            try:
                return self._execute(run, on_event)
            finally:
                self._live.pop(run_id, None)

    def _execute(self, run: dict[str, Any], on_event: Callable[[int, Event], None] | None) -> RunResult:
        run_id = run["id"]
        cfg = RunConfig(**run["config"])
        splits = self.store.load_splits(run_id)
        stored = self.store.stream_kinds(run_id)
        meter = _meter(run_id, cfg, self.store.last_event(run_id, "usage"))
        self._live[run_id] = meter
        t0 = time.time()
        self.store.request_stop(run_id, False)
        self.store.set_status(run_id, RunStatus.RUNNING, worker_pid=os.getpid())

        backends = self.backends(cfg)
        cache = open_cache(cfg.cache_dir)
        meter.orphaned(cache.orphans(run_id, meter.recorded_until))
        task_llm = LLM(backends.task.endpoint, backends.task.model, role="task", meter=meter, cache=cache)
        opt_defaults: dict[str, Any] = {"temperature": 0.7}
        if cfg.optimizer_temperature is not None:
            opt_defaults["temperature"] = cfg.optimizer_temperature
        opt_llm = LLM(backends.optimizer.endpoint, backends.optimizer.model, role="optimizer", meter=meter,
                      cache=cache, defaults=opt_defaults)
        evaluator = Evaluator(task_llm, cfg.task)
        ctx = Context(task=cfg.task, train=splits.train, dev=splits.dev, initial_prompt=cfg.initial_prompt,
                      evaluator=evaluator, optimizer_llm=opt_llm, seed=cfg.seed)
        # A resume runs with the parameters the run started with (every one, defaults included, as its stored
        # RunStarted has them; each resume stores the same again), so an upgrade's new default does not change it.
        started = self.store.last_event(run_id, "run_started") if stored else None
        opt_cls = REGISTRY[cfg.optimizer]
        params = ({k: v for k, v in started.params.items() if k in opt_cls.Params.model_fields}
                  if isinstance(started, RunStarted) and started.params else cfg.params)
        opt = opt_cls(ctx, params)
        opt_llm.defaults["max_tokens"] = opt.p.optimizer_max_tokens
        demo_params = cfg.demo_search
        if isinstance(started, RunStarted) and started.demo_search is not None:
            demo_params = started.demo_search  # sized once, at the first start (fit_budget)
        elif demo_params is not None:
            demo_params = DemoParams(**demo_params).model_dump()
            if demo_params.get("fit_budget"):
                ReportReserve(task_llm, meter, cfg.task, splits, cfg.report_splits, cfg.initial_prompt)
                demo_params = fitted_demo_search(demo_params, meter.call_allowance(), len(splits.dev))
        demo_share = (demo_search_share(ctx, demo_params, meter, task_llm.model, cfg.task.max_tokens)
                      if demo_params is not None else None)

        index = 0
        last_step: StepDone | None = None

        def put(ev: Event, stream: bool) -> None:
            nonlocal index
            if stream:
                if index < len(stored):
                    if stored[index] != ev.kind:
                        raise ReplayDiverged(
                            f"resume could not replay the stored run: event {index} was {stored[index]!r}, "
                            f"now {ev.kind!r} (was the response cache cleared?)")
                    index += 1
                    return
                seq = self.store.append_event(run_id, ev, getattr(ev, "_predictions", ()), stream_index=index)
                index += 1
            else:
                seq = self.store.append_event(run_id, ev, getattr(ev, "_predictions", ()))
            if on_event:
                on_event(seq, ev)

        status, reason = RunStatus.DONE, ""
        reserve = ReportReserve(task_llm, meter, cfg.task, splits, cfg.report_splits, cfg.initial_prompt, demo_share)
        if reserve.extra_dropped:
            put(Error(message=f"the budget ({cfg.budget.describe()}) cannot hold the demo search's share next to the "
                              "report: the demo search gets what the optimizer leaves", recoverable=True,
                      where="budget"), False)
        if reserve.skipped:
            put(Error(message=f"the budget ({cfg.budget.describe()}) cannot pay for the report on "
                              f"{', '.join(reserve.skipped)}: it will report on fewer splits (test first)",
                      recoverable=True, where="budget"), False)
        roles = {role: RoleServed(model=b.model, endpoint=b.describe())
                 for role, b in (("task", backends.task), ("optimizer", backends.optimizer))}

        def go_on(calls: int) -> bool:
            """Replaying, the stored stream answers: the run went on there since events follow (the meter starts at
            the run's latest total, and the report's cached requests change what it holds)."""
            if index < len(stored):
                return True
            left = meter.call_allowance()
            return left is None or left >= calls

        ctx.go_on = go_on
        ctx.call_allowance = meter.call_allowance() if not stored else _stored_allowance(
            self.store.last_event(run_id, "run_started"))
        try:
            if not stored:
                put(RunStarted(optimizer=cfg.optimizer, params=opt.p.model_dump(), seed=cfg.seed, roles=roles,
                               call_allowance=ctx.call_allowance, demo_search=demo_params), True)
                left = report_leaves_little(meter, cfg.budget.max_calls, demo_share, splits, cfg.report_splits)
                if left:
                    put(Error(message=left, recoverable=True, where="budget"), False)
            else:
                index = 1  # RunStarted is stored already
                put(RunStarted(optimizer=cfg.optimizer, params=opt.p.model_dump(), seed=cfg.seed, resumed=True,
                               roles=roles, call_allowance=ctx.call_allowance, demo_search=demo_params), False)
            events = Steps(opt.run() if demo_params is None else then_demo_search(
                opt, ctx, demo_params, lambda: last_step, reserve.release_extra))
            for ev in events:
                replaying = index < len(stored)
                put(ev, True)
                if isinstance(ev, StepDone):
                    last_step = ev
                    if not replaying:
                        put(_usage_event(meter, ev.step), False)
                    try:
                        reserve.after_step(ctx.candidates[ev.best_id].text if ev.best_id in ctx.candidates
                                           else cfg.initial_prompt)
                    except BudgetExceeded as e:
                        if not reserve.extra:
                            raise
                        events.stop(e)  # the new best's report leaves the optimizer no more: the demo search
                        # starts on the share held for it (it was ended with the run before: measured)
                if self.store.stop_requested(run_id):
                    raise _Stopped()
            if index < len(stored):
                raise ReplayDiverged(f"resume could not replay the stored run: the optimizer ended after {index} of "
                                     f"its {len(stored)} stored events (was the response cache cleared?)")
        except BudgetExceeded as e:
            status, reason = RunStatus.BUDGET, f"budget reached: {e}"
        except _Stopped:
            status, reason = RunStatus.STOPPED, "stopped by the user"
        except EndpointDown as e:
            status, reason = RunStatus.PAUSED, str(e)
        except (LLMError, ReplayDiverged) as e:
            status, reason = RunStatus.FAILED, str(e)
        except Exception as e:  # a bug: keep the run, say what broke, let the user resume after a fix
            status, reason = RunStatus.FAILED, f"{type(e).__name__}: {backends.redact(str(e))}"
            log.error("run %s crashed:\n%s", run_id, backends.redact(traceback.format_exc()))
        if status in (RunStatus.PAUSED, RunStatus.FAILED):
            put(Error(message=reason, recoverable=status is RunStatus.PAUSED, where="run"), False)
        put(_usage_event(meter, last_step.step if last_step else 0), False)

        result = self._report(run_id, cfg, ctx, evaluator, task_llm, splits, meter, last_step, status, reason, put,
                              time.time() - t0)
        put(_usage_event(meter, last_step.step if last_step else 0), False)
        put(RunFinished(status=status, best_id=result.best_id, reason=reason), False)
        self.store.set_result(run_id, result.model_dump(mode="json"))
        self.store.set_status(run_id, status, reason or None)
        cache.close()
        return result

    def execute_until_done(self, run_id: str, *, wait: float, probe_every: float = 5.0,
                           on_event: Callable[[int, Event], None] | None = None,
                           sleep: Callable[[float], None] = time.sleep) -> RunResult:
        """Execute; when the endpoint goes down the run pauses (stored, with the reason), this waits up to `wait`
        seconds probing the endpoint, and resumes by replay as soon as it answers: no stored step is lost and the
        cache makes the replayed requests free."""
        result = self.execute(run_id, on_event=on_event)
        deadline = time.monotonic() + wait
        while result.status is RunStatus.PAUSED and time.monotonic() < deadline:
            cfg = RunConfig(**self.store.get_run(run_id)["config"])
            endpoints = self.backends(cfg).endpoints()
            self.store.set_status(run_id, RunStatus.PAUSED, f"{result.reason} - waiting for it to return "
                                                            f"(auto-resume for up to {wait:.0f} s)")
            while time.monotonic() < deadline and not self.store.stop_requested(run_id):
                if all(ep.is_up() for ep in endpoints):
                    break
                sleep(probe_every)
            else:
                break
            log.info("run %s: the endpoint is back, resuming", run_id)
            result = self.execute(run_id, on_event=on_event)
        return result

    def _report(self, run_id: str, cfg: RunConfig, ctx: Context, evaluator: Evaluator, task_llm: LLM, splits: Splits,
                meter: Meter, last_step: StepDone | None, status: RunStatus, reason: str,
                put: Callable[[Event, bool], None], wall: float) -> RunResult:
        """Score the initial and the best prompt on every reported split the budget still pays for (test first)."""
        init_id = candidate_id(cfg.initial_prompt)
        best_id = last_step.best_id if last_step else init_id
        best_text = ctx.candidates[best_id].text if best_id in ctx.candidates else cfg.initial_prompt
        step = last_step.step if last_step else 0
        ids = {"initial": init_id, "best": best_id}
        scores: dict[str, dict[str, Score]] = {"initial": {}, "best": {}}
        correct: dict[str, dict[str, list[bool]]] = {"initial": {}, "best": {}}

        def on_scored(which: str, split: str, res: EvalResult) -> None:
            put(CandidateScored.from_eval(res, step=step, candidate_id=ids[which], split=split, purpose="report"),
                False)
            scores[which][split] = Score(score=res.score, ci=[res.ci_low, res.ci_high], n=res.n)
            correct[which][split] = res.correct

        prompts = {"initial": cfg.initial_prompt} if best_id == init_id else {"initial": cfg.initial_prompt,
                                                                               "best": best_text}
        report_error, skipped = None, []
        if status is not RunStatus.PAUSED:
            try:
                skipped = score_splits(evaluator, meter, task_llm, cfg.task, splits, cfg.report_splits, prompts,
                                       on_scored)
            except (EndpointDown, LLMError, BudgetExceeded) as e:
                report_error = str(e)
            if best_id == init_id:
                scores["best"] = dict(scores["initial"])
            if skipped:
                report_error = report_error or (f"the budget ({cfg.budget.describe()}) did not cover the report on "
                                                f"{', '.join(skipped)}")
        meter.release_hold()
        phases = meter.phases()
        paired = {split: Paired.of(b, correct["initial"][split]) for split, b in correct["best"].items()
                  if split in correct["initial"]}
        return RunResult(
            run_id=run_id, status=status, reason=reason, optimizer=cfg.optimizer,
            initial_prompt=cfg.initial_prompt, best_prompt=best_text, best_id=best_id,
            best_selection_score=last_step.best_score if last_step else None,
            selection_split=last_step.best_split if last_step else None,
            scores=scores, paired=paired, report_error=report_error, report_skipped=skipped,
            **meter.snapshot().as_dict(),
            optimization_usage=Spend(**phases.get("optimization", {})), report_usage=Spend(**phases.get("report", {})),
            by_role={r: Spend(**c) for r, c in meter.roles().items()},
            seed=cfg.seed, wall_time_s=round(wall, 2), config=cfg.model_dump(mode="json"),
            candidates=len(ctx.candidates), version=__version__,
        )


def _spawn(command: list[str], db_path: str, api_key: str | None, optimizer_api_key: str | None,
           embedded: Mapping[str, Handoff] | None, log_path: str | None) -> subprocess.Popen:
    """`python -m optimizers COMMAND --db DB` in its own session; the keys reach it through its environment only
    (never its command line or the store)."""
    env = dict(os.environ)
    if api_key:
        env["OPENAI_API_KEY"] = api_key
    if optimizer_api_key:
        env["PROMPTOPT_OPTIMIZER_API_KEY"] = optimizer_api_key
    env.update(handoff_env(embedded or {}))
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "optimizers", *command, "--db", str(db_path)], env=env,
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def spawn_worker(db_path: str, run_id: str, *, api_key: str | None = None, optimizer_api_key: str | None = None,
                 embedded: Mapping[str, Handoff] | None = None, log_path: str | None = None) -> subprocess.Popen:
    """Run a stored run in its own process, so it outlives the browser tab and a crash of either side is contained.
    `embedded`: the role -> server this process started, so the worker does not load the same model again."""
    return _spawn(["worker", run_id], db_path, api_key, optimizer_api_key, embedded, log_path)


def spawn_sweep_worker(db_path: str, sweep_file: str, *, api_key: str | None = None,
                       optimizer_api_key: str | None = None, embedded: Mapping[str, Handoff] | None = None,
                       log_path: str | None = None, executor: str = "local",
                       address: str | None = None) -> subprocess.Popen:
    """`python -m optimizers sweep FILE [--executor ray --address A]` in its own process, as spawn_worker does for
    one run."""
    command = ["sweep", sweep_file]
    if executor != "local":
        command += ["--executor", executor] + (["--address", address] if address else [])
    return _spawn(command, db_path, api_key, optimizer_api_key, embedded, log_path)


def _stored_allowance(started: Event | None) -> int | None:
    """A resume plans with the first start's allowance (replay must ask the same questions)."""
    return getattr(started, "call_allowance", None)
