"""Word-level diff of a prompt against its parent, rendered as plain text (never HTML: prompts come from models)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    op: str  # "equal" | "removed" | "added"
    text: str


def word_diff(old: str, new: str) -> list[Chunk]:
    """Chunks that turn `old` into `new`, compared word by word (whitespace-separated tokens)."""
    a, b = (old or "").split(), (new or "").split()
    out: list[Chunk] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            out.append(Chunk("equal", " ".join(a[i1:i2])))
            continue
        if tag in ("delete", "replace"):
            out.append(Chunk("removed", " ".join(a[i1:i2])))
        if tag in ("insert", "replace"):
            out.append(Chunk("added", " ".join(b[j1:j2])))
    return out


def render_markers(old: str, new: str) -> str:
    """`[-removed-]` and `{+added+}` markers (as `git diff --word-diff=plain`), for st.text / st.code."""
    parts = []
    for c in word_diff(old, new):
        if c.op == "equal":
            parts.append(c.text)
        elif c.op == "removed":
            parts.append(f"[-{c.text}-]")
        else:
            parts.append(f"{{+{c.text}+}}")
    return " ".join(p for p in parts if p)


def diff_stats(old: str, new: str) -> dict[str, int]:
    """Words removed and added, and the edit distance in words (removed + added)."""
    removed = sum(len(c.text.split()) for c in word_diff(old, new) if c.op == "removed")
    added = sum(len(c.text.split()) for c in word_diff(old, new) if c.op == "added")
    return {"removed": removed, "added": added, "distance": removed + added}


def diff_rows(old: str, new: str) -> list[dict[str, str]]:
    """One row per chunk (for st.dataframe): change, words."""
    label = {"equal": "", "removed": "- removed", "added": "+ added"}
    return [{"change": label[c.op], "words": c.text} for c in word_diff(old, new)]
