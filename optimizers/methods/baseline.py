"""No optimization: scores the initial prompt only, as the reference every optimizer has to beat."""

from __future__ import annotations

from collections.abc import Iterator

from ..base import Optimizer, Params, register
from ..events import Event


@register
class Baseline(Optimizer):
    name = "baseline"
    title = "Baseline (no optimization)"
    paper = "-"
    Params = Params

    def run(self) -> Iterator[Event]:
        ctx = self.ctx
        cand = yield from ctx.propose(ctx.initial_prompt, step=0, origin="initial")
        split = "dev" if ctx.dev else "train"
        yield from ctx.score(cand, getattr(ctx, split), split, step=0, purpose="baseline")
        yield ctx.step_done(0, cand, split, [cand])
