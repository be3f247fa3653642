"""Text the methods share: meta-prompts as templates beside their parsers, how examples and predictions are shown to
the optimizer model, tidying a proposed prompt, and how far an edit moved it."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from rapidfuzz.distance import Levenshtein

from ..data import Example
from ..evaluate import Prediction
from . import parsing

_FIELD = re.compile(r"\{(\w+)\}")


def render(template: str, **fields: Any) -> str:
    """Fill {name} placeholders in one pass, so braces inside the values (a prompt that says "{gradient}", JSON in an
    example) are never taken for placeholders; a {name} with no field stays as written."""
    return _FIELD.sub(lambda m: str(fields[m.group(1)]) if m.group(1) in fields else m.group(0), template)


T = TypeVar("T")


def as_written(reply: str) -> str:
    """The parser of a reply that is used whole (PE2's reasoning)."""
    return reply


@dataclass(frozen=True)
class Signature(Generic[T]):
    """One meta-prompt as data (DSPy's and GEPA's Signature): its template beside the parser of its reply, so what is
    asked and how the answer is read change together. `render` takes exactly the template's fields: a forgotten or
    misspelt one is an error here, not a literal "{name}" sent to the model."""

    template: str
    parser: Callable[..., T] = as_written  # type: ignore[assignment]

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(_FIELD.findall(self.template))

    def render(self, **fields: Any) -> str:
        if set(fields) != self.fields:
            raise ValueError(f"template fields {sorted(self.fields)}, given {sorted(fields)}")
        return render(self.template, **fields)

    def parse(self, reply: str, **options: Any) -> T:
        return self.parser(reply, **options)


def input_text(ex: Example) -> str:
    """An example's input as the optimizer model is shown it: the value alone, or 'column: value' lines."""
    f = ex.fields
    if len(f) == 1:
        return str(next(iter(f.values()))).strip()
    return "\n".join(f"{k}: {v}" for k, v in f.items()).strip()


def pred_text(pr: Prediction) -> str:
    """A prediction as shown in error lists: the extracted label, else the raw reply squashed and cut."""
    if pr.pred is not None:
        return pr.pred
    raw = " ".join((pr.raw or "").split())
    return (raw[:200] + "...") if len(raw) > 200 else (raw or "(no answer)")


def polish(text: str) -> str:
    """As OPRO's and GPO's official polish_sentence: strip, drop '**', capitalise the first character (when longer
    than 1)."""
    t = (text or "").replace("**", "").strip()
    if len(t) > 1:
        t = t[0].upper() + t[1:]
    return t


def word_distance(a: str, b: str) -> int:
    """Word-level Levenshtein distance: insertions, deletions and substitutions of whole words."""
    return Levenshtein.distance(parsing.words(a), parsing.words(b))
