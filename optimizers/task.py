"""A task: where the instruction sits in the template, how an answer is read out of free text, and how it is scored.

Small models rarely answer with the bare label, so extraction is forgiving (answer markers, option letters,
yes/true synonyms, fuzzy matching) and records the raw output so a user can see why an answer was scored as it was.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from rapidfuzz import fuzz, process

from .data import Example, render_template, template_placeholders
from .prompt import Demo, split_prompt

_MARKERS = re.compile(r"(?:final answer|the answer is|answer is|answer\s*:|label\s*:|sentiment\s*:|output\s*:)", re.I)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_OPTION = re.compile(r"\(([A-Za-z])\)")
_SYNONYMS = [
    ({"yes", "no"}, {"true": "yes", "false": "no", "1": "yes", "0": "no", "correct": "yes", "incorrect": "no"}),
    ({"true", "false"}, {"yes": "true", "no": "false", "1": "true", "0": "false"}),
    ({"valid", "invalid"}, {"yes": "valid", "no": "invalid", "true": "valid", "false": "invalid"}),
]


def normalize(text: str) -> str:
    """Lower-case, NFKC, trim punctuation and quotes at the ends, collapse whitespace."""
    t = unicodedata.normalize("NFKC", text).strip().lower()
    t = re.sub(r"\s+", " ", t)
    return t.strip(" \t\n\"'`*.,:;!?")


def _label_key(label: str) -> str:
    n = normalize(label)
    m = re.fullmatch(r"\(?([a-z])\)?", n)
    return m.group(1) if m else n


class Task(BaseModel):
    """Everything needed to turn (instruction, example) into messages and a model's reply into a verdict."""

    template: str = Field(description="{prompt} marks the instruction; {column} marks each input field")
    input_cols: list[str]
    labels: list[str] | None = Field(default=None, description="closed label set, for label extraction")
    extraction: Literal["label", "regex", "number", "exact"] = "label"
    regex: str | None = None
    metric: Literal["accuracy", "macro_f1", "exact_match"] = "accuracy"
    system: str | None = None
    layout: Literal["user", "system"] = Field(
        default="user", description="user: the instruction inside the template's user turn; system: the instruction "
                                    "as the system message and the template's rest as the user turn")
    demos: list[dict[str, Any]] = Field(
        default=[], description="fixed demonstrations (drawn from train) for every prompt that carries none")
    demo_style: Literal["turns", "inline"] = Field(
        default="turns", description="turns: each demonstration as a prior user/assistant exchange; inline: above "
                                     "the input in the user turn")
    max_tokens: int = 32
    reasoning_max_tokens: int = Field(
        default=0, ge=0, description="a reply cut at max_tokens before any answer is asked again with this many "
                                     "tokens (for prompts that make the model reason first); 0: never")
    temperature: float = 0.0
    constrain_labels: bool = Field(default=False, description="llama.cpp only: a grammar forces a label reply")

    @field_validator("template")
    @classmethod
    def _has_prompt(cls, v: str) -> str:
        if "{prompt}" not in v:
            raise ValueError("the template needs a {prompt} placeholder where the instruction goes")
        return v

    def model_post_init(self, __context: Any) -> None:
        missing = [c for c in self.input_cols if c not in template_placeholders(self.template)]
        if missing:
            raise ValueError(f"the template does not use the input column(s) {missing}: add {{{missing[0]}}}")
        if self.extraction == "label" and not self.labels:
            raise ValueError("label extraction needs a label set")
        if self.extraction == "regex":
            if not self.regex:
                raise ValueError("regex extraction needs a pattern")
            re.compile(self.regex)

    # --- rendering -------------------------------------------------------------------------------------------
    def render(self, prompt: str, example: Example) -> str:
        return render_template(self.template, example.fields, prompt)

    def fixed_demos(self) -> list[Demo]:
        return [Demo(str(d["id"]), dict(d["fields"]), str(d["label"])) for d in self.demos]

    def _turn(self, instruction: str, fields: dict[str, str]) -> str:
        """One user turn: the template around the input, with the instruction in it (user layout) or not."""
        if self.layout == "user":  # as before layouts existed, byte for byte (cache keys of stored runs)
            return render_template(self.template, fields, instruction)
        return render_template(self.template, fields, "").strip()

    def messages(self, prompt: str, example: Example) -> list[dict[str, str]]:
        """The chat request for one example. A prompt's own demonstrations (see optimizers.prompt) replace the
        task's fixed ones; as turns they come before the input, each answered by its label."""
        instruction, demos = split_prompt(prompt)
        demos = demos or self.fixed_demos()
        system = "\n\n".join(x for x in (self.system, instruction if self.layout == "system" else "") if x)
        msgs = [{"role": "system", "content": system}] if system else []
        if demos and self.demo_style == "turns":
            for d in demos:
                msgs.append({"role": "user", "content": self._turn(instruction, d.fields)})
                msgs.append({"role": "assistant", "content": d.label})
            msgs.append({"role": "user", "content": self._turn(instruction, example.fields)})
            return msgs
        if demos:  # inline: worked examples between the instruction and the input
            shown = "\n\n".join(f"{render_template(self.template, d.fields, '').strip()} {d.label}" for d in demos)
            if self.layout == "system":
                body = f"{shown}\n\n{self._turn(instruction, example.fields)}"
            else:
                body = render_template(self.template, example.fields, f"{instruction}\n\n{shown}").strip()
            msgs.append({"role": "user", "content": body})
            return msgs
        msgs.append({"role": "user", "content": self._turn(instruction, example.fields)})
        return msgs

    def extended(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """The request again with room to finish its reasoning, or None when the task does not extend replies."""
        if self.reasoning_max_tokens <= self.max_tokens:
            return None
        return {**params, "max_tokens": self.reasoning_max_tokens}

    def request_params(self, llamacpp: bool = False) -> dict[str, Any]:
        p: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens, "seed": 0}
        if self.constrain_labels and llamacpp and self.labels:
            alts = " | ".join('"' + lab.replace("\\", "\\\\").replace('"', '\\"') + '"' for lab in self.labels)
            p["extra_body"] = {"grammar": f"root ::= {alts}"}
        return p

    # --- extraction ------------------------------------------------------------------------------------------
    def extract(self, raw: str, *, reasoned: bool = False) -> str | None:
        """reasoned: the reply reasons before it answers, so a label's last mention is the answer, not its first."""
        text = raw or ""
        if self.extraction == "regex":
            found = re.findall(self.regex or "", text, flags=re.S)
            if not found:
                return None
            last = found[-1]
            return (last[0] if isinstance(last, tuple) else last).strip()
        if self.extraction == "number":
            return _last_number(text)
        if self.extraction == "exact":
            return normalize(_after_marker(text).split("\n")[0]) if text.strip() else None
        return self._extract_label(text, last=reasoned)

    def _extract_label(self, text: str, last: bool = False) -> str | None:
        labels = self.labels or []
        keys = {_label_key(lab): lab for lab in labels}
        tail = _after_marker(text)
        synonyms: dict[str, str] = {}
        for pair, syn in _SYNONYMS:
            if set(keys) == pair:
                synonyms = syn
        if all(len(k) == 1 for k in keys):  # option letters: (A) in the reply wins
            opts = [m.group(1).lower() for m in _OPTION.finditer(tail)]
            for o in opts:
                if o in keys:
                    return keys[o]
            m = re.match(r"\s*\(?([A-Za-z])\)?(?:[\s.:)]|$)", tail)
            if m and m.group(1).lower() in keys:
                return keys[m.group(1).lower()]
        whole = normalize(tail)
        if whole in keys:
            return keys[whole]
        if whole in synonyms:
            return keys[synonyms[whole]]
        # earliest whole-word occurrence of a label (or synonym) in the reply
        best: tuple[int, str] | None = None
        for k, lab in list(keys.items()) + [(s, keys[t]) for s, t in synonyms.items() if t in keys]:
            if len(k) == 1 and k.isalpha():
                continue  # a bare letter matches articles ("a") and pronouns
            found = list(re.finditer(r"(?<![\w-])" + re.escape(k) + r"(?![\w-])", tail.lower()))
            if not found:
                continue
            pos = found[-1].start() if last else found[0].start()
            if best is None or (pos > best[0] if last else pos < best[0]):
                best = (pos, lab)
        if best:
            return best[1]
        first = normalize(tail.split("\n")[0])[:60]
        if first:
            hit = process.extractOne(first, list(keys), scorer=fuzz.ratio, score_cutoff=80)
            if hit:
                return keys[hit[0]]
        return None

    def is_correct(self, pred: str | None, gold: str) -> bool:
        if pred is None:
            return False
        if self.extraction == "label":
            return _label_key(pred) == _label_key(gold)
        if self.extraction == "number":
            g = _last_number(gold)
            try:
                return g is not None and abs(float(pred) - float(g)) < 1e-9
            except ValueError:
                return False
        return normalize(pred) == normalize(gold)


def _after_marker(text: str) -> str:
    ms = list(_MARKERS.finditer(text))
    if ms:
        rest = text[ms[-1].end():].strip()
        if rest:
            return rest
    return text.strip()


def _last_number(text: str) -> str | None:
    nums = _NUMBER.findall(_after_marker(text).replace("$", ""))
    if not nums:
        nums = _NUMBER.findall(text)
    if not nums:
        return None
    n = nums[-1].replace(",", "")
    try:
        f = float(n)
    except ValueError:
        return None
    return str(int(f)) if f.is_integer() else str(f)
