"""`python -m optimizers`: the same engine as the dashboard, from a terminal.

A contract other tools rely on: `--json` prints one JSON object on the last line of stdout; bad input exits non-zero
with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .budget import Budget, Prices, parse_price
from .data import BUNDLED, DataError, read_table
from .llm import LLMError
from .result import SCORE_DIGITS, RunResult, stored_result
from .status import observed_status


class UsageError(Exception):
    pass


# --- shared pieces --------------------------------------------------------------------------------------------------
def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="a file (CSV, TSV, JSONL, JSON, XLSX, Parquet) or a bundled set: "
                   + ", ".join(BUNDLED))
    p.add_argument("--input-col", action="append", dest="input_cols", help="input column (repeatable)")
    p.add_argument("--label-col", help="label column")
    p.add_argument("--template", help="prompt template with {prompt} and one {column} per input column")
    p.add_argument("--labels", help="comma-separated label set (default: the labels found in the data)")
    p.add_argument("--extraction", choices=["label", "regex", "number", "exact"], help="how answers are read")
    p.add_argument("--regex", help="pattern for --extraction regex (group 1 if present)")
    p.add_argument("--metric", choices=["accuracy", "macro_f1", "exact_match"], default=None)
    p.add_argument("--task-max-tokens", type=int, default=32, help="max tokens of each task-model answer")
    p.add_argument("--constrain-labels", action="store_true", help="llama.cpp only: force a label reply by grammar")
    p.add_argument("--reasoning-tokens", type=int, default=0, metavar="N",
                   help="a reply cut at --task-max-tokens before any answer is asked again with N tokens and its "
                        "last answer read (for prompts that make the model reason first); 0: never")
    p.add_argument("--layout", choices=["user", "system"], default="user",
                   help="where the instruction goes: inside the template's user turn, or as the system message")
    p.add_argument("--demos", type=int, default=0, metavar="K",
                   help="K fixed labelled demonstrations (from train only) before every input")
    p.add_argument("--demo-style", choices=["turns", "inline"], default="turns",
                   help="demonstrations as prior chat turns, or inline above the input")
    p.add_argument("--train", type=float, default=0.5, help="train fraction")
    p.add_argument("--dev", type=float, default=0.25, help="dev fraction")
    p.add_argument("--test", type=float, default=0.25, help="test fraction")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/dev/test split")
    p.add_argument("--max-train", type=int, help="cap on train examples (stratified subsample)")
    p.add_argument("--max-dev", type=int, help="cap on dev examples")
    p.add_argument("--max-test", type=int, help="cap on test examples")


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", help="the task model's OpenAI-compatible endpoint (default: OPENAI_BASE_URL, else "
                   "the embedded model; key: OPENAI_API_KEY)")
    p.add_argument("--model", help="task model (default: PROMPTOPT_TASK_MODEL on an endpoint; embedded: "
                   "PROMPTOPT_MODEL, or a bundled model name or a .gguf path here)")
    p.add_argument("--concurrency", type=int, help="requests in flight at once")
    p.add_argument("--cache-dir", help="response cache folder (default ~/.cache/promptopt/llm)")


def load_task_data(a: argparse.Namespace, initial_prompt: str | None, prompt_flag: str):
    """The task-ready data the arguments name (optimizers.prepare); a bundled set brings its own columns, template,
    labels and prompt, a file needs them as arguments."""
    from .config import SplitConfig
    from .prepare import prepare_task

    if a.data in BUNDLED and not Path(a.data).exists():
        data, name, source = a.data, None, None
    else:
        path = Path(a.data)
        if not path.exists():
            raise UsageError(f"--data: no such file or bundled set {a.data!r} (bundled: {', '.join(BUNDLED)})")
        data, name, source = read_table(path), path.name, str(path.resolve())
        if initial_prompt is None:
            raise UsageError(f"{prompt_flag} is required")
    split = SplitConfig(train=a.train, dev=a.dev, test=a.test, seed=a.split_seed, max_train=a.max_train,
                        max_dev=a.max_dev, max_test=a.max_test)
    prepared = prepare_task(data, name=name, source=source, input_cols=a.input_cols, label_col=a.label_col,
                            template=a.template, initial_prompt=initial_prompt,
                            labels=[s.strip() for s in a.labels.split(",")] if a.labels else None,
                            extraction=a.extraction or "label", regex=a.regex, metric=a.metric,
                            max_tokens=a.task_max_tokens, constrain_labels=a.constrain_labels, split=split,
                            layout=a.layout, demos=a.demos, demo_style=a.demo_style,
                            reasoning_max_tokens=a.reasoning_tokens)
    for w in prepared.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return prepared


def _progress(total: int | None, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=quiet or not sys.stderr.isatty(), leave=False)


# --- commands -------------------------------------------------------------------------------------------------------
def cmd_eval(a: argparse.Namespace) -> int:
    from .backend import open_backend
    from .evaluate import Evaluator
    from .llm import LLM, Meter, open_cache

    prepared = load_task_data(a, a.prompt, "--prompt")
    exs = prepared.examples if a.split == "all" else getattr(prepared.splits, a.split)
    if a.limit:
        exs = exs[: a.limit]
    backend = open_backend(a.base_url, model=a.model, max_concurrency=a.concurrency)
    meter = Meter()
    cache = open_cache(a.cache_dir)
    llm = LLM(backend.endpoint, backend.model, role="task", meter=meter, cache=cache)
    bar = _progress(len(exs), "scoring", a.json)
    res = Evaluator(llm, prepared.task).evaluate(prepared.initial_prompt, exs, progress=bar.update)
    bar.close()
    c = meter.snapshot()
    if a.predictions:
        with open(a.predictions, "w", encoding="utf-8") as f:
            for p in res.predictions:
                f.write(json.dumps(p.as_dict(), ensure_ascii=False) + "\n")
    out = {"score": res.score, "ci_low": res.ci_low, "ci_high": res.ci_high, "metric": res.metric, "n": res.n,
           "split": a.split, **c.as_dict(), "model": llm.model, "embedded": backend.embedded}
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{res.metric} {res.score:.3f}  (95% CI {res.ci_low:.3f}-{res.ci_high:.3f}, n={res.n}, split={a.split})")
        print(f"calls {c.calls}, cache hits {c.cache_hits}, tokens {c.prompt_tokens}+{c.completion_tokens}, "
              f"errors {c.errors}, model {llm.model}{' (embedded)' if backend.embedded else ''}")
    return 0


def _parse_params(items: list[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--param expects NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            params[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            params[k.strip()] = v
    return params


def _store(a: argparse.Namespace):
    from .store import Store

    return Store(a.db)


def _execute(runner, run_id: str, quiet: bool) -> RunResult:
    from .events import CandidateScored, Error, StepDone, Usage

    bar = _progress(None, "optimizing", quiet)
    state = {"best": None, "calls": 0}

    def on_event(seq, ev):
        if isinstance(ev, Error) and ev.where == "budget":  # how the cap is shared: said before the run spends it
            bar.write(f"warning: {ev.message}", file=sys.stderr)
        if isinstance(ev, StepDone):
            state["best"] = ev.best_score
        if isinstance(ev, Usage):
            state["calls"] = ev.calls
        if isinstance(ev, (CandidateScored, StepDone)):
            bar.set_postfix(step=ev.step, best=state["best"], calls=state["calls"], refresh=False)
        bar.update(1)

    try:
        return runner.execute(run_id, on_event=on_event)
    finally:
        bar.close()


def _write_result(result: RunResult, out: str | None) -> None:
    if out:
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        (d / "result.json").write_text(json.dumps(result.model_dump(mode="json"), indent=2, ensure_ascii=False))


def _print_result(r: RunResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(r.model_dump(mode="json", exclude={"config"})))
        return
    print(f"run {r.run_id}: {r.status}{' - ' + r.reason if r.reason else ''}")
    print(f"initial: {r.initial_prompt!r}")
    print(f"best:    {r.best_prompt!r}")
    for split in ("train", "dev", "test"):
        i, b = r.scores["initial"].get(split), r.scores["best"].get(split)
        if i and b:
            print(f"  {split:5} initial {i.score:.3f} [{i.ci[0]:.2f}, {i.ci[1]:.2f}]  ->  best {b.score:.3f}"
                  f" [{b.ci[0]:.2f}, {b.ci[1]:.2f}]  (n={b.n})"
                  + (f"; {r.paired[split].describe()}" if split in r.paired else ""))
    if r.report_error:
        print(f"report incomplete: {r.report_error}")
    print(f"calls {r.calls} (optimization {r.optimization_usage.calls}, report {r.report_usage.calls}; budget "
          f"{Budget(**r.config.get('budget', {})).describe()}), cache hits {r.cache_hits} (saved {r.saved_tokens} "
          f"tokens), tokens {r.prompt_tokens}+{r.completion_tokens}, ${r.cost:.4f}, {r.wall_time_s} s")
    if r.unmetered_calls:
        print(f"note: {r.unmetered_calls} replies came without usage: their tokens were counted locally or at "
              "their upper bound")


def _preset(cls: Any, name: str | None) -> dict[str, Any]:
    if not name:
        return {}
    if name not in cls.presets:
        raise UsageError(f"--preset: {cls.name} has no preset {name!r}; its presets: "
                         f"{', '.join(cls.presets) or 'none'}")
    return dict(cls.presets[name])


def _demo_search(a: argparse.Namespace, prepared: Any) -> dict[str, Any] | None:
    """--then-demos as given; unset, the default of methods.demos.follows_by_default (said on stderr)."""
    if not a.then_demos:
        if a.demo_param:
            raise UsageError("--demo-param needs --then-demos")
        if a.then_demos is False:
            return None
        from .backend import plan_roles
        from .config import RoleEndpoint
        from .methods.demos import follows_by_default

        embedded = plan_roles(RoleEndpoint(base_url=a.base_url, model=a.model))["task"].embedded
        default = follows_by_default(a.optimizer, prepared.task.labels, bool(prepared.task.demos), embedded)
        if default is not None:
            print("note: on the embedded model a demo search follows the optimizer, sized to the budget "
                  "(--no-then-demos: off)", file=sys.stderr)
        return default
    from .methods.demos import DemoParams

    params = _parse_params(a.demo_param)
    try:
        DemoParams(**params)
    except ValueError as e:
        raise UsageError(f"--demo-param: {_short(e)}") from None
    return params


def _report_splits(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in names if x not in ("train", "dev", "test")]
    if bad or not names:
        raise UsageError(f"--report-splits: a comma-separated list of train, dev, test; got {text!r}")
    return names


def _print_estimate(cfg: Any, prepared: Any, as_json: bool) -> int:
    """The whole run's estimate (optimizers.estimate: the optimizer's own loop against an instant model, then the
    report), per role, inside the budget; no call is made."""
    from .backend import plan_roles
    from .estimate import dry_run

    est = dry_run(cfg.optimizer, cfg.params, cfg.task, prepared.splits, cfg.initial_prompt, seed=cfg.seed,
                  demo_search=cfg.demo_search,
                  budget=cfg.budget, report_splits=cfg.report_splits, prices=Prices(dict(cfg.prices)))
    plans = plan_roles(cfg.task_endpoint, cfg.optimizer_endpoint)
    plans["report"] = plans["task"]
    prices = Prices(dict(cfg.prices))
    rows = {}
    for role, r in est.roles.items():
        plan = plans[role]
        cost = 0.0 if plan.embedded else r.cost(prices, plan.model)
        rows[role] = {"model": plan.model, "calls": r.calls, "prompt_tokens": r.prompt_tokens,
                      "max_completion_tokens": r.max_completion_tokens, "max_cost": cost,
                      "price": "free (embedded)" if plan.embedded else prices.source(plan.model)}
    out = {"estimate": rows, "calls": est.calls, "at_least": est.capped, "budget": cfg.budget.describe(),
           "stopped_by_budget": est.stopped_by_budget, "report_skipped": est.report_skipped}
    if as_json:
        print(json.dumps(out))
        return 0
    lead = "at least " if est.capped else ""
    print(f"estimate of the whole run ({cfg.optimizer}, budget {cfg.budget.describe()}): {lead}{est.calls} calls")
    print(f"  {'role':10} {'model':28} {'calls':>7} {'prompt tok':>11} {'max compl tok':>14} {'max $':>10}  price")
    for role, r in rows.items():
        cost = "?" if r["max_cost"] is None else f"{r['max_cost']:.4f}"
        print(f"  {role:10} {r['model'][:28]:28} {r['calls']:>7} {r['prompt_tokens']:>11} "
              f"{r['max_completion_tokens']:>14} {cost:>10}  {r['price']}")
    if est.stopped_by_budget:
        print("the budget stops the optimization early, leaving the report its share")
    if est.report_skipped:
        print(f"warning: the budget cannot pay for the report on {', '.join(est.report_skipped)} "
              "(test is reported first); raise the budget to report on every split")
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from . import methods  # noqa: F401  (registers the optimizers)
    from .base import REGISTRY
    from .config import RoleEndpoint
    from .runner import Runner, check_money_cap

    if a.optimizer not in REGISTRY:
        raise UsageError(f"--optimizer: unknown {a.optimizer!r}; choose one of {', '.join(sorted(REGISTRY))}")
    prepared = load_task_data(a, a.initial_prompt, "--initial-prompt")
    try:
        prices = dict(parse_price(p) for p in a.price or [])
        cfg = prepared.run_config(REGISTRY[a.optimizer], params=_preset(REGISTRY[a.optimizer], a.preset)
                                  | _parse_params(a.param), seed=a.seed,
                                  task_endpoint=RoleEndpoint(base_url=a.base_url, model=a.model),
                                  optimizer_endpoint=RoleEndpoint(base_url=a.optimizer_base_url,
                                                                  model=a.optimizer_model),
                                  max_concurrency=a.concurrency, cache_dir=a.cache_dir, prices=prices,
                                  report_splits=_report_splits(a.report_splits),
                                  demo_search=_demo_search(a, prepared),
                                  budget=Budget(max_calls=a.max_calls, max_tokens=a.max_tokens, max_cost=a.max_cost))
        check_money_cap(cfg)
        if a.dry_run:
            return _print_estimate(cfg, prepared, a.json)
        store = _store(a)
        runner = Runner(store)
        run_id = runner.create(cfg, prepared.splits)
    except ValueError as e:
        raise UsageError(_short(e)) from None
    print(f"run {run_id} stored in {store.path}", file=sys.stderr)
    result = _execute(runner, run_id, a.json)
    _write_result(result, a.out)
    _print_result(result, a.json)
    return 0 if result.status.ok else 1


def cmd_resume(a: argparse.Namespace) -> int:
    from . import methods  # noqa: F401
    from .runner import Runner

    store = _store(a)
    run = _find(store, a.run_id)
    new_budget = {k: v for k, v in (("max_calls", a.max_calls), ("max_tokens", a.max_tokens),
                                    ("max_cost", a.max_cost)) if v is not None}
    if new_budget:
        store.set_budget(run["id"], new_budget)
    result = _execute(Runner(store), run["id"], a.json)
    _write_result(result, a.out)
    _print_result(result, a.json)
    return 0 if result.status.ok else 1


def cmd_worker(a: argparse.Namespace) -> int:
    from . import methods  # noqa: F401
    from .runner import Runner

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = _store(a)
    # a dashboard run outlives its tab: when the endpoint goes down, wait for it and resume by itself
    wait = float(os.environ.get("PROMPTOPT_AUTO_RESUME_S", "3600"))
    Runner(store).execute_until_done(a.run_id, wait=wait)
    return 0


def _find(store, run_id: str) -> dict[str, Any]:
    run = store.get_run(run_id) or store.find_run(run_id)
    if run is None:
        raise UsageError(f"no run {run_id!r} in {store.path}")
    return run


def cmd_runs(a: argparse.Namespace) -> int:
    store = _store(a)
    runs = store.list_runs()
    rows = []
    for r in runs:
        result = stored_result(r)
        rows.append({"id": r["id"], "status": observed_status(r), "optimizer": r["optimizer"],
                     "data_name": r["data_name"], "seed": r["seed"], "created": r["created"],
                     "best_test": result.best_test if result else None})
    if a.json:
        print(json.dumps(rows))
        return 0
    if not runs:
        print(f"no runs in {store.path}")
    import datetime as dt

    for r in rows:
        t = dt.datetime.fromtimestamp(r["created"]).strftime("%Y-%m-%d %H:%M")
        bt = r["best_test"]
        print(f"{r['id']}  {t}  {r['status']:8} {r['optimizer']:9} {r['data_name'] or '':24} "
              f"best test {'-' if bt is None else f'{bt:.{SCORE_DIGITS}f}'}")
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from .export import candidate_rows

    store = _store(a)
    run = _find(store, a.run_id)
    result = stored_result(run)
    if result:
        _print_result(result, a.json)
    else:
        print(f"run {run['id']}: {run['status']} ({store.event_count(run['id'])} events so far)")
    if not a.json:
        rows = candidate_rows(store, run["id"])
        print(f"\n{len(rows)} candidates:")
        for c in rows[: a.top]:
            sc = c["dev_score"] if c["dev_score"] is not None else c["train_score"]
            print(f"  {c['candidate_id']} step {c['step']:>2} {c['origin']:14} "
                  f"{'-' if sc is None else f'{sc:.3f}'}  {c['text'][:90]!r}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from .export import candidate_rows, run_json, to_csv, to_json

    store = _store(a)
    run = _find(store, a.run_id)
    text = to_json(run_json(store, run["id"])) if a.format == "json" else to_csv(candidate_rows(store, run["id"]))
    if a.out:
        Path(a.out).write_text(text, encoding="utf-8")
        print(f"wrote {a.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_optimizers(a: argparse.Namespace) -> int:
    from . import methods  # noqa: F401
    from .base import REGISTRY

    for name, cls in sorted(REGISTRY.items()):
        print(f"{name}: {cls.title} ({cls.paper})")
        for k, v in cls.defaults().items():
            print(f"    {k} = {v!r}  {cls.param_help().get(k, '')}")
    return 0


def _short(e: Exception) -> str:
    s = str(e)
    if "validation error" in s:
        lines = [ln.strip() for ln in s.splitlines()[1:] if ln.strip() and not ln.strip().startswith("For further")]
        return "; ".join(ln.split(" [type=")[0] for ln in lines[:4])
    return s.splitlines()[0] if s else type(e).__name__


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m optimizers", description="PromptOpt: LLM prompt optimization")
    ap.add_argument("--version", action="version", version=__version__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    db_help = "run store (SQLite file; default PROMPTOPT_DB or ~/.local/share/promptopt/runs.sqlite)"

    e = sub.add_parser("eval", help="score one prompt on a split")
    _add_data_args(e)
    _add_backend_args(e)
    e.add_argument("--prompt", help="the instruction to score (default: the bundled set's initial prompt)")
    e.add_argument("--split", choices=["train", "dev", "test", "all"], default="test")
    e.add_argument("--limit", type=int, help="score only the first N examples of the split")
    e.add_argument("--predictions", help="write per-example predictions (JSONL) here")
    e.add_argument("--json", action="store_true", help="one JSON object on the last line of stdout")
    e.set_defaults(fn=cmd_eval)

    r = sub.add_parser("run", help="optimize a prompt and store the run")
    _add_data_args(r)
    _add_backend_args(r)
    r.add_argument("--optimizer", required=True, help="ape, protegi, opro, pe2, gpo or baseline")
    r.add_argument("--initial-prompt", help="starting instruction (default: the bundled set's)")
    r.add_argument("--optimizer-base-url", help="the optimizer model's endpoint (default: "
                   "PROMPTOPT_OPTIMIZER_BASE_URL, else the task model's; key: PROMPTOPT_OPTIMIZER_API_KEY, else the "
                   "task's key on the task's endpoint, else OPENAI_API_KEY)")
    r.add_argument("--optimizer-model", help="model that writes prompts (default: PROMPTOPT_OPTIMIZER_MODEL on an "
                   "endpoint, PROMPTOPT_OPTIMIZER_MODEL_EMBEDDED embedded, else the task model; embedded: a bundled "
                   "model name or a .gguf path, served alongside the task model)")
    r.add_argument("--param", action="append", help="optimizer parameter NAME=VALUE (repeatable; JSON values)")
    r.add_argument("--preset", help="a named parameter set of the optimizer (e.g. paper); --param overrides it")
    r.add_argument("--then-demos", action=argparse.BooleanOptionalAction, default=None,
                   help="after the optimizer, search demonstration sets (from train, scored on dev) for its best "
                        "instruction (optimizer 'demos' runs the search alone); default: on for a classification "
                        "task on the embedded model, sized to the budget, off on an endpoint")
    r.add_argument("--demo-param", action="append",
                   help="parameter of that demo search NAME=VALUE (k, trials; repeatable)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--max-calls", type=int, help="budget: billed LLM calls of the whole run (optimization and report)")
    r.add_argument("--max-tokens", type=int, help="budget: billed tokens (prompt + completion) of the whole run")
    r.add_argument("--max-cost", type=float, help="budget: USD of the whole run (needs each model's price)")
    r.add_argument("--price", action="append", metavar="MODEL=IN,OUT",
                   help="a model's price in USD per 1M input and output tokens (repeatable; overrides the built-in "
                        "table of common hosted models)")
    r.add_argument("--report-splits", default="train,dev,test",
                   help="splits the final report scores the initial and the best prompt on (test is paid first)")
    r.add_argument("--dry-run", action="store_true",
                   help="print the estimate of the whole run (per role: calls, tokens, money) and make no call")
    r.add_argument("--db", help=db_help)
    r.add_argument("--out", help="folder for result.json")
    r.add_argument("--json", action="store_true")
    r.set_defaults(fn=cmd_run)

    for name, fn, hlp in (("resume", cmd_resume, "continue a stopped, paused or crashed run"),
                          ("worker", cmd_worker, argparse.SUPPRESS)):
        p = sub.add_parser(name, help=hlp)
        p.add_argument("run_id")
        p.add_argument("--db", help=db_help)
        if name == "resume":
            p.add_argument("--max-calls", type=int, help="new budget: LLM calls (to continue a run that reached it)")
            p.add_argument("--max-tokens", type=int, help="new budget: tokens")
            p.add_argument("--max-cost", type=float, help="new budget: money")
            p.add_argument("--out", help="folder for result.json")
            p.add_argument("--json", action="store_true")
        p.set_defaults(fn=fn)

    ls = sub.add_parser("runs", help="list stored runs")
    ls.add_argument("--db", help=db_help)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=cmd_runs)

    sh = sub.add_parser("show", help="a run's result and candidates")
    sh.add_argument("run_id")
    sh.add_argument("--db", help=db_help)
    sh.add_argument("--top", type=int, default=20)
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(fn=cmd_show)

    ex = sub.add_parser("export", help="export a run (JSON trajectory or CSV of candidates)")
    ex.add_argument("run_id")
    ex.add_argument("--db", help=db_help)
    ex.add_argument("--format", choices=["json", "csv"], default="json")
    ex.add_argument("--out", help="file (default: stdout)")
    ex.set_defaults(fn=cmd_export)

    op = sub.add_parser("optimizers", help="list optimizers and their paper defaults")
    op.set_defaults(fn=cmd_optimizers)

    sw = sub.add_parser("sweep", help="run (or continue) a sweep file: a grid of runs, then its leaderboard")
    sw.add_argument("file", help="YAML or JSON sweep (see optimizers/sweep.py and sweeps/)")
    sw.add_argument("--db", help=db_help)
    sw.add_argument("--check", action="store_true", help="only check the file and print the grid; no call")
    sw.add_argument("--json", action="store_true", help="print the leaderboard as JSON")
    sw.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="local: runs in this process; ray: each run a Ray task (pip install -r requirements-ray.txt)")
    sw.add_argument("--address", help="the Ray head (default: RAY_ADDRESS, else a local cluster started here)")
    sw.set_defaults(fn=cmd_sweep)

    sr = sub.add_parser("sweep-report", help="a stored sweep's leaderboard and per-knob effects")
    sr.add_argument("sweep_id", nargs="?", help="default: the latest sweep")
    sr.add_argument("--db", help=db_help)
    sr.add_argument("--format", choices=["md", "csv", "json"], default="md")
    sr.set_defaults(fn=cmd_sweep_report)
    return ap


def cmd_sweep(a: argparse.Namespace) -> int:
    from .sweep import SweepError, check, load, run_sweep, sweep_id

    try:
        spec, lines = load(a.file)
        cells = check(spec, lines, a.file)
    except SweepError as e:
        raise UsageError(str(e)) from None
    sid = sweep_id(spec)
    total = spec.budget.describe()
    print(f"sweep {sid} ({spec.name}): {len(cells)} runs, each within {total}, {spec.parallel} at a time",
          file=sys.stderr)
    if a.check:
        for c in cells:
            print(f"  {c.data_name} {c.optimizer} {dict(c.params)} seed {c.seed} task {c.task_model or 'default'} "
                  f"optimizer {c.optimizer_model or 'default'}", file=sys.stderr)
        return 0
    store = _store(a)
    done = [0]

    def on_cell(cell, run_id, status):
        done[0] += 1
        print(f"[{done[0]}] run {run_id} {cell.optimizer} {dict(cell.params)} seed {cell.seed}: {status}",
              file=sys.stderr, flush=True)

    try:
        if a.executor == "ray":
            from .ray_executor import RayError, run_sweep_on_ray

            try:
                _, peak = run_sweep_on_ray(store, str(store.url if store.postgres else store.path), spec, cells,
                                           address=a.address or os.environ.get("RAY_ADDRESS"), on_cell=on_cell)
            except RayError as e:
                raise UsageError(str(e)) from None
            print(f"most requests in flight at once, cluster-wide: {peak or 'none'}", file=sys.stderr)
        else:
            run_sweep(store, spec, cells, on_cell=on_cell)
    except ValueError as e:
        raise UsageError(_short(e)) from None
    a.sweep_id, a.format = sid, "json" if a.json else "md"
    return cmd_sweep_report(a)


def cmd_sweep_report(a: argparse.Namespace) -> int:
    from .leaderboard import as_csv, as_json, knob_effects, leaderboard, markdown

    store = _store(a)
    sweeps = store.list_sweeps()
    sid = a.sweep_id or (sweeps[0]["id"] if sweeps else None)
    if sid is None or store.get_sweep(sid) is None:
        raise UsageError(f"no sweep {a.sweep_id!r} in {store.path}" if a.sweep_id else f"no sweep in {store.path}")
    rows = leaderboard(store, sid)
    if a.format == "json":
        print(as_json(store, sid, rows))
    elif a.format == "csv":
        sys.stdout.write(as_csv(rows))
    else:
        print(f"sweep {sid}\n")
        print(markdown(rows))
        eff = knob_effects(store, sid)
        if eff:
            print("\n| knob | value | runs | mean test score |\n|---|---|---:|---:|")
            for e in eff:
                m = "-" if e["test_mean"] is None else f"{e['test_mean']:.3f}"
                print(f"| {e['knob']} | {e['value']} | {e['runs']} | {m} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .local_model import ModelError
    from .store import StoreError

    logging.basicConfig(level=os.environ.get("PROMPTOPT_LOG", "WARNING"))
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except (UsageError, DataError, LLMError, ModelError, StoreError) as e:
        print(f"error: {_short(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the run is stored; continue it with `python -m optimizers resume RUN_ID`", file=sys.stderr)
        return 130
