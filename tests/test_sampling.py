"""Scoring subsets hold each label at its population share, so a prompt that answers one label to everything scores
that label's true share on them, not a lucky draw's; the draw replays from the seed."""

from __future__ import annotations

from collections import Counter

from optimizers.base import Context
from optimizers.data import Example
from optimizers.task import Task


def ctx(seed: int = 0) -> Context:
    return Context(task=Task(template="{prompt} {text}", input_cols=["text"], labels=["a", "b", "c"]), train=[], dev=[], initial_prompt="x", evaluator=None,
                   optimizer_llm=None, seed=seed)


def population(counts: dict[str, int]) -> list[Example]:
    return [Example(f"{lab}{i}", {"text": f"{lab} {i}"}, lab) for lab, n in counts.items() for i in range(n)]


def test_a_subset_holds_each_label_at_its_share():
    pop = population({"a": 14, "b": 13, "c": 13})  # helpdesk_queues' 40 dev tickets, 24 scored
    for seed in range(20):
        sub = ctx(seed).stratified(pop, 24)
        counts = Counter(e.label for e in sub)
        assert sum(counts.values()) == 24 and len({e.id for e in sub}) == 24 and {e.id for e in sub} <= {e.id for e in pop}
        assert counts == {"a": 8, "b": 8, "c": 8}, counts  # quotas 8.4, 7.8, 7.8: the two largest remainders round up
        # a prompt answering "a" to everything scores a's share, 1/3, on every draw (a random draw: 0.21 to 0.5)
        assert sum(e.label == "a" for e in sub) / len(sub) == 1 / 3


def test_unequal_shares_round_by_largest_remainder_and_the_draw_replays():
    pop = population({"a": 30, "b": 10})
    sub = ctx(3).stratified(pop, 10)
    assert Counter(e.label for e in sub) == {"a": 8, "b": 2} or Counter(e.label for e in sub) == {"a": 7, "b": 3}
    assert Counter(e.label for e in ctx(3).stratified(pop, 8)) == {"a": 6, "b": 2}
    assert [e.id for e in ctx(3).stratified(pop, 10)] == [e.id for e in sub]
    assert [e.id for e in ctx(4).stratified(pop, 10)] != [e.id for e in sub]


def test_the_whole_population_and_free_text_targets_fall_back_to_a_random_draw():
    pop = population({"a": 3, "b": 3})
    assert sorted(e.id for e in ctx().stratified(pop, 10)) == sorted(e.id for e in pop)
    free = [Example(str(i), {"text": str(i)}, f"target {i}") for i in range(30)]
    assert len(ctx().stratified(free, 10)) == 10
