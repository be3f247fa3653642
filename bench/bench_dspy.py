"""Peer comparison: DSPy's prompt optimizers (COPRO, MIPROv2 0-shot and with demos, GEPA) from PyPI on PromptOpt's
tasks, with the same model, endpoint, data split, message layout, metric and call budget, scored by PromptOpt's own
evaluator on the same test split (paired: each test example's correctness is written to --json-out).

DSPy is not a PromptOpt dependency and must never touch its pinned packages: run this from a separate venv.

    python3 -m venv /work/venv-dspy
    /work/venv-dspy/bin/pip install -r requirements.txt -r bench/requirements-dspy.txt
    /work/venv-dspy/bin/python bench/bench_dspy.py [--task sentiment] [--optimizers copro,miprov2,miprov2-demos,gepa]
                          [--max-calls 300] [--seed 0] [--adapter template|chat] [--base-url URL --model M]
                          [--split gain --layout system]   # bench_gain.py's split and layout (the gains tables)

A venv that reuses the project's installed packages (no second llama.cpp build) also works:
    python3 -m venv /work/venv-dspy
    echo "$PWD/.venv/lib/python3.11/site-packages" > /work/venv-dspy/lib/python3.11/site-packages/promptopt.pth
    /work/venv-dspy/bin/pip install -r bench/requirements-dspy.txt

How it is kept fair:
- One model server for both tools: the embedded llama.cpp server (started once here, as PromptOpt starts it) or the
  endpoint given by --base-url / OPENAI_BASE_URL. DSPy reaches it through its OpenAI-compatible path (dspy.LM with
  "openai/<alias>" and api_base).
- Calls are counted by a small HTTP forwarder in front of the server that DSPy talks to: every chat completion that
  reaches the server is one call, tokens come from the responses' usage. DSPy has no call budget, so its knobs are
  sized to stay near --max-calls and the forwarder refuses (HTTP 429) any request past the hard cap (--max-calls).
- Same bundled task, template, label set and split as `python -m optimizers run` (train 0.5 / dev 0.25 / test 0.25,
  split seed 0); the metric is PromptOpt's Task.extract + is_correct on the raw reply.
- --adapter template (default): the task model sees exactly PromptOpt's rendered template with the candidate
  instruction in {prompt} (a dspy.ChatAdapter subclass that formats/parses only the task signature; DSPy's own
  meta-prompts keep DSPy's ChatAdapter). --adapter chat: DSPy's stock ChatAdapter for the task too.
- The final instruction of each DSPy run and the initial instruction are scored by optimizers.evaluate.Evaluator on
  the test split (95% CI), outside the budget, as PromptOpt's runs report them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_optimizers import SPLIT_CAPS  # noqa: E402  (same split caps as PromptOpt's runs)

from optimizers.backend import open_backend  # noqa: E402
from optimizers.config import SplitConfig  # noqa: E402
from optimizers.data import Example  # noqa: E402
from optimizers.evaluate import Evaluator  # noqa: E402
from optimizers.llm import LLM, Meter, ResponseCache  # noqa: E402
from optimizers.prepare import prepare_task  # noqa: E402
from optimizers.prompt import Demo, join_prompt  # noqa: E402
from optimizers.task import Task  # noqa: E402

log = logging.getLogger("bench_dspy")

# DSPy knobs sized so a run stays near a 300-call budget on a ~28/16/16 split (see the estimates printed per run);
# scaled linearly for other budgets by size_knobs().
COPRO_KNOBS = {"breadth": 3, "depth": 3, "init_temperature": 1.4}  # 1.4 is COPRO's default
MIPRO_KNOBS = {"num_candidates": 6, "num_trials": 12, "init_temperature": 1.0}  # 1.0 is MIPROv2's default


# --- counting forwarder ---------------------------------------------------------------------------------------------
class CallCounter:
    """Counts what reaches the server; refuses completions past the cap (calls in flight count, as in our Meter)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset(None)

    def reset(self, cap: int | None) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.cap = cap
            self.calls = self.inflight = self.refused = self.errors = self.repeats = 0
            self.prompt_tokens = self.completion_tokens = 0
            self.seen: set[str] = set()
            self.paths: dict[str, int] = {}

    def reserve(self, path: str, body: bytes) -> bool:
        with self.lock:
            self.paths[path] = self.paths.get(path, 0) + 1
            if self.cap is not None and self.calls + self.inflight >= self.cap:
                self.refused += 1
                return False
            self.inflight += 1
            # A repeat: the exact request already sent at temperature 0, which PromptOpt's response cache would have
            # answered without a call (DSPy runs here with cache=False, as the benchmark brief asks).
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                req = {}
            if not req.get("temperature"):
                key = hashlib.sha256(body).hexdigest()
                if key in self.seen:
                    self.repeats += 1
                self.seen.add(key)
            return True

    def done(self, ok: bool, usage: dict | None) -> None:
        with self.lock:
            self.inflight -= 1
            if not ok:
                self.errors += 1
                return
            self.calls += 1
            if usage:
                self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                self.completion_tokens += int(usage.get("completion_tokens") or 0)

    def snapshot(self) -> dict:
        with self.lock:
            return {"calls": self.calls, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens, "refused": self.refused, "errors": self.errors,
                    "repeats": self.repeats, "paths": dict(self.paths)}


def output_cap_as_max_tokens(body: bytes) -> bytes:
    """DSPy 3.4 sends the output cap as `max_completion_tokens`, which llama.cpp's server (and other OpenAI-compatible
    servers) ignore: its task calls then generate until end of text instead of stopping at 32 tokens as PromptOpt's do.
    Renaming it to `max_tokens` gives both tools the same caps."""
    try:
        req = json.loads(body or b"{}")
    except ValueError:
        return body
    if not isinstance(req, dict) or "max_completion_tokens" not in req or "max_tokens" in req:
        return body
    req["max_tokens"] = req.pop("max_completion_tokens")
    return json.dumps(req).encode()


def start_forwarder(upstream: str, counter: CallCounter) -> tuple[ThreadingHTTPServer, str]:
    """A loopback HTTP forwarder to `upstream` (an OpenAI-compatible base URL); returns (server, its base URL)."""
    up = urllib.parse.urlsplit(upstream)
    up_prefix = up.path.rstrip("/")  # e.g. /v1

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _forward(self, method: str) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            path = self.path
            counted = method == "POST" and (path.endswith("/chat/completions") or path.endswith("/completions"))
            if counted:
                body = output_cap_as_max_tokens(body)
            if counted and not counter.reserve(path, body):
                msg = json.dumps({"error": {"message": f"call budget reached ({counter.cap} calls): refused by the "
                                            f"benchmark's counting forwarder", "type": "budget", "code": 429}})
                self._reply(429, msg.encode(), "application/json")
                return
            # The client's path starts with the forwarder's /v1; map it onto the upstream's prefix.
            rel = path[len("/v1"):] if path.startswith("/v1") else path
            conn_cls = http.client.HTTPSConnection if up.scheme == "https" else http.client.HTTPConnection
            conn = conn_cls(up.hostname, up.port, timeout=900)
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() in ("content-type", "authorization", "accept", "api-key")}
            ok, usage = False, None
            try:
                conn.request(method, up_prefix + rel, body=body or None, headers=headers)
                r = conn.getresponse()
                data = r.read()
                ok = 200 <= r.status < 300
                if counted and ok:
                    try:
                        usage = json.loads(data).get("usage")
                    except ValueError:
                        usage = None
                self._reply(r.status, data, r.getheader("Content-Type") or "application/json")
            except OSError as e:
                self._reply(502, json.dumps({"error": {"message": f"forwarder: {e}"}}).encode(), "application/json")
            finally:
                conn.close()
                if counted:
                    counter.done(ok, usage)

        def _reply(self, status: int, data: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            self._forward("POST")

        def do_GET(self) -> None:
            self._forward("GET")

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True, name="forwarder").start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"


# --- the task as a DSPy program -------------------------------------------------------------------------------------
def _snake(s: str) -> str:
    s = re.sub(r"[^0-9A-Za-z]+", "_", s.strip()).strip("_").lower()
    return {"a": "answer", "q": "question"}.get(s, s) or "answer"


def output_field_name(template: str, input_cols: list[str]) -> str:
    """The template's answer cue as a field name: '...\\nSentiment:' -> 'sentiment', '\\nA:' -> 'answer'."""
    last = template.rstrip().splitlines()[-1] if template.strip() else ""
    m = re.fullmatch(r"\s*([A-Za-z][\w ]*):\s*", last)
    name = _snake(m.group(1)) if m else "answer"
    return name if name not in input_cols else name + "_out"


def build_program(dspy, task: Task, initial_prompt: str, out_name: str):
    # Plain fields named after the template's columns and answer cue ('text' -> 'sentiment'): DSPy 3.4 ignores field
    # prefixes, and a description would add words the PromptOpt template does not have.
    fields = {c: (str, dspy.InputField()) for c in task.input_cols}
    fields[out_name] = (str, dspy.OutputField())
    sig = dspy.Signature(fields, initial_prompt)
    return dspy.Predict(sig)


def demos_of(task: Task, demos, out_name: str) -> list[Demo]:
    """DSPy's demos (labelled or bootstrapped dspy.Examples) as PromptOpt demonstrations; a bootstrapped demo's reply
    becomes the label it names, so both tools show a demo the same way."""
    got = []
    for n, d in enumerate(demos or []):
        d = d.toDict() if hasattr(d, "toDict") else dict(d)
        reply = str(d.get(out_name, ""))
        label = task.extract(reply) or reply.strip()
        got.append(Demo(f"dspy{n}", {c: str(d.get(c, "")) for c in task.input_cols}, label))
    return got


def make_template_adapter(dspy, task: Task, out_name: str):
    """DSPy's ChatAdapter, except that the task signature is rendered by PromptOpt's Task.messages (its template and
    layout; demos as PromptOpt renders a prompt's demonstrations) and the whole reply becomes the output field."""

    class TemplateAdapter(dspy.ChatAdapter):
        def _is_task(self, signature) -> bool:
            return list(signature.input_fields) == list(task.input_cols) and list(signature.output_fields) == [out_name]

        def format(self, signature, demos, inputs):
            if not self._is_task(signature):
                return super().format(signature, demos, inputs)
            ex = Example("dspy", {c: str(inputs[c]) for c in task.input_cols}, "")
            return task.messages(join_prompt(signature.instructions, demos_of(task, demos, out_name)), ex)

        def parse(self, signature, completion):
            if not self._is_task(signature):
                return super().parse(signature, completion)
            return {out_name: completion}

    return TemplateAdapter()


def to_dspy(dspy, exs: list[Example], input_cols: list[str], out_name: str):
    return [dspy.Example(**ex.fields, **{out_name: ex.label}).with_inputs(*input_cols) for ex in exs]


# --- knobs and estimates --------------------------------------------------------------------------------------------
def copro_estimate(breadth: int, depth: int, n_train: int) -> int:
    # depth rounds of `breadth` candidates on the whole trainset (round 1: breadth-1 proposals + the initial one),
    # plus one proposal request per generated candidate (DSPy sends n=k as k requests).
    return depth * breadth * n_train + (breadth - 1) + (depth - 1) * breadth


def mipro_estimate(num_candidates: int, num_trials: int, n_train: int, n_dev: int) -> int:
    # bootstrap (3 demo sets per candidate set minus the 2 that need no calls, ~5 calls each to find up to 3
    # passing traces), data summary (<= 1 + ceil(train/10)), program summary (2), one proposal per candidate,
    # full dev evaluation of the default program and of every trial.
    boot = max(num_candidates - 2, 0) * 5
    summary = 1 + -(-n_train // 10) + 2
    return boot + summary + num_candidates + n_dev * (1 + num_trials)


def gepa_metric_calls(max_calls: int, n_dev: int) -> int:
    """GEPA's metric-call budget that leaves room under the hard cap for its reflection calls (about one per 7 metric
    calls: two minibatches of 3 and a share of the full dev evaluations) and for one full dev evaluation, which GEPA
    starts whenever the budget is not yet spent and finishes past it."""
    return max(1, max_calls - -(-max_calls // 7) - n_dev)


def size_knobs(max_calls: int, n_train: int, n_dev: int) -> tuple[dict, dict]:
    copro = dict(COPRO_KNOBS)
    while copro_estimate(copro["breadth"], copro["depth"], n_train) > max_calls and copro["depth"] > 1:
        copro["depth"] -= 1
    while copro_estimate(copro["breadth"], copro["depth"], n_train) > max_calls and copro["breadth"] > 2:
        copro["breadth"] -= 1
    while copro_estimate(copro["breadth"], copro["depth"] + 1, n_train) <= max_calls * 0.95:
        copro["depth"] += 1
    mipro = dict(MIPRO_KNOBS)
    while mipro_estimate(mipro["num_candidates"], mipro["num_trials"], n_train, n_dev) > max_calls * 0.95 \
            and mipro["num_trials"] > 2:
        mipro["num_trials"] -= 1
    while mipro_estimate(mipro["num_candidates"], mipro["num_trials"] + 1, n_train, n_dev) <= max_calls * 0.9:
        mipro["num_trials"] += 1
    return copro, mipro


# --- main -----------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sentiment", help="a bundled set")
    ap.add_argument("--optimizers", default="copro,miprov2")
    ap.add_argument("--max-calls", type=int, default=300, help="call budget of each optimization (hard cap)")
    ap.add_argument("--seed", type=int, default=0, help="DSPy optimizer seed (MIPROv2) and our split seed is 0")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--max-train", type=int, default=SPLIT_CAPS["max_train"])
    ap.add_argument("--max-dev", type=int, default=SPLIT_CAPS["max_dev"])
    ap.add_argument("--max-test", type=int, default=SPLIT_CAPS["max_test"])
    ap.add_argument("--split", choices=["default", "gain"], default="default",
                    help="gain: bench_gain.py's split (the headroom rows' test examples; caps 126/40/126)")
    ap.add_argument("--layout", choices=["user", "system"], default="user", help="where the instruction goes")
    ap.add_argument("--adapter", choices=["template", "chat"], default="template")
    ap.add_argument("--base-url", help="OpenAI-compatible endpoint (default: OPENAI_BASE_URL, else the embedded model)")
    ap.add_argument("--model", help="model name at the endpoint (default: the backend's)")
    ap.add_argument("--threads", type=int, default=2, help="DSPy evaluation threads (PromptOpt: 2 on llama.cpp)")
    ap.add_argument("--copro", help="COPRO knobs as JSON, e.g. '{\"breadth\": 3, \"depth\": 3}'")
    ap.add_argument("--mipro", help="MIPROv2 knobs as JSON, e.g. '{\"num_candidates\": 6, \"num_trials\": 12}'")
    ap.add_argument("--gepa", help="GEPA knobs as JSON, e.g. '{\"max_metric_calls\": 250}'")
    ap.add_argument("--json-out", help="also write the rows (with full instructions) to this JSON file")
    ap.add_argument("--test-cache", help="response cache folder for the test-split scoring (emptied first, then kept)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    import dspy  # from the separate venv

    if a.split == "gain":  # the same train/dev/test examples as bench_gain.py's arms
        from bench_gain import fractions

        tr, dv, te = fractions(a.task)
        split = SplitConfig(train=tr, dev=dv, test=te, seed=a.split_seed, max_train=a.max_train, max_dev=40,
                            max_test=a.max_test)
    else:
        split = SplitConfig(seed=a.split_seed, max_train=a.max_train, max_dev=a.max_dev, max_test=a.max_test)
    prepared = prepare_task(a.task, split=split, layout=a.layout)
    task, splits = prepared.task, prepared.splits
    out_name = output_field_name(task.template, task.input_cols)

    t_server = time.perf_counter()
    backend = open_backend(a.base_url)  # starts the embedded llama.cpp server once (or uses the endpoint)
    server_s = time.perf_counter() - t_server
    model = a.model or backend.model
    counter = CallCounter()
    fwd, fwd_url = start_forwarder(backend.endpoint.base_url, counter)
    api_key = "local" if backend.embedded else (os.environ.get("OPENAI_API_KEY") or "none")
    print(f"# server {backend.endpoint.base_url} (model {model}, ready in {server_s:.1f} s); forwarder {fwd_url}; "
          f"splits {splits.sizes()}; output field {out_name!r}", file=sys.stderr, flush=True)

    # Task model: our task's request settings (temperature 0, max_tokens 32, seed 0). Prompt model: our optimizer
    # defaults (temperature 0.7, 512 tokens); DSPy's optimizers override the temperature per call with their own.
    # num_retries=0: a 429 from the forwarder is final, not retried with backoff.
    common = dict(api_base=fwd_url, api_key=api_key, cache=False, num_retries=0)
    task_lm = dspy.LM(f"openai/{model}", temperature=task.temperature, max_tokens=task.max_tokens, seed=0, **common)
    prompt_lm = dspy.LM(f"openai/{model}", temperature=0.7, max_tokens=512, **common)
    adapter = make_template_adapter(dspy, task, out_name) if a.adapter == "template" else dspy.ChatAdapter()
    # max_errors: a reply DSPy cannot parse is a wrong answer, not a reason to stop (COPRO passes eval_kwargs both to
    # Evaluate() and to its call, which refuses max_errors, so it is set here).
    dspy.configure(lm=task_lm, adapter=adapter, max_errors=10**6)

    trainset = to_dspy(dspy, splits.train, task.input_cols, out_name)
    devset = to_dspy(dspy, splits.dev, task.input_cols, out_name)

    def metric(example, pred, trace=None, *args, **kwargs) -> float:
        raw = getattr(pred, out_name, None)
        got = task.extract("" if raw is None else str(raw))
        return 1.0 if task.is_correct(got, getattr(example, out_name)) else 0.0

    def feedback_metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
        """GEPA's metric: the score and a sentence of feedback, as GEPA's tutorials write for classification."""
        raw = getattr(pred, out_name, None)
        got = task.extract("" if raw is None else str(raw))
        want = getattr(gold, out_name)
        ok = task.is_correct(got, want)
        fb = (f"Correct: the answer is {want}." if ok else
              f"Wrong: the model answered {got!r} (reply {str(raw)[:80]!r}); the correct answer is {want}.")
        return dspy.Prediction(score=1.0 if ok else 0.0, feedback=fb)

    # Our evaluator on the test split: straight to the server (not through the forwarder: outside the budget, as
    # PromptOpt's report scores are). The cache starts empty so every scored example is a real call; a --test-cache
    # folder is kept so bench_paired.py re-reads the same answers for its paired test.
    if a.test_cache and Path(a.test_cache).exists():
        shutil.rmtree(a.test_cache)
    cache = ResponseCache(a.test_cache or tempfile.mkdtemp(prefix="promptopt-bench-dspy-cache-"))
    ev_meter = Meter()
    evaluator = Evaluator(LLM(backend.endpoint, model, role="task", meter=ev_meter, cache=cache), task)
    initial = prepared.initial_prompt
    init_res = evaluator.evaluate(initial, splits.test)

    copro_knobs, mipro_knobs = size_knobs(a.max_calls, len(trainset), len(devset))
    if a.copro:
        copro_knobs.update(json.loads(a.copro))
    if a.mipro:
        mipro_knobs.update(json.loads(a.mipro))

    rows = []
    for name in [s.strip().lower() for s in a.optimizers.split(",") if s.strip()]:
        program = build_program(dspy, task, initial, out_name)
        counter.reset(a.max_calls)
        status, reason, sel = "done", "", None
        t0 = time.perf_counter()
        best = None
        try:
            if name == "copro":
                knobs = copro_knobs
                est = copro_estimate(knobs["breadth"], knobs["depth"], len(trainset))
                print(f"# copro {knobs}: ~{est} calls estimated", file=sys.stderr, flush=True)
                opt = dspy.COPRO(prompt_model=prompt_lm, metric=metric, breadth=knobs["breadth"],
                                 depth=knobs["depth"], init_temperature=knobs["init_temperature"])
                # COPRO prints the prompt model's history (inspect_history) to stdout: keep stdout for the table.
                with contextlib.redirect_stdout(sys.stderr):
                    best = opt.compile(program, trainset=trainset,
                                       eval_kwargs={"num_threads": a.threads, "display_progress": False})
                cands = getattr(best, "candidate_programs", None) or []
                sel = (cands[0]["score"] / 100.0 if cands else None), "train"  # dspy.Evaluate scores in %
            elif name in ("miprov2", "mipro", "miprov2-demos"):
                knobs = dict(mipro_knobs)
                if name == "miprov2-demos":  # MIPROv2's own defaults: up to 4 bootstrapped + 4 labelled demos
                    knobs.update(max_bootstrapped_demos=4, max_labeled_demos=4)
                est = mipro_estimate(knobs["num_candidates"], knobs["num_trials"], len(trainset), len(devset))
                print(f"# {name} {knobs}: ~{est} calls estimated", file=sys.stderr, flush=True)
                opt = dspy.MIPROv2(metric=metric, prompt_model=prompt_lm, task_model=task_lm, auto=None,
                                   num_candidates=knobs["num_candidates"],
                                   max_bootstrapped_demos=knobs.get("max_bootstrapped_demos", 0),
                                   max_labeled_demos=knobs.get("max_labeled_demos", 0), num_threads=a.threads,
                                   max_errors=10**6, seed=a.seed, init_temperature=knobs["init_temperature"],
                                   verbose=False)
                with contextlib.redirect_stdout(sys.stderr):
                    best = opt.compile(program, trainset=trainset, valset=devset, num_trials=knobs["num_trials"],
                                       minibatch=False)
                score = getattr(best, "score", None)
                sel = (score / 100.0 if score is not None else None), "dev"  # dspy.Evaluate scores in %
            elif name == "gepa":
                # GEPA's budget is metric calls (task-model replies); its reflection calls come on top, about one
                # per two minibatches of 3, so the metric budget leaves them room under the hard cap.
                knobs = {"max_metric_calls": gepa_metric_calls(a.max_calls, len(devset)), "reflection_minibatch_size": 3}
                if a.gepa:
                    knobs.update(json.loads(a.gepa))
                print(f"# gepa {knobs}", file=sys.stderr, flush=True)
                opt = dspy.GEPA(metric=feedback_metric, reflection_lm=prompt_lm, num_threads=a.threads,
                                seed=a.seed, track_stats=True, **knobs)
                with contextlib.redirect_stdout(sys.stderr):
                    best = opt.compile(program, trainset=trainset, valset=devset)
                res = getattr(best, "detailed_results", None)
                sel = ((max(res.val_aggregate_scores) if res is not None and res.val_aggregate_scores else None),
                       "dev")
            else:
                raise SystemExit(f"unknown optimizer {name!r} (copro, miprov2, miprov2-demos, gepa)")
        except Exception as e:  # report it in the table: the reason is the point of a peer benchmark
            status, reason = "failed", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            log.exception("%s failed", name)
        wall = time.perf_counter() - t0
        usage = counter.snapshot()
        if usage["refused"]:
            status = "budget" if status == "done" else status
        final = None
        if best is not None:
            pred0 = best.predictors()[0]
            final = join_prompt(pred0.signature.instructions, demos_of(task, pred0.demos, out_name))
        best_res = evaluator.evaluate(final, splits.test) if final is not None else None
        label = {"copro": "COPRO", "gepa": "GEPA", "miprov2-demos": "MIPROv2 (with demos)"}.get(name,
                                                                                             "MIPROv2 (0-shot)")
        rows.append({"task": a.task, "optimizer": f"DSPy {label}", "name": name,
                     "knobs": knobs, "initial": init_res, "best": best_res, "selection": sel, "usage": usage,
                     "wall": wall, "status": status, "reason": reason, "final": final})
        print(f"# {name}: {status} {reason} calls {usage['calls']} refused {usage['refused']} repeats "
              f"{usage['repeats']} errors {usage['errors']} paths {usage['paths']} wall {wall:.0f}s "
              f"test {best_res.score if best_res else None} final {final!r}", file=sys.stderr, flush=True)

    fwd.shutdown()

    def fmt(r):
        return f"{r.score:.3f} [{r.ci_low:.2f}, {r.ci_high:.2f}]" if r is not None else "-"

    def short(s: str | None, n: int = 160) -> str:
        if s is None:
            return "-"
        s = " ".join(s.split()).replace("|", "\\|")
        return s if len(s) <= n else s[: n - 3] + "..."

    cpu = _cpu_name()
    print(f"Machine: {os.cpu_count()} cores ({cpu}), {platform.machine()}, Python {platform.python_version()}; "
          f"dspy {dspy.__version__}; {time.strftime('%Y-%m-%d')}; budget {a.max_calls} calls (hard cap), seed "
          f"{a.seed}; adapter {a.adapter}; model {model}; endpoint: "
          f"{'embedded llama.cpp server' if backend.embedded else backend.endpoint.base_url}")
    print()
    print("| task | tool / optimizer | test initial [95% CI] | test best [95% CI] | n test | best selection score | "
          "opt. calls (repeats) | opt. tokens | wall s | status | knobs | final instruction |")
    print("|---|---|---|---|---:|---|---:|---:|---:|---|---|---|")
    for r in rows:
        u, sel = r["usage"], r["selection"]
        sel_s = f"{sel[0]:.3f} ({sel[1]})" if sel and sel[0] is not None else "-"
        knobs = ", ".join(f"{k}={v}" for k, v in r["knobs"].items())
        st = r["status"] + (f": {short(r['reason'], 80)}" if r["reason"] else "") + (
            f" ({u['refused']} refused)" if u["refused"] else "")
        print(f"| {r['task']} | {r['optimizer']} | {fmt(r['initial'])} | {fmt(r['best'])} | {r['initial'].n} | "
              f"{sel_s} | {u['calls']} ({u['repeats']}) | {u['prompt_tokens'] + u['completion_tokens']:,} | "
              f"{r['wall']:.0f} | {st} | {knobs} | {short(r['final'])} |")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps([{
            **{k: v for k, v in r.items() if k not in ("initial", "best")},
            "initial": {"score": r["initial"].score, "ci": [r["initial"].ci_low, r["initial"].ci_high]},
            "n_test": r["initial"].n,
            "split": {"seed": a.split_seed, "max_train": a.max_train, "max_dev": a.max_dev, "max_test": a.max_test},
            "best": ({"score": r["best"].score, "ci": [r["best"].ci_low, r["best"].ci_high]} if r["best"] else None),
            # per test example, for the paired test against the initial prompt (bench/run_gains.py)
            "initial_correct": {p.example_id: p.correct for p in r["initial"].predictions},
            "best_correct": ({p.example_id: p.correct for p in r["best"].predictions} if r["best"] else None),
            "best_preds": ({p.example_id: p.pred for p in r["best"].predictions} if r["best"] else None),
        } for r in rows], indent=2, default=str))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
