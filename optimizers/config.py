"""What a run is made of, as stored with it: the data it came from, how that data was split, and every setting of
the run. A module of its own so data preparation, the store and the pages can use it without the run engine."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import __version__
from .llm import Budget
from .task import Task


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: float = 0.5
    dev: float = 0.25
    test: float = 0.25
    seed: int = 0
    stratify: bool = True
    max_train: int | None = None
    max_dev: int | None = None
    max_test: int | None = None


class DataConfig(BaseModel):
    name: str
    input_cols: list[str]
    label_col: str
    source: str | None = None


class RunConfig(BaseModel):
    """Everything that determines a run, stored with it (never an API key)."""

    model_config = ConfigDict(extra="forbid")
    optimizer: str
    params: dict[str, Any] = {}
    initial_prompt: str
    task: Task
    data: DataConfig
    split: SplitConfig = SplitConfig()
    seed: int = 0
    base_url: str | None = Field(default=None, description="None: the embedded local model")
    task_model: str | None = None
    optimizer_model: str | None = None
    optimizer_temperature: float | None = None
    budget: Budget = Field(default_factory=Budget)
    max_concurrency: int | None = None
    prices: dict[str, tuple[float, float]] = {}
    cache_dir: str | None = None
    report_splits: list[str] = ["train", "dev", "test"]
    version: str = __version__
