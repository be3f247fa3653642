"""Answer extraction and metrics: what a small model writes must be read fairly, and scores carry honest intervals."""

import pytest

from optimizers import metrics
from optimizers.data import Example
from optimizers.task import Task

YN = Task(template="{prompt}\nQ: {q}\nA:", input_cols=["q"], labels=["Yes", "No"])
OPT = Task(template="{prompt}\nQ: {q}\nA:", input_cols=["q"], labels=["(A)", "(B)"])
SENT = Task(template="{prompt}\nText: {t}\nLabel:", input_cols=["t"], labels=["positive", "negative"])


@pytest.mark.parametrize("raw,want", [
    ("Yes", "Yes"), ("yes.", "Yes"), ("  NO ", "No"), ("The answer is no.", "No"),
    ("Let me think. Yes, because... so the answer is: No", "No"), ("True", "Yes"), ("false", "No"),
    ("I cannot tell", None), ("", None),
])
def test_yes_no_extraction(raw, want):
    assert YN.extract(raw) == want


@pytest.mark.parametrize("raw,want", [
    ("(A)", "(A)"), ("B", "(B)"), ("The answer is (B).", "(B)"), ("a) is sarcastic", "(A)"),
    ("Option (B) is the sarcastic one", "(B)"), ("I think a sentence is sarcastic", None),
])
def test_option_letters(raw, want):
    assert OPT.extract(raw) == want


@pytest.mark.parametrize("raw,want", [
    ("Positive", "positive"), ("Sentiment: negative", "negative"), ("**negative**", "negative"),
    ("The review is positive overall, not negative", "positive"), ("postive", "positive"),
])
def test_label_fuzzy_and_markers(raw, want):
    assert SENT.extract(raw) == want


def test_number_and_regex_and_exact():
    num = Task(template="{prompt} {q}", input_cols=["q"], extraction="number")
    assert num.extract("so 3 apples plus 4 is 7") == "7"
    assert num.extract("The answer is 1,234.") == "1234"
    assert num.extract("none") is None
    assert num.is_correct("7", "7.0")
    rx = Task(template="{prompt} {q}", input_cols=["q"], extraction="regex", regex=r"\[(\w+)\]")
    assert rx.extract("first [cat] then [dog]") == "dog"
    ex = Task(template="{prompt} {q}", input_cols=["q"], extraction="exact", metric="exact_match")
    assert ex.is_correct(ex.extract("Answer: Apple pie."), "apple pie")


def test_task_validation_messages():
    with pytest.raises(ValueError, match="prompt"):
        Task(template="Q: {q}", input_cols=["q"], labels=["a"])
    with pytest.raises(ValueError, match="input column"):
        Task(template="{prompt}", input_cols=["q"], labels=["a"])
    with pytest.raises(ValueError, match="label set"):
        Task(template="{prompt} {q}", input_cols=["q"])


def test_render_keeps_braces_in_data():
    ex = Example("1", {"q": 'json {"a": 1} and {prompt}'}, "Yes")
    msgs = YN.messages("Answer {carefully}.", ex)
    assert msgs[-1]["content"].startswith("Answer {carefully}.\nQ: json {\"a\": 1}")


def test_grammar_only_for_llamacpp():
    t = YN.model_copy(update={"constrain_labels": True})
    assert "extra_body" not in t.request_params(llamacpp=False)
    assert t.request_params(llamacpp=True)["extra_body"]["grammar"] == 'root ::= "Yes" | "No"'


def test_wilson_interval_properties():
    lo, hi = metrics.wilson(0, 10)
    assert lo == 0.0 and 0.2 < hi < 0.35
    lo, hi = metrics.wilson(10, 10)
    assert hi == 1.0 and 0.65 < lo < 0.8
    lo, hi = metrics.wilson(50, 100)
    assert lo == pytest.approx(0.404, abs=0.002) and hi == pytest.approx(0.596, abs=0.002)


def test_resolution_is_half_the_95_interval_at_fifty_percent_and_shrinks_with_n():
    assert metrics.resolution(40) == pytest.approx(0.148, abs=0.002)  # the benches' dev split
    assert metrics.resolution(100) == pytest.approx(0.096, abs=0.002)
    assert metrics.resolution(20) > metrics.resolution(40) > metrics.resolution(400)


def test_macro_f1_and_bootstrap():
    golds = ["a", "a", "b", "b"]
    assert metrics.macro_f1(["a", "a", "b", "b"], golds) == 1.0
    assert metrics.macro_f1(["a", "a", "a", "a"], golds) == pytest.approx((2 / 3 + 0) / 2)
    lo, hi = metrics.bootstrap_ci(["a", "b", "a", "b"] * 10, ["a", "b", "b", "a"] * 10, None)
    assert lo < 0.5 < hi


def test_mcnemar_paired():
    a = [True] * 30 + [False] * 10
    b = [False] * 30 + [False] * 10
    r = metrics.mcnemar(a, b)
    assert r["a_only"] == 30 and r["b_only"] == 0 and r["p_value"] < 1e-6
    assert metrics.mcnemar(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError):
        metrics.mcnemar([True], [True, False])
