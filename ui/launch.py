"""Starting runs from the dashboard: which optimizers there are, the pre-run estimate, and handing a stored run to a
worker process (the page never runs the optimization; the worker outlives the browser tab)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import streamlit as st

from optimizers.budget import Budget, Prices
from optimizers.config import RunConfig
from optimizers.data import Splits
from optimizers.prepare import PreparedTask
from optimizers.status import RunStatus
from ui import session


def registered_optimizers() -> dict[str, type]:
    """The optimizers registered by optimizers.methods (whichever exist right now)."""
    try:
        import optimizers.methods  # noqa: F401
    except Exception as e:  # a half-written optimizer module must not take the page down
        st.warning(f"Some optimizers could not be loaded: {type(e).__name__}: {e}")
    from optimizers.base import REGISTRY

    return dict(REGISTRY)


def estimate_run(name: str, params: dict[str, Any], po: PreparedTask, prompt: str, seed: int,
                 budget: Budget, prices: dict[str, tuple[float, float]] | None = None,
                 demo_search: dict[str, Any] | None = None) -> Any:
    """The dry-run estimate (optimizers.estimate): the optimizer's own loop against an instant scripted model, so
    the count follows the code, not a formula. Cached per settings in the session; None if the dry run fails."""
    from optimizers.estimate import dry_run

    key = "est:" + hashlib.sha256(json.dumps(
        [name, params, po.name, po.splits.sizes(), prompt, seed, str(budget), prices, demo_search,
         po.task.model_dump(mode="json")], sort_keys=True,
        default=str).encode()).hexdigest()
    if key not in st.session_state:
        try:
            st.session_state[key] = dry_run(name, params, po.task, po.splits, prompt or "Answer.", seed=seed,
                                            budget=budget, prices=Prices(dict(prices or {})),
                                            demo_search=demo_search)
        except Exception:  # an estimate must never break the form
            st.session_state[key] = None
    return st.session_state[key]


def price_inputs(paid_models: list[str]) -> dict[str, tuple[float, float]]:
    """Prices per model in USD per 1M tokens (input, output), set here for this session; known hosted models start
    from the built-in table, marked as a default to check. The embedded models are free (not in `paid_models`)."""
    from optimizers.budget import BUILTIN_PRICES, BUILTIN_PRICES_DATE

    if not paid_models:
        st.caption("Prices: the embedded local models are free, so a money budget never stops them.")
        return {}
    out: dict[str, tuple[float, float]] = {}
    with st.expander("Prices (USD per 1M tokens)", expanded=False):
        for model in dict.fromkeys(paid_models):
            known = BUILTIN_PRICES.get(model)
            note = (f"built-in default from {BUILTIN_PRICES_DATE}: check your provider's page" if known
                    else "unknown: set it, or a money budget cannot be enforced")
            st.caption(f"**{model}**: {note}")
            c1, c2 = st.columns(2)
            pin = c1.number_input(f"{model}: input", 0.0, 1e4, float(known[0]) if known else 0.0, 0.05,
                                  key=f"price_in.{model}", format="%.4f")
            pout = c2.number_input(f"{model}: output", 0.0, 1e4, float(known[1]) if known else 0.0, 0.05,
                                   key=f"price_out.{model}", format="%.4f")
            if known or pin or pout:
                out[model] = (float(pin), float(pout))
    return out


def worker_backend_args(config: RunConfig) -> dict[str, Any]:
    """spawn_worker keyword arguments: the session's keys, and the embedded server of each role that runs on the
    embedded backend (started here, once per model, so workers reuse it instead of each loading the model)."""
    from optimizers.backend import Handoff, handed_off, plan_roles, start_for
    from optimizers.local_model import model_alias

    embedded: dict[str, Handoff] = {}
    plans = plan_roles(config.task_endpoint, config.optimizer_endpoint)
    for role, plan in plans.items():
        if plan.embedded and handed_off(plan.model) is None:  # one handed to this process reaches the worker too
            server = start_for(session.embedded_server, plan.model, plans)
            embedded[role] = Handoff(server.base_url, model_alias(plan.model))
    return {"api_key": session.api_key(), "optimizer_api_key": session.optimizer_api_key(), "embedded": embedded}


def _log_path(run_id: str) -> str:
    p = session.store().local_dir / "logs"
    p.mkdir(parents=True, exist_ok=True)
    return str(p / f"worker-{run_id}.log")


def launch(run_id: str) -> None:
    """Start (or resume) a stored run in a worker process."""
    from optimizers import runner as runner_mod

    config = RunConfig(**session.store().get_run(run_id)["config"])
    runner_mod.spawn_worker(session.db_path(), run_id, log_path=_log_path(run_id), **worker_backend_args(config))


def create_and_launch(config: RunConfig, splits: Splits) -> str:
    from optimizers.runner import Runner

    rid = Runner(session.store()).create(config, splits)
    launch(rid)
    return rid


def resume(run_id: str) -> None:
    """Hand a stored run back to a worker: it replays the stored part from the cache and continues."""
    session.store().set_status(run_id, RunStatus.CREATED, "resume requested")
    launch(run_id)


def launch_sweep(text: str, executor: str = "local", address: str | None = None) -> str:
    """Check a sweep (YAML/JSON text) and run it in a worker process of its own (it outlives the tab; running the
    same sweep again continues it); with executor "ray", the worker runs its cells on the Ray cluster at `address`
    (none: RAY_ADDRESS, else a local cluster). Returns its id; raises optimizers.sweep.SweepError naming the line,
    or optimizers.ray_executor.RayError, before anything starts."""
    from optimizers.backend import Handoff, plan_roles, start_for
    from optimizers.config import RoleEndpoint
    from optimizers.local_model import model_alias
    from optimizers.runner import spawn_sweep_worker
    from optimizers.sweep import check, parse, sweep_id

    spec, lines = parse(text, "the sweep")
    check(spec, lines, "the sweep")
    address = (address or "").strip() or os.environ.get("RAY_ADDRESS") or None
    if executor == "ray":
        from optimizers.ray_executor import precheck

        precheck(address)
    sid = sweep_id(spec)
    folder = session.store().local_dir / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sid}.yaml"
    path.write_text(text, encoding="utf-8")  # the spec only: keys never go in a sweep
    embedded: dict[str, Handoff] = {}
    if len(spec.task_models) == len(spec.optimizer_models) == 1:  # one pair of models: start its server here once,
        # as for a run, so the worker reuses it (a grid over models lets the worker start what each cell needs)
        plans = plan_roles(RoleEndpoint(base_url=spec.base_url, model=spec.task_models[0]),
                           RoleEndpoint(base_url=spec.optimizer_base_url, model=spec.optimizer_models[0]))
        for role, plan in plans.items():
            if plan.embedded:
                server = start_for(session.embedded_server, plan.model, plans)
                embedded[role] = Handoff(server.base_url, model_alias(plan.model))
    spawn_sweep_worker(session.db_path(), str(path), api_key=session.api_key(),
                       optimizer_api_key=session.optimizer_api_key(), embedded=embedded,
                       log_path=str(folder / f"{sid}.log"), executor=executor, address=address)
    return sid

