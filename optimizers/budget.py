"""The user's money: one hard cap (calls, tokens, money; any of them) over every billed call of a run, prices per
model, and spend by role.

A cap that is checked after the fact leaks: concurrent calls, long replies and the final report all overshoot it. So
every request first *claims* its worst case (one call; its prompt's byte count as a bound on its prompt tokens, since
a byte-level BPE token covers at least one byte, plus the chat template's tokens; its max_tokens as a bound on the
reply) and is refused when the claim does not fit beside what was billed, what is in flight and what is held back for
the run's report. When the reply arrives the claim is settled at the real usage. The bound is loose for one request
(about 4x on English) but it only ever costs the last few calls before the cap, and it makes "never exceeded" true.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any


class BudgetExceeded(RuntimeError):
    """Raised before a request that the run's budget no longer allows; nothing was sent."""


@dataclass
class Budget:
    max_calls: int | None = None
    max_tokens: int | None = None
    max_cost: float | None = None

    def describe(self) -> str:
        parts = [f"{k.removeprefix('max_')}={v}" for k, v in asdict(self).items() if v is not None]
        return ", ".join(parts) or "unlimited"

    @property
    def limited(self) -> bool:
        return any(v is not None for v in asdict(self).values())


@dataclass(frozen=True)
class Amount:
    """A quantity of budget: what a request may cost at most, or what is held back for the report."""

    calls: int = 0
    tokens: int = 0
    cost: float = 0.0

    def __add__(self, o: Amount) -> Amount:
        return Amount(self.calls + o.calls, self.tokens + o.tokens, self.cost + o.cost)

    def __sub__(self, o: Amount) -> Amount:
        return Amount(self.calls - o.calls, self.tokens - o.tokens, self.cost - o.cost)

    def times(self, n: int) -> Amount:
        return Amount(self.calls * n, self.tokens * n, self.cost * n)


ZERO = Amount()


@dataclass
class Counters:
    """Billed spend (calls that reached the model) and what the cache saved."""

    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    cost: float = 0.0
    saved_tokens: int = 0  # tokens the cache hits would have cost
    saved_cost: float = 0.0
    unmetered_calls: int = 0  # calls whose reply carried no usage: their tokens are counted here, not by the server

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Counters) -> None:
        for k in _COUNTER_NAMES:  # not asdict: this runs three times a call
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cost"], d["saved_cost"] = round(d["cost"], 6), round(d["saved_cost"], 6)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Counters:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})

    def amount(self) -> Amount:
        return Amount(self.calls, self.tokens, self.cost)


_COUNTER_NAMES = tuple(f.name for f in fields(Counters))


# Default prices in USD per 1M tokens (input, output), from the providers' public price pages as of 2025-08.
# A default to check, not a quote: prices change, and a user-set price always wins. Local models cost nothing.
BUILTIN_PRICES_DATE = "2025-08"
BUILTIN_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o4-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
}


def parse_price(spec: str) -> tuple[str, tuple[float, float]]:
    """'MODEL=IN,OUT' (USD per 1M input and output tokens) -> (model, (in, out)); ValueError with the form expected."""
    model, sep, rest = spec.partition("=")
    parts = rest.split(",")
    try:
        if not sep or not model.strip() or len(parts) != 2:
            raise ValueError
        pin, pout = float(parts[0]), float(parts[1])
        if pin < 0 or pout < 0 or not (math.isfinite(pin) and math.isfinite(pout)):
            raise ValueError
    except ValueError:
        raise ValueError(f"a price is MODEL=IN,OUT in USD per 1M tokens (e.g. gpt-4o-mini=0.15,0.60), got {spec!r}")\
            from None
    return model.strip(), (pin, pout)


@dataclass
class Prices:
    """Per-model prices; `user` (set on the page or the CLI) wins over the built-in table, which `builtin` can turn off
    (an unknown endpoint serving a model under a familiar name)."""

    user: dict[str, tuple[float, float]] = field(default_factory=dict)
    builtin: bool = True

    def of(self, model: str) -> tuple[float, float] | None:
        if model in self.user:
            return tuple(self.user[model])  # type: ignore[return-value]
        return BUILTIN_PRICES.get(model) if self.builtin else None

    def source(self, model: str) -> str:
        if model in self.user:
            return "set by you"
        if self.builtin and model in BUILTIN_PRICES:
            return f"built-in default ({BUILTIN_PRICES_DATE}; check your provider's page)"
        return "unknown (counted as free)"

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        p = self.of(model)
        return (prompt_tokens * p[0] + completion_tokens * p[1]) / 1e6 if p else 0.0


TEMPLATE_TOKENS = 64  # the chat template's own tokens (role markers, a default system message): a generous bound
PER_MESSAGE_TOKENS = 8


def prompt_token_bound(messages: list[dict[str, Any]]) -> int:
    """An upper bound on a request's prompt tokens that needs no tokenizer: a byte-level BPE (GPT, Llama 3, Qwen) or
    SentencePiece-with-byte-fallback token covers at least one UTF-8 byte."""
    body = sum(len(json.dumps(m.get("content") or "", ensure_ascii=False).encode()) for m in messages)
    return body + TEMPLATE_TOKENS + PER_MESSAGE_TOKENS * len(messages)


@dataclass
class Claim:
    role: str
    model: str
    upper: Amount
    prompt_bound: int
    max_completion: int
    key: str | None = None


class Meter:
    """One per run, shared by every role and thread: the cap, what was billed (total and by role), what is in flight
    and what is held back for the report."""

    def __init__(self, budget: Budget | None = None, prices: Prices | dict[str, tuple[float, float]] | None = None,
                 start: Counters | None = None, start_by_role: dict[str, Counters] | None = None,
                 start_by_phase: dict[str, Counters] | None = None):
        self.budget = budget or Budget()
        self.prices = prices if isinstance(prices, Prices) else Prices(dict(prices or {}))
        self.total = Counters()
        if start:
            self.total.add(start)
        self.by_role: dict[str, Counters] = {}
        self._inflight = ZERO
        self._held = ZERO
        self._held_keys: dict[str, Amount] = {}
        self.by_phase: dict[str, Counters] = {}
        self.phase = "optimization"  # switched by the runner between phases, never while calls are in flight
        # A process killed between two stored usage snapshots has paid for calls no snapshot counts; their answers
        # are in the cache, tagged with the run and the time they were billed, and a resumed run bills them again
        # in its books (not on the wire) when its replay meets them: `run_id` and `recorded_until` say which.
        self.run_id: str | None = None
        self.recorded_until = 0.0
        self._booked: set[str] = set()
        for mine, given in ((self.by_role, start_by_role), (self.by_phase, start_by_phase)):
            for name, c in (given or {}).items():
                mine.setdefault(name, Counters()).add(c)
        self._lock = threading.Lock()

    # --- the cap ------------------------------------------------------------------------------------------------
    def _over(self, extra: Amount) -> str | None:
        """Which limit `extra` on top of billed + in flight + held would pass, or None."""
        b, t = self.budget, self.total.amount() + self._inflight + self._held + extra
        if b.max_calls is not None and t.calls > b.max_calls:
            return f"call budget reached ({b.max_calls} calls)"
        if b.max_tokens is not None and t.tokens > b.max_tokens:
            return f"token budget reached ({b.max_tokens} tokens)"
        if b.max_cost is not None and t.cost > b.max_cost + 1e-12:
            return f"money budget reached (${b.max_cost})"
        return None

    def upper(self, model: str, messages: list[dict[str, Any]], max_completion: int) -> tuple[Amount, int]:
        bound = prompt_token_bound(messages)
        return Amount(1, bound + max_completion, self.prices.cost(model, bound, max_completion)), bound

    def claim(self, role: str, model: str, messages: list[dict[str, Any]], max_completion: int, *,
              key: str | None = None) -> Claim:
        """Reserve a request's worst case, or raise BudgetExceeded (nothing is sent). A request the report's hold
        was kept for (same cache `key`) is paid from that hold: the optimization scoring the initial prompt on a
        reported split does the report's work early and must not be refused for it."""
        up, bound = self.upper(model, messages, max_completion)
        with self._lock:
            share = self._held_keys.pop(key, None) if key is not None else None
            if share is not None:
                self._held = self._held - share
            why = self._over(up)
            if why:
                if share is not None:
                    self._held_keys[key] = share  # type: ignore[index]
                    self._held = self._held + share
                raise BudgetExceeded(why)
            self._inflight = self._inflight + up
        return Claim(role, model, up, bound, max_completion, key)

    def settle(self, claim: Claim, prompt_tokens: int | None, completion_tokens: int | None, *,
               metered: bool = True) -> Counters:
        """The reply came back: bill it at its usage. `metered=False`: the server reported no usage, so the caller
        counted the tokens itself (a local tokenizer), or passes None and the claim's bound is billed (the cap must
        hold); either way the call is marked unmetered."""
        c = Counters(calls=1, unmetered_calls=0 if metered and prompt_tokens is not None
                     and completion_tokens is not None else 1)
        prompt_tokens = claim.prompt_bound if prompt_tokens is None else prompt_tokens
        completion_tokens = claim.max_completion if completion_tokens is None else completion_tokens
        c.prompt_tokens, c.completion_tokens = prompt_tokens, completion_tokens
        c.cost = self.prices.cost(claim.model, prompt_tokens, completion_tokens)
        with self._lock:
            self._inflight = self._inflight - claim.upper
            self._bill(claim.role, c)
            if claim.key is not None:
                self._booked.add(claim.key)  # in this execution's books: a later hit on it is free
        return c

    def cancel(self, claim: Claim) -> None:
        """No usable reply reached us (refused, unreachable): nothing billed."""
        with self._lock:
            self._inflight = self._inflight - claim.upper

    def error(self, role: str) -> None:
        """A request that failed for good (after its retries)."""
        with self._lock:
            self._bill(role, Counters(errors=1))

    def replayed(self, role: str, model: str, key: str, entry: dict[str, Any]) -> None:
        """A cache hit during replay: free, unless the run paid for it after its last stored snapshot (see above)."""
        pt, ct = entry.get("prompt_tokens") or 0, entry.get("completion_tokens") or 0
        with self._lock:
            unrecorded = (self.run_id is not None and entry.get("run") == self.run_id
                          and float(entry.get("billed_at") or 0) > self.recorded_until and key not in self._booked)
            if unrecorded:
                self._booked.add(key)
                self._bill(role, Counters(calls=1, prompt_tokens=pt, completion_tokens=ct,
                                          cost=self.prices.cost(model, pt, ct)))
                return
        self.hit(role, model, pt, ct)

    def orphaned(self, entries: list[dict[str, Any]]) -> None:
        """Requests a killed process had sent without seeing the reply: the server may have billed them, so the books
        take each at its claimed worst case (one call), which keeps the books at or above the real bill."""
        with self._lock:
            for e in entries:
                if e.get("billed_at") is not None and float(e["billed_at"]) <= self.recorded_until:
                    continue  # billed, and in the stored snapshot this meter starts from
                self._bill(e.get("role") or "task", Counters(calls=1, prompt_tokens=int(e.get("tokens") or 0),
                                                             cost=float(e.get("cost") or 0.0)))

    def stamp(self) -> dict[str, Any]:
        """What a cache entry keeps of the call that paid for it."""
        return {"run": self.run_id, "billed_at": time.time()}

    def hit(self, role: str, model: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """A cache hit: free, counted as savings."""
        c = Counters(cache_hits=1, saved_tokens=prompt_tokens + completion_tokens,
                     saved_cost=self.prices.cost(model, prompt_tokens, completion_tokens))
        with self._lock:
            self._bill(role, c)

    def _bill(self, role: str, c: Counters) -> None:
        self.total.add(c)
        self.by_role.setdefault(role, Counters()).add(c)
        self.by_phase.setdefault(self.phase, Counters()).add(c)

    # --- the report's reserve -----------------------------------------------------------------------------------
    def hold(self, shares: dict[str, Amount]) -> bool:
        """Keep the report's requests (cache key -> worst case) out of reach of other claims. Refused (False, the
        old hold kept) when they do not fit beside what is billed and in flight."""
        total = ZERO
        for a in shares.values():
            total = total + a
        with self._lock:
            old, old_keys = self._held, self._held_keys
            self._held, self._held_keys = ZERO, {}
            if self._over(total) is not None:
                self._held, self._held_keys = old, old_keys
                return False
            self._held, self._held_keys = total, dict(shares)
            return True

    def release_hold(self) -> None:
        with self._lock:
            self._held, self._held_keys = ZERO, {}

    def fits(self, amount: Amount) -> bool:
        with self._lock:
            return self._over(amount) is None

    def remaining(self) -> Amount:
        """What is left under each set limit (a huge number for a limit that is not set)."""
        b = self.budget
        with self._lock:
            used = self.total.amount() + self._inflight + self._held
        big = 10**12
        return Amount(big if b.max_calls is None else b.max_calls - used.calls,
                      big if b.max_tokens is None else b.max_tokens - used.tokens,
                      float(big) if b.max_cost is None else b.max_cost - used.cost)

    def call_allowance(self) -> int | None:
        """The calls left under the call cap once what is held (the report, a later phase) is set aside: what an
        optimizer may plan its search with. None without a call cap."""
        if self.budget.max_calls is None:
            return None
        return max(0, self.remaining().calls)

    def exhausted(self) -> str | None:
        """Why not even the smallest request fits any more, or None."""
        with self._lock:
            return self._over(Amount(1, 1, 0.0))

    # --- reading ------------------------------------------------------------------------------------------------
    def snapshot(self) -> Counters:
        with self._lock:
            c = Counters()
            c.add(self.total)
            return c

    def inflight_calls(self) -> int:
        """Requests sent and not yet answered (the progress a page can show before the first answer)."""
        with self._lock:
            return self._inflight.calls

    def checkpoint(self) -> tuple[Counters, dict[str, dict[str, Any]], dict[str, dict[str, Any]], float]:
        """Totals, by role, by phase, and the time they hold for: one consistent reading to store."""
        with self._lock:
            c = Counters()
            c.add(self.total)
            return (c, {r: x.as_dict() for r, x in self.by_role.items()},
                    {r: x.as_dict() for r, x in self.by_phase.items()}, time.time())

    def roles(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {r: c.as_dict() for r, c in self.by_role.items()}

    def phases(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {r: c.as_dict() for r, c in self.by_phase.items()}
