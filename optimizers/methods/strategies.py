"""Best-arm identification: which candidate prompts deserve the next examples, and which survive. ProTeGi's four
selectors (UCB / UCB-E, successive rejects, successive halving, brute force; microsoft/LMOps) and APE's UCB1 rule
(keirp/automatic_prompt_engineer). Arms are indices and rewards are numbers: nothing here knows what a prompt is, so
each method keeps its own events and the unit tests drive the bandits with tables.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..events import Event

# A `pull(arms, k)` generator scores the given arms on k freshly drawn examples (shared by the arms) and returns one
# list of 0/1 rewards per arm; ProTeGi's pull scores through the task model, the unit tests pass a table.
Pull = Callable[[list[int], int], Generator[Event, None, list[list[bool]]]]


@dataclass
class BanditResult:
    method: str
    sums: list[float]
    counts: list[int]
    ucb: list[float | None] | None = None  # the last upper bounds computed (ucb / ucb-e)
    ranks: list[int] | None = None  # sr / sh: elimination order, higher survived longer
    history: list[dict[str, Any]] = field(default_factory=list)  # per round: arms pulled, examples each

    def means(self) -> list[float]:
        """Empirical mean per arm; 0 for an arm never pulled (as in the official code)."""
        return [s / n if n else 0.0 for s, n in zip(self.sums, self.counts, strict=True)]

    def order(self) -> list[int]:
        """Arms best first: by elimination rank (sr/sh) then mean, then by evidence; ties keep pool order."""
        means = self.means()
        ranks = self.ranks or [0] * len(means)
        return sorted(range(len(means)), key=lambda i: (-ranks[i], -means[i], -self.counts[i], i))


def top_arms(values: Sequence[float], arms: Iterable[int], k: int, tie: Callable[[int], float]) -> list[int]:
    """The k arms with the highest value (ties broken by `tie`), in index order."""
    return sorted(sorted(arms, key=lambda i: (-values[i], tie(i)))[:k])


# --- ProTeGi: UCB / UCB-E, successive rejects, successive halving, brute force --------------------------------------

def ucb_values(sums: Sequence[float], counts: Sequence[int], t: int, c: float, mode: str = "ucb") -> list[float]:
    """Upper bounds: mean + c*sqrt(ln t / n) ("ucb") or mean + c*sqrt(c / n) ("ucb-e"), n counted in examples
    (plus 1e-3, so an arm never pulled gets a very large bonus), as in the official UCBBandits."""
    out = []
    for s, n in zip(sums, counts, strict=True):
        mean = s / n if n else 0.0
        nn = n + 1e-3
        bonus = math.sqrt(math.log(t) / nn) if mode == "ucb" else math.sqrt(c / nn)
        out.append(mean + c * bonus)
    return out


def choose_ucb(sums: Sequence[float], counts: Sequence[int], t: int, k: int, c: float, mode: str,
               rng: random.Random) -> tuple[list[int], list[float] | None]:
    """The k arms with the highest upper bound (random when nothing was pulled yet); ties broken at random."""
    n = len(sums)
    k = min(k, n)
    if sum(counts) == 0:
        return sorted(rng.sample(range(n), k)), None
    vals = ucb_values(sums, counts, t, c, mode)
    tie = [rng.random() for _ in range(n)]
    return top_arms(vals, range(n), k, tie.__getitem__), vals


def ucb_bandit(n_arms: int, pull: Pull, *, rounds: int, per_round: int, samples: int, c: float, mode: str,
               rng: random.Random) -> Generator[Event, None, BanditResult]:
    """UCB / UCB-E: each round pulls the per_round arms with the highest upper bound on `samples` new examples.
    t is the 1-based round number (the official code passes the 0-based index, so its second round has no bonus)."""
    res = BanditResult(mode, [0.0] * n_arms, [0] * n_arms)
    for r in range(rounds):
        arms, vals = choose_ucb(res.sums, res.counts, r + 1, per_round, c, mode, rng)
        if vals is not None:
            res.ucb = list(vals)
        rewards = yield from pull(arms, samples)
        for a, rw in zip(arms, rewards, strict=True):
            res.sums[a] += sum(rw)
            res.counts[a] += len(rw)
        res.history.append({"round": r, "arms": arms, "examples": samples})
    res.ucb = ucb_values(res.sums, res.counts, max(rounds, 1) + 1, c, mode)  # the bounds a next round would use
    return res


def sr_schedule(n_arms: int, keep: int, budget: int) -> list[int]:
    """Successive Rejects (Audibert & Bubeck 2010) as in the official code: K = n - keep phases; after phase k each
    surviving arm has about n_k = (budget - K) / (logbar(K) * (K + 1 - k)) samples; at least 4 new per phase.
    As in the code, the formula counts K + 1 - k arms while K + keep - k + 1 are alive, so with keep > 1 it spends
    more than `budget` (reused results cost nothing)."""
    K = n_arms - keep
    if K <= 0:
        return []
    logbar = 0.5 + sum(1.0 / i for i in range(2, K + 1))
    out, prev = [], 0.0
    for k in range(1, K + 1):
        nk = (1.0 / logbar) * ((budget - K) / (K + 1 - k))
        out.append(max(4, int(nk - prev)))
        prev = nk
    return out


def successive_rejects(n_arms: int, pull: Pull, *, keep: int, budget: int,
                       rng: random.Random) -> Generator[Event, None, BanditResult]:
    """Each phase pulls every surviving arm on new examples and rejects exactly one: the lowest cumulative mean."""
    res = BanditResult("sr", [0.0] * n_arms, [0] * n_arms, ranks=[0] * n_arms)
    alive = list(range(n_arms))
    for phase, k in enumerate(sr_schedule(n_arms, keep, budget), start=1):
        rewards = yield from pull(list(alive), k)
        for a, rw in zip(alive, rewards, strict=True):
            res.sums[a] += sum(rw)
            res.counts[a] += len(rw)
        means = res.means()
        low = min(means[a] for a in alive)
        worst = rng.choice([a for a in alive if means[a] == low])
        alive.remove(worst)
        res.ranks[worst] = phase
        res.history.append({"round": phase - 1, "arms": sorted(set(alive) | {worst}), "examples": k,
                            "rejected": worst})
    top = len(res.history) + 1
    for a in alive:
        res.ranks[a] = top
    return res


def successive_halving(n_arms: int, pull: Pull, *, keep: int, budget: int,
                       rng: random.Random) -> Generator[Event, None, BanditResult]:
    """Successive Halving as in the official code: ceil(log2 n) rounds of floor(budget / (|S| ceil(log2 n)))
    examples; arms below the round's mean score are dropped. Ours: it stops once `keep` arms are left and never
    drops below `keep` (then the best `keep` of the round survive), which the official code left as a TODO."""
    res = BanditResult("sh", [0.0] * n_arms, [0] * n_arms, ranks=[0] * n_arms)
    alive = list(range(n_arms))
    n_rounds = math.ceil(math.log2(n_arms)) if n_arms > 1 else 0
    for r in range(n_rounds):
        if len(alive) <= keep:
            break
        k = max(1, budget // (len(alive) * n_rounds))
        rewards = yield from pull(list(alive), k)
        scores = {}
        for a, rw in zip(alive, rewards, strict=True):
            res.sums[a] += sum(rw)
            res.counts[a] += len(rw)
            scores[a] = sum(rw) / len(rw) if rw else 0.0
        avg = sum(scores.values()) / len(scores)
        survivors = [a for a in alive if scores[a] >= avg]
        if len(survivors) < keep:
            tie = {a: rng.random() for a in alive}
            survivors = sorted(alive, key=lambda a: (-scores[a], tie[a]))[:keep]
        for a in alive:
            if a not in survivors:
                res.ranks[a] = r + 1
        res.history.append({"round": r, "arms": list(alive), "examples": k,
                            "rejected": [a for a in alive if a not in survivors]})
        alive = [a for a in alive if a in survivors]
    top = len(res.history) + 1
    for a in alive:
        res.ranks[a] = top
    return res


def brute_force(n_arms: int, pull: Pull, *, budget: int, n_examples: int) -> Generator[Event, None, BanditResult]:
    """Every arm on the same random sample of min(|train|, budget / n_arms) examples."""
    res = BanditResult("bf", [0.0] * n_arms, [0] * n_arms)
    k = max(1, min(n_examples, budget // max(n_arms, 1)))
    rewards = yield from pull(list(range(n_arms)), k)
    for a, rw in enumerate(rewards):
        res.sums[a] += sum(rw)
        res.counts[a] += len(rw)
    res.history.append({"round": 0, "arms": list(range(n_arms)), "examples": k})
    return res


# --- APE: UCB1 over all pulls, ranking by mean ---------------------------------------------------------------------

def ucb1_values(sums: Sequence[float], counts: Sequence[int], c: float) -> list[float]:
    """APE's UCB1 over all pulls: mean + c * sqrt(ln(sum(counts + 1e-3)) / (counts + 1e-3)), as in the official
    UCBBanditAlgo."""
    total = sum(n + 1e-3 for n in counts)
    lt = math.log(total) if total > 1 else 0.0
    return [(s / n if n else 0.0) + c * math.sqrt(lt / (n + 1e-3)) for s, n in zip(sums, counts, strict=True)]


def rank_arms(means: Sequence[float | None], tie: Sequence[float]) -> list[int]:
    """Best first by empirical mean; arms never evaluated come last (the official code scores them 0, which
    outranks every real negative log-probability: not copied)."""
    return sorted(range(len(means)), key=lambda i: (means[i] is None, -(means[i] or 0.0), tie[i]))
