"""Contrastive rule induction (optimizers.methods.rules) and GPO's rule start, against the scripted stub (real HTTP):
what the request shows (train only, grouped by label), how a reply is read or rejected, and how the start enters
GPO's trajectory and its plan under a call cap."""

from __future__ import annotations

import random
import re
import threading

from optimizers.base import candidate_id
from optimizers.data import Example
from optimizers.methods.gpo import GPO
from optimizers.methods.rules import applies, input_noun, parse_rule, rule_request, with_rule
from optimizers.task import Task
from tests.conftest import OPT_MODEL, kinds, last_user, make_ctx, scripted, toy_examples
from tests.stub_server import StubServer
from tests.test_gpo import level_task

INITIAL = "Classify the text."


def test_a_rule_is_read_up_to_its_first_sentence_end():
    r = parse_rule('Sure. Answer "urgent" only when the customer cannot log in or pay. Otherwise normal.', "urgent")
    assert r == ('Answer "urgent" only when the customer cannot log in or pay.', "ok")
    assert parse_rule("answer urgent only if the site is down\nmore", "urgent").text == \
        'Answer "urgent" only if the site is down.'


def test_a_reply_without_the_rule_or_about_the_examples_is_rejected():
    assert parse_rule("Urgent tickets are urgent.", "urgent") == (None, "no_rule")
    assert parse_rule('Answer "urgent" only when', "urgent") == (None, "no_rule")
    assert parse_rule('Answer "urgent" only when the examples label it urgent.', "urgent") == (None, "meta")
    assert parse_rule('Answer "normal" only when the instruction says so.', "normal") == (None, "meta")
    assert parse_rule('Answer "normal" only when it is calm.', "urgent") == (None, "no_rule")  # another label


def test_a_rule_about_the_examples_is_rewritten_about_the_input():
    """Small models answer the request with its own subject ("the examples labelled X"); the task model sees one
    input, so the rule is rewritten about it, in the template's word for it, verb made singular."""
    r = parse_rule('Answer "atlas" only when the examples labelled "atlas" are about locked accounts, such as '
                   'expired invitations.', "atlas", noun="ticket", others=["cobalt", "juniper"])
    assert r == ('Answer "atlas" only when the ticket is about locked accounts, such as expired invitations.', "ok")
    r = parse_rule('Answer "juniper" only when the examples labelled "juniper" have in common that they involve the '
                   'mobile app or the API.', "juniper", noun="ticket")
    assert r.text == 'Answer "juniper" only when the ticket involves the mobile app or the API.'
    r = parse_rule('Answer "urgent" only when all examples in the "urgent" category typically mention an outage.',
                   "urgent")
    assert r.text == 'Answer "urgent" only when the input typically mentions an outage.'
    assert parse_rule('Answer "b" only when the example mentions Safari.', "b", noun="ticket").text == \
        'Answer "b" only when the ticket mentions Safari.'
    assert parse_rule('Answer "b" only when the tickets mention Safari.', "b", noun="ticket").text == \
        'Answer "b" only when the tickets mention Safari.'  # about the inputs already: as written
    # the request's last line continued, without its first word
    assert parse_rule('juniper only when the page loads slowly.', "juniper").text == \
        'Answer "juniper" only when the page loads slowly.'
    # a closing clause that restates the contrast with another label is cut; one that cannot be rescued is meta
    r = parse_rule('juniper only when the examples labelled "juniper" have issues with the dashboard, while "atlas" '
                   'and "cobalt" lack these problems.', "juniper", noun="ticket", others=["atlas", "cobalt"])
    assert r.text == 'Answer "juniper" only when the ticket has issues with the dashboard.'
    assert parse_rule('Answer "juniper" only when the examples labelled "juniper" have in common that the examples '
                      'labelled "atlas" lack.', "juniper", others=["atlas"]) == (None, "meta")
    assert parse_rule('Answer "juniper" only when the ticket lacks what the other two categories have.',
                      "juniper") == (None, "meta")


def test_the_input_is_named_as_the_template_names_it():
    assert input_noun("{prompt}\n\nTicket: {text}\nQueue:", ["text"]) == "ticket"
    assert input_noun("{prompt}\nCustomer message: {msg}\nLabel:", ["msg"]) == "customer message"
    assert input_noun("{prompt} {text}", ["text"]) == "input"
    assert input_noun("Q: {question}\n{prompt}", ["question"]) == "input"  # a one-letter caption says nothing


def test_rules_apply_to_word_labels_only():
    assert applies(["urgent", "normal"]) and applies(["Yes", "No"]) and applies(["a1", "b2", "c3"]) is False
    assert not applies(["(A)", "(B)", "(C)"]) and not applies(["positive"]) and not applies(None)


def test_the_request_shows_train_examples_grouped_by_label_and_names_the_others():
    train = toy_examples(12)
    msg = rule_request(INITIAL, train, ["positive", "negative"], "negative", random.Random(0), per_label=3)
    pos, neg = msg.split('Examples labelled "negative":')
    assert msg.count("\n- ") == 6
    assert all("loved" in ln or "wonderful" in ln or "delight" in ln or "fun" in ln or "superb" in ln
               or "moving" in ln for ln in pos.splitlines() if ln.startswith("- "))
    assert f'"{INITIAL}"' in msg and msg.rstrip().endswith('Answer "negative" only when')
    assert 'labelled "negative" have in common that the examples labelled "positive" lack' in msg
    shown = set(re.findall(r"Review (\d+)", msg))
    assert shown <= {ex.id for ex in train}
    assert with_rule("Decide.", 'Answer "a" only when x.', "a", ["a", "b"]) == \
        'Decide. Answer "a" only when x. Otherwise answer "b".'
    assert with_rule("Decide.", 'Answer "a" only when x.', "a", ["a", "b", "c"]) == 'Decide. Answer "a" only when x.'


def test_with_contrast_each_other_label_shows_the_nearest_worded_example_of_each_target_one():
    # each urgent ticket has a normal twin in the same tone and dressing; the loud ones are spread over both labels
    def ex(i, text, label):
        return Example(id=str(i), fields={"text": text}, label=label)
    urgent = [ex(1, "HIGH PRIORITY!!! I cannot log in at all, locked out since Monday", "urgent"),
              ex(2, "hi, our whole site is down, just an error page. thanks, Ravi", "urgent"),
              ex(3, "Payment page crashes every time so nobody can pay us. Pls advise", "urgent")]
    normal = [ex(11, "HIGH PRIORITY!!! I would like a dark mode at some point", "normal"),
              ex(12, "hi, could you add a CSV export to the site? thanks, Ravi", "normal"),
              ex(13, "The invoice font is a bit small. Pls advise", "normal"),
              ex(14, "Do you offer a nonprofit discount?", "normal")]
    labels = ["urgent", "normal"]
    msg = rule_request(INITIAL, urgent + normal, labels, "urgent", random.Random(0), per_label=3, contrast=True)
    shown_normal = msg.split('Examples labelled "normal":')[1].split("\n\n")[0]
    assert "dark mode" in shown_normal and "CSV export" in shown_normal and "invoice font" in shown_normal
    assert "nonprofit" not in shown_normal  # the one with no twin among the drawn urgent tickets
    assert msg.count("\n- ") == 6 and msg.rstrip().endswith('Answer "urgent" only when')
    # each example is shown once, even when two target examples have the same nearest one
    twin = rule_request(INITIAL, urgent[:1] + [ex(4, "HIGH PRIORITY!!! locked out, cannot log in", "urgent")] + normal,
                        labels, "urgent", random.Random(0), per_label=2, contrast=True)
    shown = re.findall(r"^- (.*)$", twin.split('Examples labelled "normal":')[1], re.M)
    assert len(shown) == len(set(shown)) == 2
    # without it, each label's examples are drawn in label order, as before the option (stored runs replay)
    rng = random.Random(5)
    drawn = [rng.sample(urgent, 2), rng.sample(normal, 2)]
    plain = rule_request(INITIAL, urgent + normal, labels, "urgent", random.Random(5), per_label=2)
    assert re.findall(r"^- (.*)$", plain, re.M) == [e.fields["text"] for g in drawn for e in g]


class RuleOpt:
    """Rule requests get the next reply for the label they ask about (`rules`: label -> replies, the last one
    repeated); generate requests add nothing."""

    def __init__(self, rules):
        self.rules, self.asked, self.lock = rules, [], threading.Lock()

    def __call__(self, req):
        text = last_user(req)
        with self.lock:
            if text.startswith("Here are labelled examples"):
                self.asked.append(text)
                target = re.search(r'starting with: Answer "([^"]+)" only when\s*$', text).group(1)
                replies = self.rules[target]
                return replies.pop(0) if len(replies) > 1 else replies[0]
        return "<START>Classify the text again.<END>"


def _run(rules, *, allowance=None, task=None, **params):
    opt = RuleOpt(rules)
    with StubServer(scripted(opt, level_task)) as stub:
        kw = {"task": task} if task else {}
        ctx = make_ctx(stub, train=toy_examples(16), dev=toy_examples(8, seed=1, start=100), initial_prompt=INITIAL,
                       **kw)
        ctx.call_allowance = allowance
        events = list(GPO(ctx, {"epochs": 1, "batch_size": 8, "num_candidates": 2, **params}).run())
        return events, opt, list(stub.requests)


def test_the_best_rule_starts_the_trajectory_and_a_bad_reply_is_asked_again_and_stored_as_rejected():
    rules = {"positive": ['Answer "positive" only when the review is level 6 warm.',
                          'Answer "positive" only when the review is level 2 kind.'],
             "negative": ["I think negative reviews are negative.", 'Answer "negative" only when the labels say so.',
                          'Answer "negative" only when the review is level 1 cold.']}
    events, opt, _ = _run(rules, rule_start=4)
    # positive ok; negative: no_rule, meta, then ok; positive ok; negative: the level 1 rule again (a duplicate)
    assert [m.rstrip().rsplit("Answer ", 1)[1] for m in opt.asked] == [
        '"positive" only when', '"negative" only when', '"negative" only when', '"negative" only when',
        '"positive" only when', '"negative" only when']
    rejected = [e for e in kinds(events, "candidate_rejected") if e.origin == "rule"]
    assert [e.reason for e in rejected] == ["no_rule", "meta"]
    best = 'Classify the text. Answer "positive" only when the review is level 6 warm. Otherwise answer "negative".'
    proposed = [e.text for e in kinds(events, "candidate_proposed") if e.origin == "rule"]
    assert proposed[0] == best and len(proposed) == 3
    step0 = kinds(events, "step_done")[0]
    assert step0.step == 0 and step0.best_id == candidate_id(best) and step0.best_score == 0.75
    sel = next(e for e in kinds(events, "selection") if e.method == "gpo.rules")
    assert sel.survivors == [candidate_id(best)] and len(sel.estimates) == 4  # the initial and three rules
    first_generate = next(m for m in kinds(events, "meta_prompt") if m.purpose == "gpo.generate")
    assert "level 6 warm" in first_generate.messages[-1]["content"]  # the best rule is the current prompt
    assert all(m.params["temperature"] == 0.7 for m in kinds(events, "meta_prompt") if m.purpose == "gpo.rule")


def test_the_initial_prompt_stays_current_when_no_rule_beats_it():
    events, _, _ = _run({"positive": ['Answer "positive" only when it is good.'],
                           "negative": ['Answer "negative" only when it is bad.']}, rule_start=2)
    step0 = kinds(events, "step_done")[0]
    assert step0.best_id == candidate_id(INITIAL)  # level 0 both ways: a tie keeps the initial prompt


def test_a_rule_tied_with_the_initial_prompt_is_the_best_so_far_when_it_reads_both_labels():
    """The initial prompt answers "positive" to all 8 dev reviews (4 right); the level-4 rule is right on 4 too, with
    both labels in its answers. The initial stays current (no rule beats it), but step 0 reports the rule as the best
    so far under the default tie-break, so a run the cap ends in step 1 keeps it (helpdesk_queues seed 2); with
    tie_break=first, or the paper preset, the initial."""
    def favourite_or_level(req):
        return level_task(req) if "level" in last_user(req).split("\n\nText:")[0] else "positive"

    rules = {"positive": ['Answer "positive" only when the review is level 4 warm.'],
             "negative": ['Answer "negative" only when the review is level 3 cold.']}
    rule = 'Classify the text. Answer "positive" only when the review is level 4 warm. Otherwise answer "negative".'
    for params, best in (({}, rule), ({"tie_break": "first"}, INITIAL)):
        with StubServer(scripted(RuleOpt({k: list(v) for k, v in rules.items()}), favourite_or_level)) as stub:
            ctx = make_ctx(stub, train=toy_examples(16), dev=toy_examples(8, seed=1, start=100),
                           initial_prompt=INITIAL)
            events = list(GPO(ctx, {"epochs": 1, "batch_size": 8, "num_candidates": 2, "rule_start": 2,
                                    **params}).run())
        step0 = kinds(events, "step_done")[0]
        assert step0.best_id == candidate_id(best) and step0.best_score == 0.5
        assert step0.beam == [candidate_id(INITIAL)]  # the current prompt: no rule beat it
        estimates = {e["candidate_id"]: e["mean"] for e in kinds(events, "selection")[0].estimates}
        assert estimates[candidate_id(INITIAL)] == estimates[candidate_id(rule)] == 0.5


def test_no_rule_start_for_option_letters_or_with_the_paper_preset():
    letters = Task(template="{prompt}\n\nText: {text}\nAnswer:", input_cols=["text"], labels=["(A)", "(B)"])
    ex = [Example(str(i), {"text": f"Review {i}: superb."}, "(A)" if i % 2 else "(B)") for i in range(1, 17)]
    opt = RuleOpt({"(A)": ['Answer "(A)" only when x.']})
    with StubServer(scripted(opt, lambda req: "(A)")) as stub:
        ctx = make_ctx(stub, train=ex, dev=ex[:4], initial_prompt=INITIAL, task=letters)
        list(GPO(ctx, {"epochs": 1, "num_candidates": 2}).run())
    assert opt.asked == []
    assert GPO.presets["paper"]["rule_start"] == 0
    events, opt, _ = _run({"positive": ['Answer "positive" only when it is level 6.']}, **GPO.presets["paper"])
    assert opt.asked == [] and not [e for e in kinds(events, "candidate_proposed") if e.origin == "rule"]


def test_under_a_tight_cap_the_rule_start_is_sized_to_fit_next_to_the_baseline():
    # 8 dev examples: the baseline is 8 calls, each rule up to 3 requests (2 retries) + 8 scores: 30 holds 2 rules
    events, opt, reqs = _run({"positive": ['Answer "positive" only when the review is level 6 warm.'],
                              "negative": ['Answer "negative" only when the review is level 1 cold.']},
                             allowance=30, rule_start=4)
    plan = kinds(events, "plan")[0]
    assert plan.defaults["rules"] == 4 and plan.settings["rules"] == 2
    assert len(opt.asked) == 2
    assert len([r for r in reqs if r.get("model") == OPT_MODEL and r.get("_path", "").endswith("completions")
                and last_user(r).startswith("Here are labelled")]) == 2


def test_with_three_labels_the_best_rule_of_each_label_is_also_scored_joined():
    """A rule for one of three labels says nothing about the other two: the rule start also scores the instruction
    with each label's best rule, in label order, and it is planned for. Here each rule answers 'level k' examples
    right and joined they add up, so the joined remits start the trajectory."""
    three = Task(template="{prompt}\n\nText: {text}\nAnswer:", input_cols=["text"],
                 labels=["positive", "negative", "neutral"])
    rules = {"positive": ['Answer "positive" only when the review is level 2 warm.'],
             "negative": ['Answer "negative" only when the review is level 3 cold.'],
             "neutral": ['Answer "neutral" only when the review is level 1 plain.']}

    def adding_levels(req):  # level_task with the levels of every rule in the instruction added up
        text = last_user(req)
        k = sum(int(x) for x in re.findall(r"level (\d+)", text.split("\n\nText:")[0]))
        return level_task({**req, "messages": [{"role": "user", "content": f"level {k}\n\nText:" +
                                                text.split("Text:")[-1]}]})

    opt = RuleOpt(rules)
    with StubServer(scripted(opt, adding_levels)) as stub:
        ctx = make_ctx(stub, train=toy_examples(16), dev=toy_examples(8, seed=1, start=100), initial_prompt=INITIAL,
                       task=three)
        gpo = GPO(ctx, {"epochs": 1, "batch_size": 8, "num_candidates": 2, "rule_start": 3})
        events = list(gpo.run())
    joined = (f'{INITIAL} Answer "positive" only when the review is level 2 warm. Answer "negative" only when the '
              'review is level 3 cold. Answer "neutral" only when the review is level 1 plain.')
    proposed = [e for e in kinds(events, "candidate_proposed") if e.origin == "rule"]
    assert [e.text for e in proposed][-1] == joined and len(proposed) == 4
    assert proposed[-1].info["rules"] == {lab: r[0] for lab, r in rules.items()}
    step0 = kinds(events, "step_done")[0]
    assert step0.best_id == candidate_id(joined) and step0.best_score == 0.75  # level 6 of 8
    # planned for: one more selection-set scoring than the rules alone; none with two labels
    assert gpo.cost(8, 2, 0, 3) == 8 + 3 * (1 + gpo.rule_retries() + 8) + 8
    assert not gpo.combines(1) and gpo.combines(2)
