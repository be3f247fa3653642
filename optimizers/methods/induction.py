"""Forward-mode instruction induction (APE, Zhou et al. 2023): a few train input/output pairs "a friend" produced
from an unknown instruction, and "The instruction was to ..." for the optimizer model to complete. APE searches over
such candidates; PE2's Instruction Induction and Counterfactual runs start from them. Shared, so neither method
imports the other."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..data import Example
from . import parsing
from .text import Signature, input_text, render

_ECHO_START = re.compile(r"^\s*(?:input|output)\s*:", re.I)
_CUT = re.compile(r"\n\s*\n|(?:^|\n|(?<=[.!?\"'”]))\s*(?:[Ii]nput|[Oo]utput|INPUT|OUTPUT)\s*:")
_LEAD = re.compile(r"^\s*(?:(?:sure|okay|ok|certainly)\b[,!.]?\s*)?"
                   r"(?:(?:the\s+)?instruction\s+(?:was|is)\s+to\b|instruction\s*:|to\b)\s*", re.I)


def clean_induced(reply: str) -> parsing.Parsed:
    """The completion of "The instruction was to ..." as an imperative prompt.

    how: "ok", "cut" (an echo of the demo format or a second paragraph was cut off: what is left is complete),
    "echo" (the reply starts by echoing "Input:"/"Output:"), or "empty"."""
    t = (reply or "").strip()
    if not t:
        return parsing.Parsed("", "empty")
    if _ECHO_START.match(t):
        return parsing.Parsed("", "echo")
    how = "ok"
    m = _CUT.search(t)
    if m:
        t, how = t[:m.start()], "cut"
    t = parsing.clean(t)
    for _ in range(2):  # "The instruction was to: ..." and then "to ..."
        t = _LEAD.sub("", t).lstrip(" :,-")
    t = parsing.clean(t)
    if not t:
        return parsing.Parsed("", "empty")
    return parsing.Parsed(t[0].upper() + t[1:], how)


INDUCE_PROMPT = Signature("""I gave a friend an instruction and some inputs. My friend read the instruction and wrote \
an output for every input. Here are the input-output pairs:

{demos}

The instruction was to""", clean_induced)

DEMO = """Input: {input}
Output: {output}"""


def demo_block(examples: Sequence[Example]) -> str:
    return "\n\n".join(render(DEMO, input=input_text(ex), output=ex.label) for ex in examples)
