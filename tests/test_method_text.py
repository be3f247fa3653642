"""The text helpers every method shares: one template renderer, Signature, polish, the word-level edit distance."""

from __future__ import annotations

import pytest

from optimizers.methods import parsing
from optimizers.methods.text import Signature, polish, render, word_distance


def test_render_fills_in_one_pass_and_leaves_other_braces_alone():
    tpl = 'Prompt: "{prompt}"\nProblem: {gradient}\nKeep {unknown} and {} as written.'
    out = render(tpl, prompt='Never write "{gradient}" or {prompt}.', gradient="it is {vague}")
    assert out == ('Prompt: "Never write "{gradient}" or {prompt}."\nProblem: it is {vague}\n'
                   "Keep {unknown} and {} as written.")
    assert render("score {score}", score=0.5) == "score 0.5"


def test_polish_as_the_official_polish_sentence():
    assert polish("  **think** first. ") == "Think first." and polish("x") == "x" and polish("") == ""


def test_word_distance_counts_whole_words():
    assert word_distance("a b c", "a x c d") == 2 and word_distance("same text", "same  text") == 0


def test_signature_renders_exactly_its_fields_and_parses_its_reply():
    sig = Signature("Rewrite {prompt}. Score: {score}", parsing.tagged)
    assert sig.fields == {"prompt", "score"}
    assert sig.render(prompt="it", score=3) == "Rewrite it. Score: 3"
    assert sig.parse("x <START>new<END>") == ["new"]
    for wrong in ({"prompt": "it"}, {"prompt": "it", "score": 3, "extra": 1}):
        with pytest.raises(ValueError):
            sig.render(**wrong)
