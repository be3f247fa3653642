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
from .backend import Backend, Handoff, RoleBackends, handoff_env, open_role_backends
from .base import REGISTRY, Context, candidate_id
from .config import RunConfig
from .data import Splits
from .evaluate import Evaluator
from .events import CandidateScored, Error, Event, RoleServed, RunFinished, RunStarted, StepDone, Usage
from .llm import LLM, Budget, BudgetExceeded, Counters, EndpointDown, LLMError, Meter, ResponseCache
from .result import RunResult, Score, Spend
from .status import HEARTBEAT_S, RunStatus
from .store import Store

log = logging.getLogger(__name__)


class _Stopped(Exception):
    pass


class ReplayDiverged(RuntimeError):
    pass


def _usage_event(meter: Meter, step: int) -> Usage:
    c = meter.snapshot()
    return Usage(step=step, **c.as_dict())


@contextmanager
def _heartbeat(store: Store, run_id: str) -> Iterator[None]:
    """Beat while the run executes, so a step that scores for minutes without an event is not judged crashed."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S):
            store.heartbeat(run_id)
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
                 backend_factory: Callable[[RunConfig], Backend | RoleBackends] | None = None):
        self.store = store
        self._api_key, self._optimizer_api_key = api_key, optimizer_api_key
        self._backend_factory = backend_factory

    def create(self, config: RunConfig, splits: Splits) -> str:
        if config.optimizer not in REGISTRY:
            raise ValueError(f"unknown optimizer {config.optimizer!r}; choose one of {sorted(REGISTRY)}")
        REGISTRY[config.optimizer].Params(**config.params)  # fail now, not in the worker
        return self.store.create_run(config.model_dump(mode="json"), optimizer=config.optimizer, seed=config.seed,
                                     data_name=config.data.name, splits=splits)

    def backends(self, cfg: RunConfig) -> RoleBackends:
        """Each role's server and model for this run (starting the embedded servers it needs)."""
        if self._backend_factory:
            made = self._backend_factory(cfg)
            return made if isinstance(made, RoleBackends) else RoleBackends.on_one(
                made, cfg.task_endpoint, cfg.optimizer_endpoint)
        return open_role_backends(cfg.task_endpoint, cfg.optimizer_endpoint, task_key=self._api_key,
                                  optimizer_key=self._optimizer_api_key, max_concurrency=cfg.max_concurrency)

    def execute(self, run_id: str, *, on_event: Callable[[int, Event], None] | None = None) -> RunResult:
        """Run (or resume) to the end, the budget, a stop request or a fault."""
        run = self.store.get_run(run_id)
        if run is None:
            raise KeyError(f"no run {run_id!r}")
        with _heartbeat(self.store, run_id):
            return self._execute(run, on_event)

    def _execute(self, run: dict[str, Any], on_event: Callable[[int, Event], None] | None) -> RunResult:
        run_id = run["id"]
        cfg = RunConfig(**run["config"])
        splits = self.store.load_splits(run_id)
        stored = self.store.stream_kinds(run_id)
        last_usage = self.store.last_event(run_id, "usage")
        start = Counters(**{k: getattr(last_usage, k) for k in Counters.__dataclass_fields__}) if last_usage else None
        t0 = time.time()
        self.store.request_stop(run_id, False)
        self.store.set_status(run_id, RunStatus.RUNNING, worker_pid=os.getpid())

        backends = self.backends(cfg)
        meter = Meter(cfg.budget, cfg.prices, start=start)
        cache = ResponseCache(cfg.cache_dir)
        task_llm = LLM(backends.task.endpoint, backends.task.model, role="task", meter=meter, cache=cache)
        opt_defaults: dict[str, Any] = {"temperature": 0.7}
        if cfg.optimizer_temperature is not None:
            opt_defaults["temperature"] = cfg.optimizer_temperature
        opt_llm = LLM(backends.optimizer.endpoint, backends.optimizer.model, role="optimizer", meter=meter,
                      cache=cache, defaults=opt_defaults)
        evaluator = Evaluator(task_llm, cfg.task)
        ctx = Context(task=cfg.task, train=splits.train, dev=splits.dev, initial_prompt=cfg.initial_prompt,
                      evaluator=evaluator, optimizer_llm=opt_llm, seed=cfg.seed)
        opt = REGISTRY[cfg.optimizer](ctx, cfg.params)
        opt_llm.defaults["max_tokens"] = opt.p.optimizer_max_tokens

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
        roles = {role: RoleServed(model=b.model, endpoint=b.describe())
                 for role, b in (("task", backends.task), ("optimizer", backends.optimizer))}
        try:
            if not stored:
                put(RunStarted(optimizer=cfg.optimizer, params=opt.p.model_dump(), seed=cfg.seed, roles=roles), True)
            else:
                index = 1  # RunStarted is stored already
                put(RunStarted(optimizer=cfg.optimizer, params=opt.p.model_dump(), seed=cfg.seed, resumed=True,
                               roles=roles), False)
            for ev in opt.run():
                replaying = index < len(stored)
                put(ev, True)
                if isinstance(ev, StepDone):
                    last_step = ev
                    if not replaying:
                        put(_usage_event(meter, ev.step), False)
                if self.store.stop_requested(run_id):
                    raise _Stopped()
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

        result = self._report(run_id, cfg, ctx, evaluator, splits, meter, last_step, status, reason, put,
                              time.time() - t0)
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

    def _report(self, run_id: str, cfg: RunConfig, ctx: Context, evaluator: Evaluator, splits: Splits, meter: Meter,
                last_step: StepDone | None, status: RunStatus, reason: str, put: Callable[[Event, bool], None],
                wall: float) -> RunResult:
        """Score the initial and the best prompt on every split, outside the optimization budget (stated so)."""
        opt_usage = meter.snapshot()
        init_id = candidate_id(cfg.initial_prompt)
        best_id = last_step.best_id if last_step else init_id
        best_text = ctx.candidates[best_id].text if best_id in ctx.candidates else cfg.initial_prompt
        report_meter = Meter(Budget(), cfg.prices)
        rep_llm = LLM(evaluator.llm.endpoint, evaluator.llm.model, role="report", meter=report_meter,
                      cache=evaluator.llm.cache)
        rep_eval = Evaluator(rep_llm, cfg.task, evaluator.max_workers)
        scores: dict[str, dict[str, Score]] = {"initial": {}, "best": {}}
        report_error = None
        if status is not RunStatus.PAUSED:
            try:
                for which, cid, text in (("initial", init_id, cfg.initial_prompt), ("best", best_id, best_text)):
                    for split in cfg.report_splits:
                        exs = getattr(splits, split)
                        if not exs:
                            continue
                        if which == "best" and best_id == init_id:
                            scores["best"][split] = scores["initial"][split]
                            continue
                        res = rep_eval.evaluate(text, exs)
                        put(CandidateScored.from_eval(res, step=last_step.step if last_step else 0, candidate_id=cid,
                                                      split=split, purpose="report"), False)
                        scores[which][split] = Score(score=res.score, ci=[res.ci_low, res.ci_high], n=res.n)
            except (EndpointDown, LLMError) as e:
                report_error = str(e)
        rep = report_meter.snapshot()
        total = Counters()
        total.add(opt_usage)
        total.add(rep)
        return RunResult(
            run_id=run_id, status=status, reason=reason, optimizer=cfg.optimizer,
            initial_prompt=cfg.initial_prompt, best_prompt=best_text, best_id=best_id,
            best_selection_score=last_step.best_score if last_step else None,
            selection_split=last_step.best_split if last_step else None,
            scores=scores, report_error=report_error,
            **total.as_dict(),
            optimization_usage=Spend(**opt_usage.as_dict()), report_usage=Spend(**rep.as_dict()),
            seed=cfg.seed, wall_time_s=round(wall, 2), config=cfg.model_dump(mode="json"),
            candidates=len(ctx.candidates), version=__version__,
        )


def spawn_worker(db_path: str, run_id: str, *, api_key: str | None = None, optimizer_api_key: str | None = None,
                 embedded: Mapping[str, Handoff] | None = None, log_path: str | None = None) -> subprocess.Popen:
    """Run a stored run in its own process, so it outlives the browser tab and a crash of either side is contained.
    The keys reach the child through its environment only (never its command line or the store); `embedded`: the
    role -> server this process started, so the worker does not load the same model again."""
    env = dict(os.environ)
    if api_key:
        env["OPENAI_API_KEY"] = api_key
    if optimizer_api_key:
        env["PROMPTOPT_OPTIMIZER_API_KEY"] = optimizer_api_key
    env.update(handoff_env(embedded or {}))
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "optimizers", "worker", run_id, "--db", str(db_path)], env=env,
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
