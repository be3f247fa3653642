"""Is a proposed prompt an instruction? Small optimizer models often return something else, and a score on a small dev
split can make it look better than the prompt it replaces (measured: GPO kept "the initial prompt + This prompt can be
improved by ...", which gained on dev and lost on test). Each rule names a kind of text by its form, not by phrases
seen in one run:

- chat_reply: it speaks to the person who asked (acknowledges, talks about itself in the first person, or asks for
  the input to work on: "Please provide a sentence to analyze.") instead of to the task model, which is given its
  input by the template;
- commentary: it talks about a prompt or an instruction as its object (an instruction does not mention itself);
- edit_report: it opens by reporting what was done, in the past tense ("Corrected the secretary by understanding the
  problem.", "Added a rule for ..."): an optimizer model's summary of its edit, which tells the task model nothing to
  do (an opener such as "Based on the sentence, ..." is a participle, not a report, and passes);
- reasoning_trace: it works on particular examples (refers to them by position or number, or states a verdict on
  one) instead of saying how to treat any input;
- bare_label: it is a label of the task, or little more;
- fragment: two words or fewer that are not a label ("and", "Subject: Bug"): a piece of a reply, not an instruction;
- wrong_labels: it tells the model to answer with options none of which is a label of the task ("answer yes or no"
  on an urgent / normal task), so every reply misses the label set;
- meta_reference: it points at material only the meta-prompt holds (APE's "input-output pairs" from "a friend",
  "the given output"), which the task model never sees, so it cannot be followed;
- invented_example: it carries a question of its own: two or more lines that each start with an option label and
  go on with text ("(A) The car broke down" / "(B) The engine broke down"), the options of one made-up input (word
  labels are exempt: "urgent: the customer is blocked" lines define the labels);
- format_echo: it carries the meta-prompt's scaffolding: a "Field:" line with nothing or only a number after it
  ("Score: 80", "Label:", "Output:"), or with a label of the task after it ending the line ("... urgent? Label:
  normal": an example's answer slot, filled), or a placeholder in angle brackets ("<Prompt>", "<INS>").

A copied example is caught by `base.Context` (it needs the data). The initial prompt and demonstrations are exempt.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from .task import normalize

_ACK = re.compile(r"^\W*((sure|certainly|of course|absolutely|okay|great|got it|no problem|alright|understood|"
                  r"thank you|thanks)\s*[,.!:;-]|happy to help|glad to help)", re.I)
_SELF = re.compile(r"^\W*(i|i'm|i am|i'd|i would|i'll|i will|i've|i have|i can|my|let me|here is|here's|here are|"
                   r"below is|below are|the following is)\b", re.I)
_META = re.compile(r"\b(prompts?|(original|current|new|improved|revised|updated|better|initial)"
                   r" instructions?|(this|the) instructions? (can|could|should|lacks|does|is|was|were|needs|fails|"
                   r"would))\b",
                   re.I)
# A request for the input: "provide / give / send ... a sentence to analyze", "the text you want me to classify"; an
# object that is the model's own output ("provide a one-word answer to classify ...") is an instruction.
_ASKS_INPUT = re.compile(r"\b(?:provide|give|send|share|paste|enter|type|supply)\s+(?:me\s+)?(?:with\s+)?"
                         r"(?:a|an|the|your|some)\s+((?:[\w-]+\s+){0,3}?)(?:to|for me to|(?:that\s+)?you(?:'d| would)?"
                         r"\s+(?:like|want)\s+me\s+to)\s+(?:analy[sz]e|classify|evaluate|check|review|label|answer|"
                         r"assess|examine|solve|triage|moderate|rate|categori[sz]e|process)\b", re.I)
_OUTPUT_WORD = re.compile(r"\b(answer|label|response|reply|word|explanation|verdict|classification|rating|reason|"
                          r"reasoning|output)s?\b", re.I)


# A sentence that is nothing but a request for the input ("Please provide the sentence and options.": GPO's kept
# suffix in the Done-when command on bbh_disambiguation_qa, session 22): the head noun is what a template gives the
# model, nothing follows it, so it cannot be an instruction about the model's own output ("Provide the correct
# option." names none of these nouns and passes).
_ASKS_INPUT_BARE = re.compile(r"^(?:please\s+)?(?:provide|give|send|share|paste|enter|type|supply)\s+(?:me\s+|us\s+)?"
                              r"(?:with\s+)?(?:the|a|an|your|some)\s+(?:input|sentences?|text|passage|question|ticket|"
                              r"review|statement|message|document)(?:\s+(?:and|with)\s+(?:the\s+|its\s+|their\s+)?"
                              r"(?:answer\s+)?(?:options|choices))?\s*[.!?]?$", re.I)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n", text)]


def _asks_for_input(text: str) -> bool:
    return (any(not _OUTPUT_WORD.search(m.group(1)) for m in _ASKS_INPUT.finditer(text))
            or any(_ASKS_INPUT_BARE.match(s) for s in _sentences(text)))


# A request for more from whoever wrote the input ("Please specify the context of the ticket", "Please provide more
# context to help the assistant ...", "Please provide a brief description of the issue", "Please provide the ticket
# details"): the task model has the input and nothing more to ask for. A sentence that also names the model's own
# output ("give more detail in your answer", "give a brief description of the issue, then answer ...") is an
# instruction; "... to receive an accurate response" is the writer's.
_ASKS_MORE = re.compile(r"\b(?:provide|give|share|specify|clarify|supply|send|tell)\s+(?:me\s+|us\s+)?(?:with\s+)?"
                        r"(?:some\s+|any\s+)?(?:more|additional|further|extra|the|a\s+(?:brief|short|clear))\s+"
                        r"(?:[\w-]+\s+){0,2}?(?:context|details?|information|clarification|background|description)\b"
                        # ... or for a fuller input: "Please provide a detailed request in English to indicate ..."
                        # (GPO's kept suffix, request_routing seed 1, session 23); "Give the ticket a label" asks
                        # for no fuller input and passes
                        r"|\b(?:provide|give|share|supply|send|submit)\s+(?:me\s+|us\s+)?(?:with\s+)?"
                        r"(?:a|an|the|your)\s+(?:more\s+)?(?:detailed|complete|full|fuller|clearer|longer|"
                        r"specific|precise|thorough)\s+(?:input|request|ticket|message|question|sentence|text|query|"
                        r"statement|review)\b",
                        re.I)


_OWN_OUTPUT = re.compile(r"\b(?:your|the final|the)\s+(?:[\w-]+\s+)?(?:answer|label|response|reply|explanation|"
                         r"reasoning|output|verdict|classification)s?\b|\bthen\s+(?:answer|label|classify|respond|"
                         r"reply|choose|pick|decide)\b|\bbefore\s+(?:answering|you answer|giving)\b", re.I)


def _asks_for_more(text: str) -> bool:
    return any(_ASKS_MORE.search(s) and not _OWN_OUTPUT.search(s) for s in _sentences(text))


_MATERIAL = re.compile(r"\b(input[- ]output pairs?|(the|these|those|each) pairs\b|(your|my|the) friend|"
                       r"(the|these|those) (given|provided|above|listed) (outputs?|pairs?|answers?|labels?)|"
                       r"(the|these|those) (outputs?|pairs?) (given|provided|above|listed|shown))", re.I)
# Plural only: "the given example" / "the example provided" is how an instruction names its own input.
_SHOWN_EXAMPLES = re.compile(r"\b(?:(?:the|these|those|following)\s+(?:examples|demonstrations|samples)\s+(?:provided|given|"
                             r"shown|listed|above|below)|(?:the|these|those)\s+(?:provided|given|shown|above|listed)\s+"
                             r"(?:examples|demonstrations|samples)|(?:as|like)\s+(?:in\s+|shown\s+in\s+)?the\s+examples|"
                             r"(?:follow|match|mimic|copy)\s+the\s+examples)\b", re.I)


def refers_to_shown_examples(text: str) -> bool:
    """An instruction that points at examples "provided" or "above": right when the prompt carries demonstrations,
    a reference to the meta-prompt's material when it does not (the caller knows which)."""
    return bool(_SHOWN_EXAMPLES.search(text or ""))


_CASE = re.compile(r"\b((the )?(first|second|third|fourth|fifth|last|previous|next) (example|input|case|one|question|"
                   r"sentence|text|ticket|review)|(example|input|case|question) (#\s*)?\d+|in this (example|case)|"
                   r"the (correct |right )?(answer|label) (is|was|would be|should be) (\(?[a-z0-9]\)?|[\"'])|"
                   r"so the answer is|therefore,? the answer)\b", re.I)


# The first sentence opens with a verb in the past tense and then its object: a report of an edit, not an instruction.
# Regular pasts end in -ed (base verbs that do too, and "provided" / "based", which open conditions, are exempt), plus
# a few common irregular pasts that are never imperatives; the object must start with a determiner or a pronoun, so
# an adjective opener ("Detailed instructions: ...", "Required format: ...") is not taken for a report.
_NOT_PAST = {"proceed", "succeed", "exceed", "embed", "shred", "bleed", "speed", "breed", "provided", "based"}
_PAST_IRREGULAR = {"made", "wrote", "rewrote", "gave", "took", "kept", "found", "chose", "brought", "thought",
                   "began", "became", "sought", "taught", "understood", "built", "sent", "spent", "told"}
_OBJECT = {"the", "a", "an", "this", "that", "these", "those", "it", "its", "them", "their", "some", "more", "each",
           "all", "any", "my", "our", "his", "her"}


def _reports_an_edit(first: str) -> bool:
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", first)
    if len(words) < 2 or first.rstrip().endswith("?"):
        return False
    verb, obj = words[0].lower(), words[1].lower()
    past = verb in _PAST_IRREGULAR or (verb.endswith("ed") and len(verb) > 4 and verb not in _NOT_PAST)
    return past and obj in _OBJECT


_WORD = r"[\"'“‘(]*[\w-]+[)\"'”’]*"
_OPTIONS = re.compile(rf"\b(?:answer|respond|reply|output|label it|classify it)\s+(?:only\s+)?(?:with\s+)?"
                      rf"(?:either\s+)?(?:the\s+word\s+)?({_WORD}(?:\s*,\s*{_WORD})*\s*,?\s+or\s+{_WORD})", re.I)


def _options(text: str) -> list[list[str]]:
    """The answer options an instruction names ("Answer A, B or C"), one list per phrase."""
    return [[normalize(w) for w in re.split(r"\s*,\s*|\s+or\s+", m.group(1)) if w.strip()]
            for m in _OPTIONS.finditer(text)]


_SCAFFOLD = re.compile(r"(?im)^\s*([A-Za-z][A-Za-z ]{0,20}:\s*)+(-?\d+(\.\d+)?%?)?\s*$|<\s*/?\s*[A-Z][A-Za-z_ ]{0,20}>")


# An answer slot filled with one of the task's labels, ending its sentence or line ("... urgent? Label: normal"): an
# example's scaffold copied with its answer, which steers the model to that label.
_FILLED = re.compile(r"(?:^|(?<=[.!?])[ \t]+)(?:label|answer|output|category|class|result|classification|prediction|"
                     r"response)[ \t]*:[ \t]*([^\s\"'.,;]+(?:[ \t]+[^\s\"'.,;]+)?)[ \t]*\.?[ \t]*$", re.I | re.M)


def instruction_problem(text: str, labels: list[str] | None = None) -> str | None:
    """The reason `text` is not an instruction (one of the kinds above), or None."""
    t = (text or "").strip()
    if not t:
        return None  # empty is judged by the caller (OPRO may start from it)
    first = re.split(r"(?<=[.!?])\s|\n", t, maxsplit=1)[0]
    if _ACK.match(first) or (_SELF.match(first) and not re.search(r"\byou(r)?\b", first, re.I)) \
            or _asks_for_input(t) or _asks_for_more(t):
        return "chat_reply"  # an opener in the first person that addresses "you" is an instruction
    if _META.search(t):
        return "commentary"
    if _reports_an_edit(first):
        return "edit_report"
    if _MATERIAL.search(t):
        return "meta_reference"
    if _SCAFFOLD.search(t):
        return "format_echo"
    if _CASE.search(t):
        return "reasoning_trace"
    if labels:
        # option letters only: for word labels, "urgent: the customer is blocked" lines define the labels
        starts = [re.escape(lab) for lab in labels if len(_key(lab)) == 1]
        option_line = re.compile(r"(?m)^\s*(?:" + "|".join(starts) + r")[ \t]*[:.)-]?[ \t]+\w.*$")
        if starts and len(option_line.findall(t)) >= 2:
            return "invented_example"
        keys = {_key(lab) for lab in labels}
        if any(opts and not any(_key(o) in keys for o in opts) for opts in _options(t)):
            return "wrong_labels"
        words = normalize(t).split()
        keys = {normalize(lab) for lab in labels}
        if normalize(t) in keys or (len(words) <= 3 and any(k in normalize(t) for k in keys)):
            return "bare_label"
        if any(normalize(m.group(1)) in keys for m in _FILLED.finditer(t)):
            return "format_echo"
    if len(re.findall(r"\w+", t)) <= 2:
        return "fragment"
    return None


_RUN = 8  # words: a run this long shared with one input is a copy, not a phrase of the task's own wording


def _runs(text: str) -> set[tuple[str, ...]]:
    w = text.split()
    return {tuple(w[i:i + _RUN]) for i in range(len(w) - _RUN + 1)}


@dataclass(frozen=True)
class Inputs:
    """The examples' inputs as echoes_example compares them: the whole ones of 40+ characters, and the runs of 8
    words that few inputs share (a preamble every input repeats, such as BBH's question, is the task's wording)."""

    texts: frozenset[str]
    rare: frozenset[tuple[str, ...]]


def example_inputs(examples, max_examples: int = 5000) -> Inputs:
    """The examples' inputs, normalised for echoes_example."""
    norm = [" ".join(str(v).lower().split()) for ex in list(examples)[:max_examples] for v in ex.fields.values()]
    counts = Counter(r for t in norm for r in _runs(t))
    limit = max(1, len(norm) // 5)
    return Inputs(frozenset(t for t in norm if len(t) >= 40), frozenset(r for r, c in counts.items() if c <= limit))


def echoes_example(text: str, inputs: Inputs) -> bool:
    """A proposal that copies a whole input (40+ characters) verbatim, is itself a 40+ character piece cut from one,
    or carries a run of 8 words from one (that not every fifth input shares): small optimizer models often return an
    example, a line of one (one of a BBH question's options), an example's options pasted under the instruction, or
    text injected into the data, instead of an instruction; it would leak into every call."""
    t = " ".join((text or "").lower().split())
    if any(i in t for i in inputs.texts) or (len(t) >= 40 and any(t in i for i in inputs.texts)):
        return True
    return bool(_runs(t) & inputs.rare)


def prompt_form(instruction: str, labels: list[str] | None, examples) -> str:
    """'instruction', or why the text is not one (the rules every proposal passes), for reports over finished runs:
    a best prompt from any tool (PromptOpt's or DSPy's) is checked the same way."""
    if echoes_example(instruction, example_inputs(examples)):
        return "echoes_example"
    return instruction_problem(instruction, labels) or "instruction"


def _key(label: str) -> str:
    """A label or an option as compared: "(A)", "A" and "a" are one option."""
    n = normalize(label)
    m = re.fullmatch(r"\(?([a-z])\)?", n)
    return m.group(1) if m else n
