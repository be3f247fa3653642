"""A sweep: a grid of ordinary runs (data sets x optimizers x knob values x seeds x task / optimizer models), written
as a YAML or JSON file (or built by the dashboard's form), checked whole before any call, then run as stored runs.

    name: gpo-ablation
    data: [support_triage]                 # bundled names, or {file, input_cols, label_col, initial_prompt, ...}
    optimizers:
      gpo: {momentum_selection: [recency, relevance, importance], decay: [cosine, linear, fixed]}
      demos: {}                            # an optimizer with its defaults
    seeds: [0, 1, 2]
    task_models: [qwen2.5-coder-1.5b]      # optional; optimizer_models likewise
    split: {max_train: 48, max_dev: 20, max_test: 60}
    task: {layout: system}
    budget: {max_calls: 300}               # per run (the run budget's rules: a hard cap, the report inside it)
    max_total: {max_calls: 12000}          # the whole sweep: a grid whose runs' caps add up to more is refused
    parallel: 2                            # runs at once
    concurrency: {embedded: 2}             # requests in flight per endpoint, shared by every run that uses it

Every cell is an ordinary run (Inspect, Compare, export work on it); the sweep keeps which run is which cell, so
running the same file again continues it: finished cells are not rerun, an unfinished one resumes by replay through
the response cache (paying nothing twice).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import RoleEndpoint, SplitConfig
from .llm import Budget
from .status import RunStatus


class SweepError(ValueError):
    """A sweep file that cannot run, with the line it is about."""


class DataRef(BaseModel):
    """A data set of a sweep: a bundled name, or a file with its columns."""

    model_config = ConfigDict(extra="forbid")
    file: str
    input_cols: list[str]
    label_col: str
    initial_prompt: str
    template: str | None = None
    labels: list[str] | None = None


class TaskOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layout: str = "user"
    demos: int = 0
    demo_style: str = "turns"
    reasoning_max_tokens: int = 0
    max_tokens: int = 32


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "sweep"
    data: list[str | DataRef] = Field(min_length=1)
    optimizers: dict[str, dict[str, Any]] = Field(min_length=1)
    seeds: list[int] = [0]
    task_models: list[str | None] = [None]
    optimizer_models: list[str | None] = [None]
    base_url: str | None = None
    optimizer_base_url: str | None = None
    split: SplitConfig = SplitConfig()
    task: TaskOptions = TaskOptions()
    then_demos: dict[str, Any] | None = None
    budget: Budget
    max_total: Budget | None = None
    parallel: int = Field(2, ge=1, le=64)
    concurrency: dict[str, int] = {}
    report_splits: list[str] = ["test"]
    prices: dict[str, tuple[float, float]] = {}
    cache_dir: str | None = None  # the response cache of every run (default: PROMPTOPT_CACHE_DIR's, shared)


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    data: str | DataRef
    optimizer: str
    params: tuple[tuple[str, Any], ...]
    seed: int
    task_model: str | None
    optimizer_model: str | None

    @property
    def data_name(self) -> str:
        return self.data if isinstance(self.data, str) else Path(self.data.file).name

    @property
    def key(self) -> str:
        """Stable identity of the cell inside its sweep."""
        return json.dumps({"data": self.data if isinstance(self.data, str) else self.data.model_dump(),
                           "optimizer": self.optimizer, "params": dict(self.params), "seed": self.seed,
                           "task_model": self.task_model, "optimizer_model": self.optimizer_model},
                          sort_keys=True, default=str)

    @property
    def config_key(self) -> str:
        """The cell without its seed: the leaderboard's configuration."""
        d = json.loads(self.key)
        d.pop("seed")
        return json.dumps(d, sort_keys=True)


# --- reading ----------------------------------------------------------------------------------------------------
@dataclass
class _Lines:
    """Line numbers (1-based) of every key path of the parsed file, for messages that name the line."""

    at: dict[tuple, int] = field(default_factory=dict)

    def line(self, path: tuple) -> int | None:
        while path:
            if path in self.at:
                return self.at[path]
            path = path[:-1]
        return self.at.get((), None)

    def where(self, path: tuple) -> str:
        n = self.line(tuple(path))
        return f"line {n}" if n else "the file"


def _index(node: yaml.Node, path: tuple, lines: _Lines) -> None:
    lines.at.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            lines.at[(*path, key)] = k.start_mark.line + 1
            _index(v, (*path, key), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            lines.at[(*path, i)] = v.start_mark.line + 1
            _index(v, (*path, i), lines)


def parse(text: str, source: str = "sweep file") -> tuple[SweepSpec, _Lines]:
    """The spec and its line index; YAML or JSON (JSON is read as YAML). Errors name the line."""
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "the file"
        raise SweepError(f"{source}, {where}: not valid YAML or JSON ({getattr(e, 'problem', None) or e})") from None
    lines = _Lines()
    if node is not None:
        _index(node, (), lines)
    if not isinstance(raw, dict):
        raise SweepError(f"{source}: a sweep is a mapping (name, data, optimizers, seeds, budget, ...)")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x in ("str", "DataRef")))
        what = ".".join(map(str, loc)) or "the sweep"
        msg = err.get("ctx", {}).get("error") or err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        elif err["type"] == "missing":
            msg = "required"
        raise SweepError(f"{source}, {lines.where(loc)}: {what}: {msg}") from None
    return spec, lines


def load(path: str | Path) -> tuple[SweepSpec, _Lines]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SweepError(f"cannot read the sweep file {p}: {e.strerror or e}") from None
    return parse(text, str(p))


# --- the grid ---------------------------------------------------------------------------------------------------
def _values(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list) else [v]


def expand(spec: SweepSpec) -> list[Cell]:
    cells = []
    for data in spec.data:
        for opt, knobs in spec.optimizers.items():
            names = sorted(knobs)
            for combo in itertools.product(*(_values(knobs[n]) for n in names)):
                for tm in spec.task_models:
                    for om in spec.optimizer_models:
                        for seed in spec.seeds:
                            cells.append(Cell(data, opt, tuple(zip(names, combo, strict=True)), seed, tm, om))
    return cells


def check(spec: SweepSpec, lines: _Lines, source: str = "sweep file") -> list[Cell]:
    """Every cell of the grid, or one SweepError naming the line: an unknown optimizer or knob, a value the knob
    refuses, an empty grid, or runs whose caps add up to more than the sweep's."""
    from . import methods  # noqa: F401  (registers the optimizers)
    from .base import REGISTRY
    from .data import BUNDLED

    for i, d in enumerate(spec.data):
        if isinstance(d, str) and d not in BUNDLED:
            raise SweepError(f"{source}, {lines.where(('data', i))}: data: unknown bundled set {d!r} (bundled: "
                             f"{', '.join(BUNDLED)}; a file is {{file, input_cols, label_col, initial_prompt}})")
        if isinstance(d, DataRef) and not Path(d.file).exists():
            raise SweepError(f"{source}, {lines.where(('data', i, 'file'))}: data: no such file {d.file!r}")
    for opt, knobs in spec.optimizers.items():
        if opt not in REGISTRY:
            raise SweepError(f"{source}, {lines.where(('optimizers', opt))}: unknown optimizer {opt!r}; choose from "
                             f"{', '.join(sorted(REGISTRY))}")
        if not isinstance(knobs, dict):
            raise SweepError(f"{source}, {lines.where(('optimizers', opt))}: optimizers.{opt}: a mapping of knob -> "
                             "value or list of values ({} for the defaults)")
        fields = REGISTRY[opt].Params.model_fields
        for name, vals in knobs.items():
            if name not in fields:
                raise SweepError(f"{source}, {lines.where(('optimizers', opt, name))}: {opt} has no knob {name!r}; "
                                 f"its knobs: {', '.join(fields)}")
            if isinstance(vals, list) and not vals:
                raise SweepError(f"{source}, {lines.where(('optimizers', opt, name))}: {opt}.{name}: an empty list "
                                 "of values makes the grid empty")
            for j, v in enumerate(_values(vals)):
                try:
                    REGISTRY[opt].Params(**{name: v})
                except ValidationError as e:
                    path = ("optimizers", opt, name, j) if isinstance(vals, list) else ("optimizers", opt, name)
                    raise SweepError(f"{source}, {lines.where(path)}: {opt}.{name} = {v!r}: "
                                     f"{e.errors()[0]['msg']}") from None
    cells = expand(spec)
    for cell in cells:  # combinations a knob's own checks refuse (e.g. GPO's momentum feedback without gradient)
        try:
            REGISTRY[cell.optimizer].Params(**dict(cell.params))
        except ValidationError as e:
            raise SweepError(f"{source}, {lines.where(('optimizers', cell.optimizer))}: {cell.optimizer} with "
                             f"{dict(cell.params)}: {e.errors()[0]['msg']}") from None
    if not cells:
        raise SweepError(f"{source}: the grid is empty (no data, optimizer or seed)")
    if not spec.seeds:
        raise SweepError(f"{source}, {lines.where(('seeds',))}: seeds: at least one seed")
    if spec.budget.max_calls is None and spec.budget.max_tokens is None and spec.budget.max_cost is None:
        raise SweepError(f"{source}, {lines.where(('budget',))}: budget: give each run a cap (max_calls, "
                         "max_tokens or max_cost)")
    if spec.max_total is not None:
        for unit in ("max_calls", "max_tokens", "max_cost"):
            cap, each = getattr(spec.max_total, unit), getattr(spec.budget, unit)
            if cap is None:
                continue
            if each is None:
                raise SweepError(f"{source}, {lines.where(('max_total', unit))}: max_total.{unit} needs budget.{unit} "
                                 "per run (each run's cap is what the sweep's cap adds up)")
            if each * len(cells) > cap:
                raise SweepError(f"{source}, {lines.where(('max_total', unit))}: {len(cells)} runs x {each} "
                                 f"({unit.removeprefix('max_')} per run) = {each * len(cells)} is over the sweep's "
                                 f"cap of {cap}; raise max_total.{unit}, lower budget.{unit} or shrink the grid")
    return cells


def sweep_id(spec: SweepSpec) -> str:
    """The same spec is the same sweep: running the file again continues it."""
    canon = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    return "s" + hashlib.sha256(canon.encode()).hexdigest()[:9]


# --- running ----------------------------------------------------------------------------------------------------
def cell_config(spec: SweepSpec, cell: Cell):
    """(RunConfig, Splits) of a cell, as `python -m optimizers run` would make them."""
    from .base import REGISTRY
    from .data import read_table
    from .prepare import prepare_task

    opts = spec.task.model_dump()
    if isinstance(cell.data, str):
        prepared = prepare_task(cell.data, split=spec.split, **opts)
    else:
        d = cell.data
        prepared = prepare_task(read_table(Path(d.file)), name=Path(d.file).name, source=str(Path(d.file).resolve()),
                                input_cols=d.input_cols, label_col=d.label_col, template=d.template,
                                initial_prompt=d.initial_prompt, labels=d.labels, split=spec.split, **opts)
    cfg = prepared.run_config(REGISTRY[cell.optimizer], params=dict(cell.params), seed=cell.seed,
                              task_endpoint=RoleEndpoint(base_url=spec.base_url, model=cell.task_model),
                              optimizer_endpoint=RoleEndpoint(base_url=spec.optimizer_base_url,
                                                              model=cell.optimizer_model),
                              budget=spec.budget, report_splits=spec.report_splits, prices=dict(spec.prices),
                              demo_search=spec.then_demos, cache_dir=spec.cache_dir)
    return cfg, prepared.splits


def plan_sweep(store, spec: SweepSpec, cells: list[Cell], make_runner: Callable[[], Any] | None = None
               ) -> tuple[str, list[tuple[Cell, str]]]:
    """Store the sweep and a run for each cell that has none; (sweep id, the (cell, run id) pairs still to run).
    A finished cell (done, at its budget, or stopped by the user) is not run again; an unfinished one resumes."""
    from .runner import Runner

    sid = sweep_id(spec)
    store.create_sweep(sid, spec.name, spec.model_dump(mode="json"), [c.key for c in cells])
    make = make_runner or (lambda: Runner(store))
    todo = []
    for cell in cells:
        run_id = store.sweep_run(sid, cell.key)
        run = store.get_run(run_id) if run_id else None
        if run is not None and RunStatus(run["status"]).ok:
            continue
        if run is None:
            cfg, splits = cell_config(spec, cell)
            run_id = make().create(cfg, splits)
            store.set_sweep_run(sid, cell.key, run_id)
        todo.append((cell, run_id))
    return sid, todo


def run_sweep(store, spec: SweepSpec, cells: list[Cell], *, on_cell: Callable[[Cell, str, str], None] | None = None,
              runner_factory: Callable[..., Any] | None = None) -> str:
    """Run (or continue) the sweep in this process; returns its id. Cells run `spec.parallel` at a time, every
    endpoint behind one shared concurrency limit (spec.concurrency). on_cell(cell, run_id, status) after each.
    (optimizers.ray_executor runs the same plan on a Ray cluster.)"""
    from concurrent.futures import ThreadPoolExecutor

    from .backend import EndpointLimits
    from .runner import Runner

    limits = EndpointLimits(spec.concurrency)
    make = runner_factory or (lambda: Runner(store, limits=limits))
    sid, todo = plan_sweep(store, spec, cells, make)

    def one(item: tuple[Cell, str]) -> None:
        cell, run_id = item
        result = make().execute(run_id)
        if on_cell:
            on_cell(cell, run_id, str(result.status))

    with ThreadPoolExecutor(max_workers=spec.parallel, thread_name_prefix="sweep") as pool:
        for _ in pool.map(one, todo):
            pass
    return sid


def iter_cells(store, sid: str) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(cell as stored, its run or None) for every cell of a stored sweep, in grid order."""
    for key, run_id in store.sweep_cells(sid):
        yield json.loads(key), (store.get_run(run_id) if run_id else None)
