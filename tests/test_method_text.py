"""The text helpers every method shares: one template renderer, polish, the word-level edit distance."""

from __future__ import annotations

from optimizers.methods.text import polish, render, word_distance


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
