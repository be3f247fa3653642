"""Contrastive rule induction (ours): train examples grouped by their gold label, and a request for the one rule that
tells one label from the others, in a fixed sentence form ('Answer "X" only when ...'). The candidate is the current
instruction with that rule appended.

Why: with Qwen2.5-Coder-1.5B as the optimizer model, every paper meta-prompt we ran (APE's induction, OPRO's and
GPO's trajectories, ProTeGi's critiques) gave echoes of the meta-prompt or generic clauses, never the convention that
decides the labels. Asked for a rule in this form, with each label's examples side by side, it names situations from
the examples ("unable to log in or access important data"), and every such rule we scored beat the initial prompt
on dev (probe in BENCHMARKS.md). Small models fill a sentence they are given the start of; they do not write an
instruction from nothing. A general rule shape, not phrases from one task: it applies to any classification task
whose labels are words (option letters such as "(A)" carry no meaning to contrast, so those tasks are skipped).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

from ..data import Example
from . import parsing
from .text import Signature, input_text

RULE_REQUEST = """Here are labelled examples of a task.

{groups}

The current instruction for this task is: "{instruction}"

What do the examples labelled "{target}" have in common that the examples labelled {others} lack? Reply with one \
sentence, the rule, starting with: Answer "{target}" only when"""

_META = re.compile(r"\b(examples?|labell?ed|labels?|instructions?|prompts?)\b"
                   r"|\bother\s+(?:\w+\s+)?(?:categor(?:y|ies)|class(?:es)?)\b", re.I)
_END = re.compile(r"(?<=[.!?])\s|\n")
_Q = r"[\"'“”]?"  # a label as the model quotes it, or not


def _quoted(labels: Sequence[str]) -> str:
    q = [f'"{x}"' for x in labels]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + " or " + q[-1]


def applies(labels: Sequence[str] | None) -> bool:
    """Rules contrast labels that mean something: 2-6 labels, each with a word of 2+ letters ("(A)" has none)."""
    return bool(labels) and 2 <= len(labels) <= 6 and all(re.search(r"[^\W\d_]{2,}", x) for x in labels)


def input_noun(template: str | None, input_cols: Sequence[str] = ()) -> str:
    """What the task calls its input: the caption before the first input field of the template ("Ticket: {text}" is
    a ticket), else "input". A rule says "the ticket is about ..." in the words the task model reads."""
    cols = [re.escape(c) for c in input_cols] or [r"\w+"]
    m = re.search(r"([A-Za-z][A-Za-z ]{0,30}?)\s*:\s*\{(?:" + "|".join(cols) + r")\}", template or "")
    words = m.group(1).split()[-2:] if m else []
    return " ".join(words).lower() if words and len(words[-1]) > 1 else "input"


_IRREGULAR = {"are": "is", "were": "was", "have": "has", "do": "does", "lack": "lacks"}


def _singular_verb(rest: str) -> str:
    """The plural verb that opens `rest` made singular ("are about" -> "is about", "mention" -> "mentions"), past any
    -ly adverb; a word that is not a plain verb form is left alone."""
    m = re.match(r"((?:\w+ly\s+)*)([a-z]+)\b", rest)
    if not m:
        return rest
    adv, verb = m.group(1), m.group(2)
    if verb in _IRREGULAR:
        verb = _IRREGULAR[verb]
    elif verb.endswith(("ed", "ing", "s")) or len(verb) < 3:
        return rest
    else:
        verb += "es" if verb.endswith(("sh", "ch", "x", "z", "o")) else "s"
    return adv + verb + rest[m.end():]


def _about_the_input(body: str, target: str, noun: str) -> str:
    """The rule with the meta-prompt's own subject replaced by the task's input. Asked what "the examples labelled
    X" have in common, small models answer with that phrase as the subject ("Answer "atlas" only when the examples
    labelled "atlas" are about locked accounts ..."); the task model sees one input, never the examples, so the
    rule is rewritten about it ("... only when the ticket is about locked accounts ..."). Keyed to the words of the
    request, not of any task; what still speaks of examples or labels after it is rejected as meta."""
    lab = _Q + re.escape(target) + _Q
    m = re.match(r"(?:all\s+)?(?:of\s+)?(?:the\s+)?(examples?|inputs?|items?|tickets?|texts?)\s+"
                 r"(?:(?:labell?ed|marked|tagged|classified)\s+(?:as\s+)?" + lab + r"\s+"
                 r"|in\s+the\s+" + lab + r"\s+(?:category|class|group)\s+|(?=\w))"
                 r"(?:(?:all\s+)?(?:have|share)\s+in\s+common\s+(?:is\s+)?that\s+they\s+(?:all\s+)?)?",
                 body, re.I)
    if not m or not m.group(0).strip():
        return body
    rest = body[m.end():]
    plural = m.group(1).lower().endswith("s") or "they" in m.group(0).lower()
    if m.group(1).lower().rstrip("s") != "example" and not re.search(r"labell?ed|marked|tagged|classified|common|"
                                                                   r"category|class|group", m.group(0), re.I):
        return body  # "the tickets mention ..." written about the inputs already: as it stands
    return f"the {noun} " + (_singular_verb(rest) if plural else rest)


def _without_contrast(body: str, others: Sequence[str]) -> str:
    """The rule up to a trailing clause that names another label (', while "atlas" and "cobalt" lack these'): the
    request's contrast restated, which the task model cannot act on. Left whole when no such clause ends it."""
    names = "|".join(re.escape(x) for x in others if x)
    if not names:
        return body
    m = re.search(r",?\s+(?:while|whereas|but|unlike|as\s+opposed\s+to)\b(?=.*\b(?:" + names + r")\b)", body, re.I)
    return body[:m.start()].rstrip(" ,;") if m and len(re.findall(r"\w+", body[:m.start()])) >= 2 else body


def parse_rule(reply: str, target: str, noun: str = "input", others: Sequence[str] = ()) -> parsing.Parsed:
    """The 'Answer "target" only when ...' sentence of the reply, up to its first sentence end; a reply that starts
    with the sentence's rest ('"target" only when ...', the request's last line continued) counts too. A rule whose
    subject is the request's "the examples labelled target" is rewritten about the task's input (`noun`), and a
    closing clause that names one of the `others` labels is cut.

    how: "ok"; "no_rule" (no such sentence: text None); "meta" (the rule speaks of the examples, labels or the
    instruction, which the task model never sees: text None)."""
    said = _Q + re.escape(target) + _Q + r"\s+only\s+(?:when|if)\b"
    m = re.search(r"\banswer\s+" + said, reply or "", re.I) or re.match(r"\s*" + said, reply or "", re.I)
    if not m:
        return parsing.Parsed(None, "no_rule")
    rest = (reply or "")[m.end():]
    cut = _END.search(rest)
    body = (rest[:cut.start()] if cut else rest).strip().rstrip(".,;:!?").strip()
    if len(re.findall(r"\w+", body)) < 2:
        return parsing.Parsed(None, "no_rule")
    body = _about_the_input(body, target, noun)
    body = _without_contrast(body, others)
    if _META.search(body):
        return parsing.Parsed(None, "meta")
    when = m.group(0).split()[-1].lower()
    return parsing.Parsed(f'Answer "{target}" only {when} {body}.', "ok")


RULE = Signature(RULE_REQUEST, parse_rule)


def with_rule(instruction: str, rule: str, target: str, labels: Sequence[str]) -> str:
    """The instruction, then the rule, then (two labels) what to answer otherwise."""
    others = [x for x in labels if x != target]
    tail = f' Otherwise answer "{others[0]}".' if len(others) == 1 else ""
    return f"{instruction.rstrip()} {rule}{tail}"


def _nearest(query: str, pool: Sequence[Example], taken: set[int]) -> Example | None:
    """The pool's example most like `query` in its words (rapidfuzz token-set ratio, case folded), not yet taken."""
    best = None
    for i, e in enumerate(pool):
        if i in taken:
            continue
        s = fuzz.token_set_ratio(query, input_text(e), processor=default_process)
        if best is None or s > best[0]:
            best = (s, i)
    if best is None:
        return None
    taken.add(best[1])
    return pool[best[1]]


def rule_request(instruction: str, train: Sequence[Example], labels: Sequence[str], target: str,
                 rng: random.Random, per_label: int = 4, contrast: bool = False) -> str:
    """The request for one rule: per_label train examples of each label (drawn with the run's generator).

    contrast: the target's examples are drawn, and each other label shows, for each of them, its train example
    nearest in wording (minimal pairs). Drawn at random, the groups differ in whatever is loudest; on support_triage
    the rules named the shouting ("HIGH PRIORITY", "CRITICAL"), which that set spreads over both labels by design.
    Side by side with a ticket in the same tone and dressing, what is left to tell them apart is what decides."""
    pools = {lab: [e for e in train if e.label == lab] for lab in labels}
    if contrast:
        picked = {target: rng.sample(pools[target], min(per_label, len(pools[target])))}
        for lab in labels:
            if lab != target:
                taken: set[int] = set()
                near = (_nearest(input_text(q), pools[lab], taken) for q in picked[target])
                picked[lab] = [e for e in near if e is not None]
    else:  # in label order, as runs before the contrast option drew them (their caches replay)
        picked = {lab: rng.sample(pools[lab], min(per_label, len(pools[lab]))) for lab in labels}
    groups = [f'Examples labelled "{lab}":\n' + "\n".join("- " + " ".join(input_text(e).split()) for e in picked[lab])
              for lab in labels if picked[lab]]
    return RULE.render(groups="\n\n".join(groups), instruction=instruction, target=target,
                       others=_quoted([x for x in labels if x != target]))
