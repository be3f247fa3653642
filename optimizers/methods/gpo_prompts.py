"""GPO's meta-prompts (our wording, the official structure and placeholders), each beside the parser of its reply:
the generation prompt assembled from its blocks, the feedback (gradient) prompt, and the two real-time momentum
merges."""

from __future__ import annotations

import re
from collections.abc import Sequence

from . import parsing
from .text import Signature, polish, render

SCORE_NOTE = "Scores range from 0 to 100; a higher score means a better prompt."

HEADER_GENERATE = "Your task is to write a prompt that will replace <Prompt>."
HEADER_EDIT = "Your task is to revise the current prompt, which replaces <Prompt>."

TRAJECTORY_BLOCK = """Below are earlier prompts with their scores. {score_note}

{entries}"""

CURRENT_BLOCK = """Below is the current prompt with its score. {score_note}
{entry}"""

REALTIME_BLOCK = """Below is the previous prompt with its score. {score_note}
{entry}"""

ENTRY = """Prompt: {prompt}
Score: {score}"""


def entry(prompt: str, score: float) -> str:
    """A prompt with its score, as every momentum block shows it (0 to 100)."""
    return render(ENTRY, prompt=prompt, score=round(score * 100))


CURRENT_PROMPT = """The current prompt is:
{prompt}"""

CRITIQUE_BLOCK = """Below are the problems with this prompt.

{critique}"""

EXEMPLAR_NOTE = ("The examples below show how the prompt is used: <Prompt> in each input is replaced by your prompt, "
                 "then the input is read and an output is given. An output is wrong if it differs from the given "
                 "output, and correct if it is the same.")

DEMO = """Input:
{input}
Output:
{output}"""

BUDGET_LINE = "You may change up to {n} words of the current prompt."

WRAP_NEW = "Wrap the new prompt with <START> and <END>."
WRAP_EDIT = "Wrap the revised prompt with <START> and <END>."


def parse_prompt(reply: str, *, max_words: int) -> parsing.Parsed:
    """<START>...<END> (a missing end tag tolerated); else one short untagged paragraph; else nothing."""
    found = parsing.tagged(reply)
    if found:
        return parsing.Parsed(polish(found[0]), "tagged")
    if re.search(r"<START>", reply or "", re.I):
        return parsing.Parsed("", "tagged")  # tags around nothing: rejected as empty
    t = parsing.clean(re.sub(r"</?(?:START|END)>", "", reply or "", flags=re.I))
    if not t:
        return parsing.Parsed("", "untagged")  # rejected as empty
    if "\n\n" in t or len(t.split()) > max_words:
        return parsing.Parsed(None, "no_tags")
    return parsing.Parsed(polish(t), "untagged")


# one block per part; the optional ones bring their own separating blank line
GENERATE = Signature("{header}\n\n{momentum}\n\n{current}{critique}{examples}\n\n{request}", parse_prompt)


def generation_request(*, edit: bool, momentum: str, entries: Sequence[tuple[str, float]], current: tuple[str, float],
                       critique: str | None, demos: Sequence[tuple[str, str]], budget: int | None) -> str:
    """The update request: momentum ("list" of retrieved (prompt, score) entries, the "realtime" merged one, or just
    the "current" prompt), the current prompt, the critique when shown, the demos, the word budget."""
    if momentum == "list":
        shown = render(TRAJECTORY_BLOCK, score_note=SCORE_NOTE, entries="\n\n".join(entry(*e) for e in entries))
        what = "the previous prompts and their scores"
    elif momentum == "realtime":
        shown = render(REALTIME_BLOCK, score_note=SCORE_NOTE, entry=entry(*entries[0]))
        what = "the previous prompt and its score"
    else:
        shown = render(CURRENT_BLOCK, score_note=SCORE_NOTE, entry=entry(*current))
        what = ""
    if critique:
        what = f"{what} and the problems above" if what else "the problems above"
    verb = "revise the current prompt into a new improved prompt" if edit else "write a new improved prompt"
    ask = (f"Carefully analyse {what}, and {verb}" if what else verb[0].upper() + verb[1:])
    ask += " to replace <Prompt> in the task examples."
    if budget is not None:
        ask += "\n" + render(BUDGET_LINE, n=budget) + "\n"
    demo_block = "\n\n".join(render(DEMO, input=i, output=o) for i, o in demos)
    return GENERATE.render(
        header=HEADER_EDIT if edit else HEADER_GENERATE, momentum=shown,
        current=render(CURRENT_PROMPT, prompt=current[0]),
        critique="\n\n" + render(CRITIQUE_BLOCK, critique=critique) if critique else "",
        examples="\n\n" + EXEMPLAR_NOTE + "\n\n" + demo_block if demos else "",
        request=ask + "\n" + (WRAP_EDIT if edit else WRAP_NEW))


def parse_critique(reply: str) -> str:
    """The tagged critique, else the whole reply cleaned; polished as the code does."""
    found = parsing.tagged(reply)
    return polish(found[0] if found else parsing.clean(reply))


FEEDBACK_PROMPT = Signature("""Your task is to find the problems with the current prompt from the examples it gets wrong.

The current prompt is:
{prompt}

With this prompt, the model gets these examples wrong:

{errors}

Give one reason why the prompt could have led to these wrong answers.
Wrap the reason with <START> and <END>.""", parse_critique)

FEEDBACK_ERROR = """Question:
{input}
Wrong prediction:
{prediction}
Ground truth answer:
{gold}"""

REALTIME_PARA_PROMPT = Signature("""Your task is to combine the previous prompt and the current prompt into one new prompt, guided by their scores.
{score_note}

Below is the previous prompt with its score.
{previous}

Below is the current prompt with its score.
{current}

Write one new prompt that builds on the previous and the current prompt and their scores.
Wrap the new prompt with <START> and <END>.""", parse_prompt)

REALTIME_FEEDBACK_PROMPT = Signature("""Your task is to merge the problems found with the previous prompts and the problems of the current prompt.

Below are the problems found with the previous prompts.
{previous}

Below are the problems of the current prompt.
{current}

Merge the problems of the previous prompts and of the current prompt into one description.
Wrap the merged problems with <START> and <END>.""", parse_critique)
