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

from ..data import Example
from . import parsing
from .text import Signature, input_text

RULE_REQUEST = """Here are labelled examples of a task.

{groups}

The current instruction for this task is: "{instruction}"

What do the examples labelled "{target}" have in common that the examples labelled {others} lack? Reply with one \
sentence, the rule, starting with: Answer "{target}" only when"""

_META = re.compile(r"\b(examples?|labell?ed|labels?|instructions?|prompts?)\b", re.I)
_END = re.compile(r"(?<=[.!?])\s|\n")


def _quoted(labels: Sequence[str]) -> str:
    q = [f'"{x}"' for x in labels]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + " or " + q[-1]


def applies(labels: Sequence[str] | None) -> bool:
    """Rules contrast labels that mean something: 2-6 labels, each with a word of 2+ letters ("(A)" has none)."""
    return bool(labels) and 2 <= len(labels) <= 6 and all(re.search(r"[^\W\d_]{2,}", x) for x in labels)


def parse_rule(reply: str, target: str) -> parsing.Parsed:
    """The 'Answer "target" only when ...' sentence of the reply, up to its first sentence end.

    how: "ok"; "no_rule" (no such sentence: text None); "meta" (the rule speaks of the examples, labels or the
    instruction, which the task model never sees: text None)."""
    m = re.search(r"\banswer\s+[\"'“]?" + re.escape(target) + r"[\"'”]?\s+only\s+(?:when|if)\b", reply or "", re.I)
    if not m:
        return parsing.Parsed(None, "no_rule")
    rest = (reply or "")[m.end():]
    cut = _END.search(rest)
    body = (rest[:cut.start()] if cut else rest).strip().rstrip(".,;:!?").strip()
    if len(re.findall(r"\w+", body)) < 2:
        return parsing.Parsed(None, "no_rule")
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


def rule_request(instruction: str, train: Sequence[Example], labels: Sequence[str], target: str,
                 rng: random.Random, per_label: int = 4) -> str:
    """The request for one rule: per_label train examples of each label (drawn with the run's generator)."""
    groups = []
    for lab in labels:
        pool = [e for e in train if e.label == lab]
        picked = rng.sample(pool, min(per_label, len(pool)))
        if picked:
            groups.append(f'Examples labelled "{lab}":\n' + "\n".join(
                "- " + " ".join(input_text(e).split()) for e in picked))
    return RULE.render(groups="\n\n".join(groups), instruction=instruction, target=target,
                       others=_quoted([x for x in labels if x != target]))
