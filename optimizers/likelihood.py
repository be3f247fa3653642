"""Log-likelihood scoring (APE's official default score, adapted to chat endpoints): how likely the task model is to
start its answer with the gold label, given the instruction and the input.

The official code asks a completions endpoint to echo the prompt with the gold output appended and averages the
output tokens' log-probabilities. Chat endpoints cannot echo, so we ask for ONE generated token with its top 20
alternatives (logprobs=True, top_logprobs=20, max_tokens=1, temperature 0) and look for the gold label's first token
among them, ignoring case and surrounding spaces; a gold label that is not among them gets a floor (-20 by default).
The prompt's score is the mean over examples (higher is better, 0 is the maximum).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .data import Example
from .evaluate import EvalResult, Prediction
from .lm import LanguageModel
from .task import Task

FLOOR = -20.0
TOP_LOGPROBS = 20
METRIC = "log_likelihood"


class LikelihoodUnavailable(RuntimeError):
    """The endpoint returned no log-probabilities, so the likelihood score cannot be computed."""


def _norm(token: str) -> str:
    t = unicodedata.normalize("NFKC", token or "").strip().lower()
    return t.lstrip("\u2581\u0120")  # SentencePiece / GPT-2 space markers, if an endpoint leaks them


def gold_logprob(top: Sequence[dict], gold: str, floor: float = FLOOR) -> tuple[float, str | None]:
    """The best log-probability among the top tokens that begin the gold label (case/space-insensitive).

    A token matches when its normalised text is a non-empty prefix of the normalised gold label ("Pos", " positive"
    and "POSITIVE" all begin "positive"). Returns (logprob, matched token) or (floor, None)."""
    g = _norm(gold)
    best: tuple[float, str | None] = (floor, None)
    if not g:
        return best
    for alt in top:
        tok = _norm(alt.get("token") or "")
        lp = alt.get("logprob")
        if tok and lp is not None and g.startswith(tok) and lp > best[0]:
            best = (max(float(lp), floor), alt.get("token"))
    return best


@dataclass
class LikelihoodResult(EvalResult):
    """An evaluation whose score is the mean gold log-probability; `correct` is whether the greedy token begins the
    gold label."""

    logprobs: list[float] = field(default_factory=list)


def _predict(llm: LanguageModel, task: Task, prompt: str, ex: Example, floor: float) -> tuple[float, Prediction]:
    comp = llm.complete(task.messages(prompt, ex), logprobs=True, top_logprobs=TOP_LOGPROBS, max_tokens=1,
                        temperature=0, seed=0)
    if not comp.logprobs:
        raise LikelihoodUnavailable(
            f"the endpoint returned no log-probabilities for model {llm.model!r} (it may not support "
            "logprobs/top_logprobs on chat completions); use score_method=\"accuracy\" instead")
    first = comp.logprobs[0]
    top = list(first.get("top") or [])
    if not any(a.get("token") == first.get("token") for a in top):
        top.append({"token": first.get("token"), "logprob": first.get("logprob")})
    lp, matched = gold_logprob(top, ex.label, floor)
    best_lp = max((a["logprob"] for a in top if a.get("logprob") is not None), default=floor)
    correct = matched is not None and lp >= best_lp  # the greedy first token begins the gold label
    raw = first.get("token") or comp.text
    pred = Prediction(ex.id, raw, matched, ex.label, correct, comp.cached, comp.finish_reason, comp.prompt_tokens,
                      comp.completion_tokens)
    return lp, pred


def score(llm: LanguageModel, task: Task, prompt: str, examples: Sequence[Example], *, floor: float = FLOOR,
          max_workers: int = 1) -> LikelihoodResult:
    """Mean gold-label log-probability of `prompt` over `examples`; order of results follows `examples`."""
    if max_workers <= 1 or len(examples) <= 1:
        out = [_predict(llm, task, prompt, ex, floor) for ex in examples]
    else:
        with ThreadPoolExecutor(max_workers, thread_name_prefix="loglik") as pool:
            futs = [pool.submit(_predict, llm, task, prompt, ex, floor) for ex in examples]
            try:
                out = [f.result() for f in futs]
            except BaseException:
                for f in futs:
                    f.cancel()
                raise
    lps = [lp for lp, _ in out]
    mean, lo, hi = mean_ci(lps)
    return LikelihoodResult(prompt, METRIC, mean, lo, hi, [p for _, p in out], logprobs=lps)


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean with a normal-approximation 95% interval (the interval collapses to the mean for n < 2)."""
    if not values:
        return 0.0, 0.0, 0.0
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, m, m
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = 1.96 * sd / math.sqrt(n)
    return m, m - half, m + half
