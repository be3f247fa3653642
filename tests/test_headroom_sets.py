"""The bundled sets added for headroom load, have balanced labels and a split with >= 100 test rows; the support-triage
file is what its seeded generator writes; bench_headroom renders both layouts as documented and draws its
demonstrations from train only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from optimizers.data import BUNDLED, build_examples, load_bundled, split_examples

ROOT = Path(__file__).resolve().parent.parent
# the split each set's entry in optimizers/data.py (description) and data/README.md names
NEW_SETS = {"support_triage": (0.5, 0.25, 0.25), "listing_moderation": (0.5, 0.25, 0.25),
            "product_reviews": (0.5, 0.25, 0.25), "request_routing": (0.5, 0.25, 0.25),
            "helpdesk_queues": (0.5, 0.25, 0.25), "bbh_disambiguation_qa": (0.4, 0.2, 0.4)}


@pytest.mark.parametrize("name", list(NEW_SETS))
def test_new_set_loads_balanced_with_100_test_rows(name):
    df, b = load_bundled(name)
    exs, problems = build_examples(df, b.input_cols, b.label_col)
    assert not problems
    counts = Counter(e.label for e in exs)
    assert sorted(counts) == sorted(b.labels)
    # balanced: every label's share within 10 points of an even split (BBH's disambiguation: 0.39 / 0.31 / 0.30)
    assert all(abs(c / len(exs) - 1 / len(counts)) <= 0.10 for c in counts.values()), counts
    train, dev, test = NEW_SETS[name]
    s = split_examples(exs, train=train, dev=dev, test=test, seed=0)
    assert len(s.test) >= 100
    assert not {e.id for e in s.test} & {e.id for e in s.train + s.dev}


@pytest.mark.parametrize("name,counts", [("support_triage", {"urgent": 240, "normal": 240}),
                                         ("listing_moderation", {"remove": 240, "keep": 240}),
                                         ("product_reviews", {"positive": 240, "negative": 240}),
                                         ("request_routing", {"finance": 240, "tech": 240}),
                                         ("helpdesk_queues", {"atlas": 160, "cobalt": 160, "juniper": 160})])
def test_a_written_set_is_its_generator_output_and_balanced_exactly(name, counts):
    r = subprocess.run([sys.executable, str(ROOT / "data" / f"make_{name}.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    df, _ = load_bundled(name)
    assert df["label"].value_counts().to_dict() == counts
    assert df["text"].is_unique


def test_listing_moderation_tone_does_not_give_the_label_away():
    """The house rule, not the tone, decides: shouting, the rude tone's insults and pushy sales talk are as common in
    kept messages as in removed ones (within 10 points), so a model that removes what sounds rude or scammy scores near
    chance (some kept situations are rude on top: "this ... is overpriced junk" is allowed)."""
    df, _ = load_bundled("listing_moderation")
    for cue in (r"[A-Z]{5,}.*[A-Z]{5,}", r"!!", r"(?i)pathetic|clown|get a grip|waste my time", r"(?i)act fast|hurry|last chance|serious buyers"):
        share = df.assign(hit=df["text"].str.contains(cue)).groupby("label")["hit"].mean()
        assert abs(share["remove"] - share["keep"]) <= 0.10, (cue, share.to_dict())


def test_product_reviews_loud_parts_do_not_give_the_label_away():
    """Only the product verdict decides: shouting, exclamation marks, a closing line about the seller and the
    review's length are as common under either label (within 10 points), and most reviews under each label are mixed
    (they praise the delivery or seller when the product is bad, and the reverse), as the generator's docstring says."""
    df, _ = load_bundled("product_reviews")
    seller_good = r"(?i)delivery was super fast|lovely|beautifully packaged|were amazing|quick and the tracking|" \
                  r"friendly|free gift|earlier than promised|updated at every|was excellent|not a scratch|best delivery"
    for cue in (r"[A-Z]{5,}.*[A-Z]{5,}", r"!", r"(?i)never ordering|avoid this seller|zero stars|furious|shambles|"
                r"order from .* again|five stars for the seller|thank you, |great service|top marks", r"^.{120,}$"):
        share = df.assign(hit=df["text"].str.contains(cue)).groupby("label")["hit"].mean()
        assert abs(share["positive"] - share["negative"]) <= 0.10, (cue, share.to_dict())
    praise = df.assign(hit=df["text"].str.contains(seller_good)).groupby("label")["hit"].mean()
    assert praise["negative"] > 0.5 > praise["positive"], praise.to_dict()  # mixed: a bad product, a lovely seller


def test_request_routing_money_words_appear_under_both_labels():
    """Invoices, amounts and payment words are in most tech requests too (two in three are about paying for software
    or devices), and the same sentence frames ("the ... invoice for $450 is due on Friday, can someone pay it?") occur
    under both labels: only what the money is for decides."""
    df, _ = load_bundled("request_routing")
    money = r"(?i)invoice|\$|EUR|GBP|\bpay|charged|budget|price|quote|buy|order|cost"
    share = df.assign(hit=df["text"].str.contains(money)).groupby("label")["hit"].mean()
    assert share["tech"] > 0.5 and share["finance"] > 0.5, share.to_dict()
    for frame in (r"invoice .*for .* is due on Friday, can someone pay it", r"price increase notice",
                  r"(?i)can we cancel", r"get approval to"):
        labels = set(df[df["text"].str.contains(frame)]["label"])
        assert labels == {"finance", "tech"}, (frame, labels)


def test_helpdesk_queues_other_queues_words_and_dressing_do_not_give_the_label_away():
    """What the customer needs decides, not the words: sign-in, money and product words each turn up under another
    queue too (one ticket in five names another queue's things), and greetings, closings and sign-offs are as common
    under every queue (within 10 points)."""
    df, _ = load_bundled("helpdesk_queues")
    for words, home in ((r"(?i)log in|login|password|users?\b", "atlas"), (r"(?i)invoice|billing|paying|charge|\$",
                                                                           "cobalt"),
                        (r"(?i)export|slow|update|template", "juniper")):
        labels = set(df[df["text"].str.contains(words)]["label"])
        assert home in labels and len(labels) >= 2, (words, labels)
    for cue in (r"(?i)^(?:Hi|Hello|Hey|Good morning)", r"(?i)thanks|cheers", r"(?i)urgent|no rush", r"- \w+"):
        share = df.assign(hit=df["text"].str.contains(cue)).groupby("label")["hit"].mean()
        assert share.max() - share.min() <= 0.10, (cue, share.to_dict())


def _bench():
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_headroom

    return bench_headroom


def test_layouts_render_as_documented():
    bh = _bench()
    experts = json.loads(bh.EXPERTS_FILE.read_text())
    for name in list(BUNDLED):
        assert len(experts.get(name, [])) == 3, name
        s = bh.load_setup(name, experts, ROOT, None)
        ex = s.test[0]
        inline = bh.messages("inline", s.bundled, "INSTR", ex)
        assert inline == [{"role": "user", "content": s.task.render("INSTR", ex)}]  # k = 0: what eval sends
        demos = bh.pick_demos(s.train, 4)
        assert {d.id for d in demos} <= {e.id for e in s.train}
        sysm = bh.messages("system", s.bundled, "INSTR", ex, demos)
        assert sysm[0] == {"role": "system", "content": "INSTR"}
        assert [m["role"] for m in sysm[1:]] == ["user", "assistant"] * 4 + ["user"]
        assert [m["content"] for m in sysm[2:-1:2]] == [d.label for d in demos]
        # inline demos are inserted above the input and change nothing else of the k = 0 message
        k0, shots = inline[0]["content"], bh.messages("inline", s.bundled, "INSTR", ex, demos)[0]["content"]
        head = os.path.commonprefix([k0, shots])
        tail = os.path.commonprefix([k0[::-1], shots[::-1]])[::-1]
        assert len(head) + len(tail) >= len(k0) and "INSTR" in head
        middle = shots[len(head):len(shots) - len(tail)]
        assert all(d.fields[s.bundled.input_cols[0]] in shots and " " + d.label + "\n" in shots for d in demos)
        assert len(middle) > 0


def test_demos_are_seeded_balanced_and_from_train_only():
    bh = _bench()
    df, b = load_bundled("support_triage")
    exs, _ = build_examples(df, b.input_cols, b.label_col)
    s = split_examples(exs, seed=0)
    a, again = bh.pick_demos(s.train, 8), bh.pick_demos(s.train, 8)
    assert [d.id for d in a] == [d.id for d in again]
    assert Counter(d.label for d in a) == {"urgent": 4, "normal": 4}
    assert not {d.id for d in a} & {e.id for e in s.dev + s.test}
