"""Shared by the pages: the cached run store, the backend (embedded model started lazily, or an endpoint), the
connection sidebar, run links, the generic optimizer-parameter form, run start / resume, and the Data page's pure
helpers (kept here so they are testable without Streamlit).

Contracts (see the dashboard brief):
* st.session_state["api_key"]: the key, this browser session only (never the store, logs, query params or exports).
* st.session_state["po_data"]: dict(name, task, splits, data_config, split_config, initial_prompt) from the Data page.
* query parameter `run=<id>` opens that run.
"""

from __future__ import annotations

import hashlib
import json
import os
import types
import typing
from typing import Any, Literal

import streamlit as st

from optimizers.store import Store

# --- store and backend --------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def _store_at(path: str) -> Store:
    return Store(path)


def db_path() -> str:
    from optimizers.store import default_db

    return str(default_db())


def store() -> Store:
    """The run store (PROMPTOPT_DB, else the user's default), one per process and path."""
    return _store_at(db_path())


@st.cache_resource(show_spinner="Starting the embedded model (the first start assembles and checks it)...")
def embedded_server() -> Any:
    """The app's one embedded llama.cpp server, started on first need (never at app start); workers reuse its URL."""
    from optimizers.local_model import shared_server

    return shared_server()


def embedded_running() -> Any | None:
    """The embedded server if this process already started it (no side effect: does not start it)."""
    try:
        from optimizers import local_model
    except Exception:
        return None
    for server in list(getattr(local_model, "_shared", {}).values()):
        if server.alive():
            return server
    return None


def base_url() -> str:
    """The endpoint chosen in the sidebar ('' = the embedded model)."""
    if "base_url" not in st.session_state:
        st.session_state["base_url"] = os.environ.get("OPENAI_BASE_URL", "")
    return (st.session_state.get("base_url") or "").strip()


def api_key() -> str | None:
    return st.session_state.get("api_key") or None


def backend() -> Any:
    """open_backend for the session's base URL and key; the embedded model (started lazily, with a spinner) when none.
    An endpoint backend is cheap and not cached (it would hold the key); the embedded server is cached per process."""
    from optimizers.backend import Backend, open_backend

    url = base_url()
    if url:
        return open_backend(url, api_key() or os.environ.get("OPENAI_API_KEY"))
    server = embedded_server()
    from optimizers.llm import Endpoint

    ep = Endpoint(server.base_url, "local", max_concurrency=2, llamacpp=True, cache_id=f"embedded:{server.model_alias}")
    return Backend(ep, True, server.model_alias, ep.cache_id)


def _key_fingerprint(key: str | None) -> str:
    return hashlib.sha256((key or "").encode()).hexdigest()[:12]


@st.cache_data(ttl=30, show_spinner=False)
def _models_cached(url: str, fingerprint: str, _key: str | None) -> tuple[list[str], str | None]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url.rstrip("/") + "/models")
    if _key:
        req.add_header("Authorization", f"Bearer {_key}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            data = json.loads(r.read() or b"{}")
        return sorted(str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)), None
    except urllib.error.HTTPError as e:
        return [], f"HTTP {e.code} from {url}/models" + (" (is the API key right?)" if e.code in (401, 403) else "")
    except (OSError, ValueError) as e:
        return [], f"{url}/models did not answer ({type(e).__name__})"


def list_models(url: str) -> tuple[list[str], str | None]:
    """Model ids the endpoint lists at /v1/models (cached 30 s; the key is not part of the cache key)."""
    key = api_key() or os.environ.get("OPENAI_API_KEY")
    return _models_cached(url, _key_fingerprint(key), key)


def _persisted_input(label: str, name: str, default: str, **kw: Any) -> str:
    """A text input whose value survives page switches (widget state is dropped when a page does not draw it)."""
    wkey = f"_w_{name}"
    if wkey not in st.session_state:
        st.session_state[wkey] = st.session_state.get(name, default)
    val = st.text_input(label, key=wkey, **kw)
    st.session_state[name] = val
    return val


def _take_key() -> None:
    """Move a typed key out of the widget at once, so the browser never holds it in the input's value."""
    k = st.session_state.get("_w_api_key")
    if k:
        st.session_state["api_key"] = k
    st.session_state["_w_api_key"] = ""


def connection_sidebar() -> None:
    """Base URL, task / optimizer model and the API key (password field, session only) in the sidebar."""
    base_url()  # initialise from the environment
    with st.sidebar:
        st.subheader("Connection")
        _persisted_input("OpenAI-compatible base URL", "base_url", os.environ.get("OPENAI_BASE_URL", ""),
                         help="Empty: the embedded local model (offline, no key).")
        _persisted_input("Task model", "task_model", os.environ.get("PROMPTOPT_TASK_MODEL", ""),
                         help="Model that answers the task. Empty: the backend's default.")
        _persisted_input("Optimizer model", "optimizer_model", os.environ.get("PROMPTOPT_OPTIMIZER_MODEL", ""),
                         help="Model that writes new prompts. Empty: the task model.")
        st.text_input("API key", type="password", key="_w_api_key", on_change=_take_key,
                      help="Kept in this browser session only: never stored, logged or put in a link.")
        if st.session_state.get("api_key"):
            st.caption("A key is set for this session.")
            if st.button("Forget the key", key="_forget_key"):
                st.session_state.pop("api_key", None)
                st.session_state.pop("_w_api_key", None)
                st.rerun()


def page_link(page: str, label: str, query_params: dict[str, str] | None = None) -> None:
    """st.page_link that degrades to a caption when the page is not part of this app (a page run on its own, as in
    tests): a missing link is not worth a traceback."""
    try:
        st.page_link(page, label=label, query_params=query_params)
    except Exception:
        qs = "?" + "&".join(f"{k}={v}" for k, v in (query_params or {}).items()) if query_params else ""
        st.caption(f"{label}: {page.removeprefix('pages/').removesuffix('.py')}{qs}")


def run_link(run_id: str, page: str = "pages/2_Optimize.py", label: str | None = None) -> None:
    """A shareable link to a run on a page (?run=<id>)."""
    page_link(page, label or f"Open run {run_id}", {"run": run_id})


def selected_run() -> str | None:
    rid = st.query_params.get("run")
    return str(rid) if rid else None


# --- the generic optimizer-parameter form -------------------------------------------------------------------------


def _unwrap_optional(ann: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        optional = len(args) < len(typing.get_args(ann))
        if len(args) == 1:
            return args[0], optional
        return ann, optional
    return ann, False


def field_kind(ann: Any) -> tuple[str, bool, list[Any] | None]:
    """(kind, optional, choices): kind is literal | bool | int | float | str | json."""
    inner, optional = _unwrap_optional(ann)
    if typing.get_origin(inner) is Literal:
        return "literal", optional, list(typing.get_args(inner))
    if inner is bool:
        return "bool", optional, None
    if inner is int:
        return "int", optional, None
    if inner is float:
        return "float", optional, None
    if inner is str:
        return "str", optional, None
    return "json", optional, None


def _bound(field: Any, name: str) -> Any:
    for m in getattr(field, "metadata", []):
        if hasattr(m, name):
            return getattr(m, name)
    return None


def params_form(params_cls: type, key_prefix: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """One widget per Params field, default shown and editable, description as help. Returns the raw values (validate
    with params_cls(**values)). Optional fields are text inputs where empty means None."""
    out: dict[str, Any] = {}
    values = values or {}
    for name, f in params_cls.model_fields.items():
        default = f.get_default(call_default_factory=True)
        cur = values.get(name, default)
        kind, optional, choices = field_kind(f.annotation)
        label = name.replace("_", " ")
        helptext = (f.description or "") + f"  \nDefault: {default!r}"
        key = f"{key_prefix}.{name}"
        if kind == "literal":
            opts = list(choices or [])
            if optional:
                opts = [None, *opts]
            out[name] = st.selectbox(label, opts, index=opts.index(cur) if cur in opts else 0, key=key, help=helptext,
                                     format_func=lambda v: "(none)" if v is None else str(v))
        elif kind == "bool" and not optional:
            out[name] = st.checkbox(label, value=bool(cur), key=key, help=helptext)
        elif kind in ("int", "float") and not optional:
            lo, hi = _bound(f, "ge"), _bound(f, "le")
            if kind == "int":
                out[name] = int(st.number_input(label, value=int(cur), step=1, key=key, help=helptext,
                                                min_value=int(lo) if lo is not None else None,
                                                max_value=int(hi) if hi is not None else None))
            else:
                out[name] = float(st.number_input(label, value=float(cur), key=key, help=helptext, format="%g",
                                                  min_value=float(lo) if lo is not None else None,
                                                  max_value=float(hi) if hi is not None else None))
        elif kind == "str" and not optional:
            out[name] = st.text_input(label, value=str(cur), key=key, help=helptext)
        else:  # optional scalars and anything structured: text, empty = None, JSON for structures
            shown = "" if cur is None else (cur if isinstance(cur, str) and kind == "str" else json.dumps(cur))
            raw = st.text_input(label, value=shown, key=key, help=helptext + "  \nEmpty: none.")
            out[name] = parse_field_text(raw, kind)
    return out


def parse_field_text(raw: str, kind: str) -> Any:
    raw = (raw or "").strip()
    if raw == "":
        return None
    if kind == "str":
        return raw
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            return raw  # the model validation names the field
    if kind == "float":
        try:
            return float(raw)
        except ValueError:
            return raw
    if kind == "bool":
        return raw.lower() in ("1", "true", "yes", "on")
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def validation_messages(err: Exception) -> list[str]:
    """A pydantic ValidationError as one message per field; anything else as its text."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        try:
            return [f"{'.'.join(str(x) for x in e.get('loc', ())) or 'value'}: {e.get('msg')}" for e in errors()]
        except Exception:
            pass
    return [str(err)]


def registered_optimizers() -> dict[str, type]:
    """The optimizers registered by optimizers.optimizers_all (whichever exist right now)."""
    try:
        import optimizers.optimizers_all  # noqa: F401
    except Exception as e:  # a half-written optimizer module must not take the page down
        st.warning(f"Some optimizers could not be loaded: {type(e).__name__}: {e}")
    from optimizers.base import REGISTRY

    return dict(REGISTRY)


# --- estimates ----------------------------------------------------------------------------------------------------


def estimate_run(name: str, params: dict[str, Any], po: dict[str, Any], prompt: str, seed: int,
                 budget: Any) -> Any:
    """The dry-run estimate (optimizers.estimate): the optimizer's own loop against an instant scripted model, so
    the count follows the code, not a formula. Cached per settings in the session; None if the dry run fails."""
    import hashlib
    import json

    from optimizers.estimate import dry_run

    key = "est:" + hashlib.sha256(json.dumps(
        [name, params, po.name, po.splits.sizes(), prompt, seed, str(budget)], sort_keys=True,
        default=str).encode()).hexdigest()
    if key not in st.session_state:
        try:
            st.session_state[key] = dry_run(name, params, po.task, po.splits, prompt or "Answer.", seed=seed,
                                            budget=budget)
        except Exception:  # an estimate must never break the form
            st.session_state[key] = None
    return st.session_state[key]


def report_calls(splits: Any) -> int:
    """The report after the run: the initial and the best prompt on every split (outside the budget)."""
    return 2 * sum(splits.sizes().values())


# --- runs ---------------------------------------------------------------------------------------------------------


def worker_backend_args() -> dict[str, Any]:
    """spawn_worker keyword arguments: the session key, and the embedded server's URL when no endpoint is set (started
    here, once, so workers reuse it instead of each loading the model)."""
    kw: dict[str, Any] = {"api_key": api_key()}
    if not base_url() and not os.environ.get("OPENAI_BASE_URL") and not os.environ.get("PROMPTOPT_EMBEDDED_URL"):
        server = embedded_server()
        kw["embedded_url"] = server.base_url
        kw["embedded_alias"] = server.model_alias
    return kw


def _log_path(run_id: str) -> str:
    from pathlib import Path

    p = Path(db_path()).parent / "logs"
    p.mkdir(parents=True, exist_ok=True)
    return str(p / f"worker-{run_id}.log")


def launch(run_id: str) -> None:
    """Start (or resume) a stored run in a worker process."""
    from optimizers import runner as runner_mod

    runner_mod.spawn_worker(db_path(), run_id, log_path=_log_path(run_id), **worker_backend_args())


def create_and_launch(config: Any, splits: Any) -> str:
    from optimizers.runner import Runner

    rid = Runner(store()).create(config, splits)
    launch(rid)
    return rid


def resume(run_id: str) -> None:
    """Hand a stored run back to a worker: it replays the stored part from the cache and continues."""
    from optimizers.status import RunStatus

    store().set_status(run_id, RunStatus.CREATED, "resume requested")
    launch(run_id)


@st.cache_data(max_entries=16, show_spinner=False)
def cached_events(db: str, run_id: str, count: int):
    """All stored events of a run; the event count in the key invalidates the cache as a live run grows."""
    return store().events(run_id)


def runs_or_stop() -> tuple[Any, list[dict[str, Any]]]:
    """The store and its runs, or a message and the end of the page when the store cannot be opened."""
    try:
        s = store()
        return s, s.list_runs()
    except Exception as e:
        st.error(f"Could not open the run store: {e}")
        st.stop()
