"""What a run is made of, as stored with it: the data it came from, how that data was split, and every setting of
the run. A module of its own so data preparation, the store and the pages can use it without the run engine."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class RoleEndpoint(BaseModel):
    """Where one role (task or optimizer) sends its requests: an OpenAI-compatible base URL and a model name. Never a
    key: keys come from the environment or the dashboard session at run time (optimizers.backend resolves both).

    base_url None: the task role uses OPENAI_BASE_URL if the running process has it, else the embedded backend; the
    optimizer role uses PROMPTOPT_OPTIMIZER_BASE_URL, else the task role's endpoint. On the embedded backend `model`
    names a bundled model (optimizers.local_model.MODELS) or a GGUF file, each served by its own llama.cpp child."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    base_url: str | None = None
    model: str | None = None


# Stored before roles had endpoints of their own: one base_url for both roles and two model names.
_LEGACY_ROLE_KEYS = ("base_url", "task_model", "optimizer_model")


def _migrate_roles(d: dict[str, Any]) -> dict[str, Any]:
    """An old stored config ({base_url, task_model, optimizer_model}) as role endpoints: both roles went to the one
    base_url, which is what an optimizer endpoint without a base URL means."""
    if not any(k in d for k in _LEGACY_ROLE_KEYS):
        return d
    if "task_endpoint" in d or "optimizer_endpoint" in d:
        raise ValueError(f"give the role endpoints or the old {', '.join(_LEGACY_ROLE_KEYS)}, not both")
    d = dict(d)
    base_url, task_model, opt_model = (d.pop(k, None) for k in _LEGACY_ROLE_KEYS)
    d["task_endpoint"] = {"base_url": base_url, "model": task_model}
    d["optimizer_endpoint"] = {"base_url": None, "model": opt_model}
    return d


def stored_roles(config: dict[str, Any]) -> dict[str, RoleEndpoint]:
    """Each role's endpoint from a stored config (old or new shape), for pages that read configs as dicts."""
    d = _migrate_roles(config or {})
    return {role: RoleEndpoint(**(d.get(f"{role}_endpoint") or {})) for role in ("task", "optimizer")}


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
    task_endpoint: RoleEndpoint = RoleEndpoint()
    optimizer_endpoint: RoleEndpoint = RoleEndpoint()  # None fields: the task role's endpoint (and model, there)
    optimizer_temperature: float | None = None
    demo_search: dict[str, Any] | None = None  # parameters of a demo search after the optimizer (methods.demos)
    budget: Budget = Field(default_factory=Budget)
    max_concurrency: int | None = None
    prices: dict[str, tuple[float, float]] = {}
    cache_dir: str | None = None
    report_splits: list[str] = ["train", "dev", "test"]
    version: str = __version__

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        return _migrate_roles(data) if isinstance(data, dict) else data
