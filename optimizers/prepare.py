"""From a table to task-ready data: the column mapping, the template, the label set and the seeded split, decided in
one place so that the CLI, the dashboard and the bench make the same task of the same data and settings.

The rules, each decided once:
* a bundled set brings its own columns, template, labels and initial prompt; an argument given overrides them;
* the label set is the one given, else the bundled set's, else the labels found in the data (label extraction only);
* exact extraction is scored by exact_match unless a metric is given;
* an empty train split is an error (no optimizer can learn from it);
* an empty initial prompt is kept, and a run can start from it only with an optimizer that allows it (run_config).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import ValidationError

from .config import DataConfig, RunConfig, SplitConfig
from .data import DataError, Example, Splits, build_examples, load_bundled, split_examples
from .prompt import draw_demos
from .task import Task

if TYPE_CHECKING:
    from .base import Optimizer

MAX_LABELS = 50  # more distinct values than this is not a label set: use number or exact extraction
LABEL_NAMES = ("label", "labels", "target", "answer", "class", "category", "y", "output", "gold")


def guess_label_col(columns: list[str]) -> str:
    for c in columns:
        if c.strip().lower() in LABEL_NAMES:
            return c
    return columns[-1]


def default_template(input_cols: list[str], labels: list[str] | None = None) -> str:
    """The input fields, then an answer cue that names a closed label set: small models answer off the set (or
    as a chat assistant) when the cue does not say what an answer looks like (../shared/LOCAL_LLM.md)."""
    cue = "Answer:"
    if labels and len(labels) <= 12:
        cue = f"Answer ({' or '.join(labels)}):" if len(labels) <= 3 else f"Answer (one of {', '.join(labels)}):"
    if len(input_cols) == 1:
        return "{prompt}\n\nInput: {" + input_cols[0] + "}\n" + cue
    return "{prompt}\n\n" + "\n".join(f"{c}: {{{c}}}" for c in input_cols) + "\n" + cue


def check_initial_prompt(prompt: str, optimizer: type[Optimizer]) -> str:
    """The prompt a run starts from, stripped; DataError if it is empty and the optimizer needs one."""
    prompt = (prompt or "").strip()
    if not prompt and not optimizer.allows_empty_prompt:
        raise DataError(f"the initial prompt is empty: {optimizer.title} needs an instruction to start from")
    return prompt


@dataclass(frozen=True)
class PreparedTask:
    name: str
    task: Task
    examples: list[Example]  # every usable row, before the split's caps
    splits: Splits
    data_config: DataConfig
    split_config: SplitConfig
    initial_prompt: str  # may be empty (see check_initial_prompt)
    warnings: list[str]

    def run_config(self, optimizer: type[Optimizer], *, initial_prompt: str | None = None,
                   **settings: Any) -> RunConfig:
        """A run of this task with `optimizer`, from this initial prompt or another one (edited on the Optimize
        page); `settings` are the rest of RunConfig (params, seed, models, budget, ...)."""
        prompt = check_initial_prompt(self.initial_prompt if initial_prompt is None else initial_prompt, optimizer)
        return RunConfig(optimizer=optimizer.name, initial_prompt=prompt, task=self.task, data=self.data_config,
                         split=self.split_config, **settings)


def _problems(what: str, err: Exception) -> list[str]:
    """One message per field of a pydantic error: 'task template: the template needs ...'."""
    if not isinstance(err, ValidationError):
        return [f"{what}: {err}"]
    return [" ".join([what, *map(str, e["loc"])]) + f": {e.get('ctx', {}).get('error') or e['msg']}"
            for e in err.errors()]


def prepare_task(data: pd.DataFrame | str, *, name: str | None = None, input_cols: list[str] | None = None,
                 label_col: str | None = None, template: str | None = None, initial_prompt: str | None = None,
                 labels: list[str] | None = None, extraction: str = "label", regex: str | None = None,
                 metric: str | None = None, max_tokens: int = 32, constrain_labels: bool = False,
                 split: SplitConfig | dict[str, Any] | None = None, source: str | None = None,
                 layout: str = "user", demos: int = 0, demo_style: str = "turns",
                 reasoning_max_tokens: int = 0) -> PreparedTask:
    """`data` is a table or the name of a bundled set. Raises DataError naming every problem it finds.
    demos: k fixed demonstrations for every prompt, drawn from the train split only (seeded by the split's seed)."""
    if isinstance(data, str):
        df, bundled = load_bundled(data)
        name, source = name or bundled.name, source or f"bundled:{bundled.name}"
        input_cols, label_col = input_cols or bundled.input_cols, label_col or bundled.label_col
        template = bundled.template if template is None else template
        labels = labels or bundled.labels
        initial_prompt = bundled.initial_prompt if initial_prompt is None else initial_prompt
    else:
        df = data
    if not input_cols or not label_col:
        raise DataError(f"choose the input column(s) and the label column; the columns are: {', '.join(df.columns)}")
    examples, warnings = build_examples(df, input_cols, label_col,
                                        max_labels=MAX_LABELS if extraction == "label" else None)
    problems: list[str] = []
    task = None
    if extraction == "label":
        labels = labels or sorted({e.label for e in examples})
    try:
        task = Task(template=default_template(input_cols, labels if extraction == "label" else None)
                    if template is None else template, input_cols=input_cols,
                    labels=labels if extraction == "label" else None, extraction=extraction, regex=regex,
                    metric=metric or ("exact_match" if extraction == "exact" else "accuracy"), max_tokens=max_tokens,
                    constrain_labels=constrain_labels, layout=layout, demo_style=demo_style,
                    reasoning_max_tokens=reasoning_max_tokens)
    except (ValueError, re.error) as e:  # re.error: a bad --regex
        problems += _problems("task", e)
    try:
        sc = split if isinstance(split, SplitConfig) else SplitConfig(**(split or {}))
    except ValidationError as e:
        problems += _problems("split", e)
    if problems:
        raise DataError(problems)
    splits = split_examples(examples, train=sc.train, dev=sc.dev, test=sc.test, seed=sc.seed, stratify=sc.stratify,
                            max_train=sc.max_train, max_dev=sc.max_dev, max_test=sc.max_test)
    if not splits.train:
        raise DataError("the train split is empty: raise its fraction or add examples")
    if demos < 0:
        raise DataError("demos: the number of demonstrations cannot be negative")
    if demos:
        drawn = draw_demos(splits.train, demos, random.Random(f"demos:{sc.seed}"))
        task = task.model_copy(update={"demos": [{"id": d.id, "fields": d.fields, "label": d.label} for d in drawn]})
    if sc.stratify and not splits.stratified:
        warnings.append("some label has fewer than 3 examples: the split is not stratified")
    name = name or "data"
    return PreparedTask(name=name, task=task, examples=examples, splits=splits,
                        data_config=DataConfig(name=name, input_cols=input_cols, label_col=label_col, source=source),
                        split_config=sc, initial_prompt=(initial_prompt or "").strip(), warnings=warnings)
