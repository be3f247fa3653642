"""Reading candidate prompts out of optimizer-model replies. Small models forget closing tags, wrap prompts in quotes
or chatter around them; these fallbacks recover what can be recovered and say what could not."""

from __future__ import annotations

import re
from typing import NamedTuple

_PREAMBLE = re.compile(
    r"^\s*(?:sure|certainly|okay|ok|of course)?[,!.]?\s*(?:here(?:'s| is| are)\s+(?:the\s+|an?\s+|my\s+)?"
    r"(?:new|improved|updated|revised|better)?\s*(?:prompt|instruction)s?[^:\n]*:)\s*", re.I)
_LABEL = re.compile(r"^\s*(?:new |improved |revised )?(?:prompt|instruction)\s*:\s*", re.I)
_OUTPUT = re.compile(r"^\s*output\s*:\s*", re.I)
_VARIATION = re.compile(
    r"^\s*(?:sure|certainly|okay|ok|of course)?[,!.]?\s*here(?:'s| is)\s+(?:a|an|the|one|my)\s+(?:possible\s+)?"
    r"(?:variation|paraphrase|version|rewording|rephrasing|rephrased|reworded)[^:\n]*:\s*", re.I)


class Parsed(NamedTuple):
    """A prompt read out of a reply and how it was found (e.g. "tagged", "untagged"); text None: the reply holds no
    prompt (rejected as no_tags), "" an empty one."""

    text: str | None
    how: str


def tagged(text: str, start: str = "<START>", end: str = "<END>") -> list[str]:
    """All spans between start/end tags (case-insensitive); a last start tag with no end takes the rest of the text."""
    out: list[str] = []
    pat = re.compile(re.escape(start) + r"(.*?)(?:" + re.escape(end) + r"|$)", re.S | re.I)
    for m in pat.finditer(text or ""):
        s = clean(m.group(1))
        if s:
            out.append(s)
    return out


def clean(text: str) -> str:
    """Strip quotes, markdown emphasis, code fences and 'Here is the new prompt:' chatter around a prompt."""
    t = (text or "").strip()
    t = re.sub(r"</?(?:START|END)>", "", t, flags=re.I).strip()  # stray tags left by small models
    # and broken ones: "... urgent. END>" or "... urgent. <END" (a 1.5B model wrote both in a GPO sweep)
    t = re.sub(r"(?:^|(?<=\s))/?(?:START|END)>|<\s*/?(?:START|END)\s*$", "", t).strip()
    t = re.sub(r"^```[a-zA-Z]*\n?|```$", "", t).strip()
    t = _PREAMBLE.sub("", t)
    t = _LABEL.sub("", t)
    t = t.replace("**", "").strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'`“”":
        t = t[1:-1].strip()
    if len(t) >= 2 and t[0] in "“\"" and t[-1] in "”\"":
        t = t[1:-1].strip()
    return t


def strip_variation(text: str) -> str:
    """A paraphrase request's reply without the 'Output:' label and 'Here is a variation:' chatter before it."""
    return _VARIATION.sub("", _OUTPUT.sub("", text))


def one_prompt(text: str, start: str = "<START>", end: str = "<END>", *, allow_untagged: bool = True) -> Parsed:
    """The first tagged prompt, or (when allowed) the cleaned whole reply."""
    found = tagged(text, start, end)
    if found:
        return Parsed(found[0], "tagged")
    if allow_untagged:
        c = clean(text)
        if c:
            return Parsed(c, "untagged")
    return Parsed(None, "no_tags")


def words(text: str) -> list[str]:
    return re.findall(r"\S+", text or "")
