"""A prompt is text: an instruction, optionally followed by labelled demonstrations in a fenced, machine-readable
section. Keeping the whole prompt one string means a prompt with demonstrations is cached, stored, reported,
exported, compared and pasted exactly like one without: nothing downstream needs to know demonstrations exist, and
only `Task.messages` (through `split_prompt`) decides how they reach the model (as chat turns or inline).

The section is one marker line, then one JSON object per demonstration:

    Is this ticket urgent? Answer urgent or normal.

    <<demonstrations>>
    {"id": "r12", "fields": {"text": "I cannot log in since ..."}, "label": "urgent"}
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from .data import Example

DEMO_MARK = "<<demonstrations>>"


@dataclass(frozen=True)
class Demo:
    id: str  # the train example it was drawn from
    fields: dict[str, str]
    label: str

    @classmethod
    def of(cls, ex: Example) -> Demo:
        return cls(ex.id, dict(ex.fields), ex.label)

    def as_json(self) -> str:
        return json.dumps({"id": self.id, "fields": self.fields, "label": self.label}, ensure_ascii=False)


def split_prompt(text: str) -> tuple[str, list[Demo]]:
    """(instruction, demonstrations) of a prompt; a prompt without the section has none. A malformed section is an
    error, not silently part of the instruction: it would otherwise be sent to the model as text."""
    text = text or ""
    head, sep, tail = text.partition(DEMO_MARK)
    if not sep:
        return text, []  # unchanged: a plain prompt is sent exactly as given
    demos = []
    for n, line in enumerate(tail.strip().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            demos.append(Demo(str(d.get("id", f"d{n}")), {str(k): str(v) for k, v in d["fields"].items()},
                              str(d["label"])))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"demonstration {n} of the prompt is not a JSON object with fields and label: "
                             f"{line[:80]!r} ({e})") from None
    return head.strip(), demos


def join_prompt(instruction: str, demos: Sequence[Demo]) -> str:
    instruction = (instruction or "").strip()
    if not demos:
        return instruction
    return f"{instruction}\n\n{DEMO_MARK}\n" + "\n".join(d.as_json() for d in demos)


def shown_parts(text: str) -> tuple[str, list[Demo]]:
    """(instruction, demonstrations) for display: a malformed section is shown as text rather than failing a page."""
    try:
        return split_prompt(text or "")
    except ValueError:
        return text or "", []


def instruction_of(text: str) -> str:
    """The instruction alone (what instruction optimizers read and rewrite); tolerant of a malformed section."""
    return (text or "").partition(DEMO_MARK)[0].strip()


def draw_demos(pool: Sequence[Example], k: int, rng: random.Random) -> list[Demo]:
    """k demonstrations from `pool` (the train split only), balanced across labels (round-robin over labels in a
    shuffled order), then shuffled so no label always comes last: small models copy the last demo's label."""
    if k <= 0 or not pool:
        return []
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in pool:
        by_label[ex.label].append(ex)
    labels = sorted(by_label)
    rng.shuffle(labels)
    for lab in labels:
        rng.shuffle(by_label[lab])
    picked: list[Example] = []
    while len(picked) < min(k, len(pool)):
        for lab in labels:
            if by_label[lab] and len(picked) < k:
                picked.append(by_label[lab].pop())
    rng.shuffle(picked)
    return [Demo.of(ex) for ex in picked]
