"""Task metrics with honest uncertainty: a score on 40 examples is a range, not a number."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence

from scipy import stats

Z95 = 1.959963984540054


def accuracy(correct: Sequence[bool]) -> float:
    return sum(correct) / len(correct) if correct else 0.0


def macro_f1(preds: Sequence[str | None], golds: Sequence[str], labels: Sequence[str] | None = None) -> float:
    """Macro-F1 over the gold label set (a prediction outside it, or None, is a miss for its gold class)."""
    classes = list(labels) if labels else sorted(set(golds))
    if not golds:
        return 0.0
    f1s = []
    for c in classes:
        tp = sum(1 for p, g in zip(preds, golds) if p == c and g == c)
        fp = sum(1 for p, g in zip(preds, golds) if p == c and g != c)
        fn = sum(1 for p, g in zip(preds, golds) if p != c and g == c)
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s) if f1s else 0.0


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval: sane at 0%, 100% and small n, unlike the normal approximation."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo, hi = max(0.0, mid - half), min(1.0, mid + half)
    return (0.0 if k == 0 else lo, 1.0 if k == n else hi)


def resolution(n: int) -> float:
    """Half the width of the 95% interval of an accuracy near 50% on n examples: how far apart two prompts' scores
    must be before a split of this size can tell them apart (40 dev examples: about 15 points)."""
    lo, hi = wilson(n // 2, n)
    return (hi - lo) / 2


def bootstrap_ci(preds: Sequence[str | None], golds: Sequence[str], labels: Sequence[str] | None,
                 n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    n = len(golds)
    if n == 0:
        return (0.0, 1.0)
    rng = random.Random(seed)
    vals = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        vals.append(macro_f1([preds[i] for i in idx], [golds[i] for i in idx], labels))
    vals.sort()
    return (vals[int(0.025 * n_boot)], vals[min(n_boot - 1, int(0.975 * n_boot))])


def score_with_ci(metric: str, preds: Sequence[str | None], golds: Sequence[str], correct: Sequence[bool],
                  labels: Sequence[str] | None = None) -> tuple[float, float, float]:
    """(score, ci_low, ci_high) at 95%."""
    if metric == "macro_f1":
        s = macro_f1(preds, golds, labels)
        lo, hi = bootstrap_ci(preds, golds, labels)
        return s, lo, hi
    k, n = sum(correct), len(correct)
    lo, hi = wilson(k, n)
    return (k / n if n else 0.0), lo, hi


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict[str, float]:
    """Exact McNemar test on paired outcomes: did prompt A and B differ on the same examples beyond chance?"""
    if len(a_correct) != len(b_correct):
        raise ValueError("paired test needs the same examples for both prompts")
    a_only = sum(1 for a, b in zip(a_correct, b_correct) if a and not b)
    b_only = sum(1 for a, b in zip(a_correct, b_correct) if b and not a)
    n = a_only + b_only
    p = 1.0 if n == 0 else float(stats.binomtest(a_only, n, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p_value": p}


def confusion(preds: Sequence[str | None], golds: Sequence[str]) -> dict[str, Counter]:
    """gold -> Counter(prediction); an unparseable prediction is counted as '(none)'."""
    out: dict[str, Counter] = {}
    for p, g in zip(preds, golds):
        out.setdefault(g, Counter())[p if p is not None else "(none)"] += 1
    return out
