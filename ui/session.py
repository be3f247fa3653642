"""A browser session's view of PromptOpt: the run store, which backend answers (the embedded model, warmed in the
background when Home shows, or the endpoint set in the sidebar), the connection sidebar, and links between pages.

Contracts:
* st.session_state["api_key"] / ["optimizer_api_key"]: the task / optimizer role's key, this browser session only
  (never the store, logs, query params or exports).
* st.session_state["base_url"], ["task_model"], ["optimizer_base_url"], ["optimizer_model"]: the sidebar's endpoints.
* st.session_state["po_data"]: the PreparedTask (optimizers.prepare) chosen on the Data page.
* query parameter `run=<id>` opens that run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from typing import Any

import streamlit as st

from optimizers.config import RoleEndpoint
from optimizers.store import Store

log = logging.getLogger(__name__)

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
def embedded_server(model: str, n_threads: int | None = None, together: tuple[str, ...] | list[str] = ()) -> Any:
    """The app's embedded llama.cpp server for `model` (and the `together` models one server swaps between when the
    roles name two), started on first need (never at app start) with `n_threads`
    (optimizers.backend.embedded_threads); workers reuse its URL; stopped when the app exits."""
    from optimizers.local_model import shared_server

    return shared_server(model, n_threads, tuple(together))


_warming: dict[str, list[str]] = {}  # set of models -> the models (a background start began)
_warming_lock = threading.Lock()


def warm_embedded(plans: dict) -> bool:
    """Start the embedded server the roles need in a background thread (once per process), so a click on Quick start
    or Start does not wait for the model to load; the page never waits for it. PROMPTOPT_LAZY_MODEL=1 keeps the
    model unloaded until first use. Returns whether a start began here."""
    from optimizers import local_model
    from optimizers.backend import embedded_models, embedded_threads

    models = embedded_models(plans)
    if not models or os.environ.get("PROMPTOPT_LAZY_MODEL", "").strip() in ("1", "true", "yes"):
        return False
    key = "+".join(sorted(models))
    with _warming_lock:
        if key in _warming or (local_model.running_server(models[0]) is not None and len(models) == 1):
            return False
        _warming[key] = models

    def start() -> None:
        try:  # the same server the click's embedded_server() finds (local_model keys it by its set of models)
            local_model.shared_server(models[0], embedded_threads(plans), models[1:])
        except Exception as e:  # shown when a run or a score needs the model, with the full message
            log.warning("warming the embedded model failed: %s", e)

    threading.Thread(target=start, name="warm-embedded", daemon=True).start()
    return True


def warming(model: str) -> bool:
    """Whether a background start of the server for `model` began in this process (it may have finished)."""
    from optimizers.local_model import model_alias

    return any(model_alias(model) in {model_alias(m) for m in models} for models in list(_warming.values()))


def embedded_running(model: str) -> Any | None:
    """An embedded server this process already started that serves `model` (no side effect: does not start it)."""
    try:
        from optimizers.local_model import running_server
    except Exception:
        return None
    return running_server(model)


# the sidebar's fields per role: (state name, environment default)
_FIELDS = {"base_url": "OPENAI_BASE_URL", "task_model": "PROMPTOPT_TASK_MODEL",
           "optimizer_base_url": "PROMPTOPT_OPTIMIZER_BASE_URL", "optimizer_model": "PROMPTOPT_OPTIMIZER_MODEL"}


def _field(name: str) -> str:
    if name not in st.session_state:
        st.session_state[name] = os.environ.get(_FIELDS[name], "")
    return (st.session_state.get(name) or "").strip()


def base_url() -> str:
    """The task role's endpoint chosen in the sidebar ('' = the embedded model)."""
    return _field("base_url")


def api_key() -> str | None:
    return st.session_state.get("api_key") or None


def optimizer_api_key() -> str | None:
    return st.session_state.get("optimizer_api_key") or None


def role_endpoints() -> tuple[RoleEndpoint, RoleEndpoint]:
    """The task and optimizer endpoints set in the sidebar, as a run stores them (empty fields: the defaults)."""
    return (RoleEndpoint(base_url=base_url() or None, model=_field("task_model") or None),
            RoleEndpoint(base_url=_field("optimizer_base_url") or None, model=_field("optimizer_model") or None))


def role_plans() -> dict[str, Any]:
    """What each role resolves to under the sidebar's settings and the environment (nothing is started)."""
    from optimizers.backend import plan_roles

    return plan_roles(*role_endpoints())


def describe_roles() -> str:
    """One line: which model at which endpoint serves each role."""
    return "; ".join(f"{role} model `{p.model}` at {p.base_url or 'the embedded llama.cpp server'}"
                     for role, p in role_plans().items())


def backend(model: str | None = None) -> Any:
    """The task role's backend for the session's settings and key (Home's score, Compare), for `model` instead of the
    sidebar's when given; the embedded model is started lazily, with a spinner, and cached per process. An endpoint
    backend is cheap and not cached (it would hold the key)."""
    from optimizers.backend import open_backend

    task, _ = role_endpoints()
    return open_backend(task.base_url, api_key(), model=model or task.model, start_embedded=embedded_server)


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


def list_models(url: str, role: str = "task") -> tuple[list[str], str | None]:
    """Model ids a role's endpoint lists at /v1/models (cached 30 s; the key is not part of the cache key)."""
    from optimizers.backend import role_keys

    plans = role_plans()
    key = role_keys(plans, api_key(), optimizer_api_key())[role]
    return _models_cached(url, _key_fingerprint(key), key)


def _persisted_input(label: str, name: str, default: str, **kw: Any) -> str:
    """A text input whose value survives page switches (widget state is dropped when a page does not draw it)."""
    wkey = f"_w_{name}"
    if wkey not in st.session_state:
        st.session_state[wkey] = st.session_state.get(name, default)
    val = st.text_input(label, key=wkey, **kw)
    st.session_state[name] = val
    return val


def _take_key(name: str) -> None:
    """Move a typed key out of the widget at once, so the browser never holds it in the input's value."""
    k = st.session_state.get(f"_w_{name}")
    if k:
        st.session_state[name] = k
    st.session_state[f"_w_{name}"] = ""


def _key_input(label: str, name: str, set_text: str, help: str) -> None:
    st.text_input(label, type="password", key=f"_w_{name}", on_change=_take_key, args=(name,), help=help)
    if st.session_state.get(name):
        st.caption(set_text)
        if st.button("Forget the key", key=f"_forget_{name}"):
            st.session_state.pop(name, None)
            st.session_state.pop(f"_w_{name}", None)
            st.rerun()


_SESSION_ONLY = "Kept in this browser session only: never stored, logged or put in a link."
_EMBEDDED_MODELS = "qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, smollm2-135m or the path of a .gguf file"


def connection_sidebar() -> None:
    """A section per role (task, optimizer): base URL, model and API key (password field, session only)."""
    for name in _FIELDS:
        _field(name)  # initialise from the environment
    with st.sidebar:
        st.subheader("Connection")
        st.markdown("**Task role** (answers the task)")
        _persisted_input("Task base URL", "base_url", os.environ.get("OPENAI_BASE_URL", ""),
                         help="An OpenAI-compatible endpoint. Empty: the embedded local model (offline, no key).")
        _persisted_input("Task model", "task_model", os.environ.get("PROMPTOPT_TASK_MODEL", ""),
                         help=f"Empty: the backend's default. Embedded: {_EMBEDDED_MODELS}.")
        _key_input("Task API key", "api_key", "A key is set for this session.", _SESSION_ONLY)
        st.markdown("**Optimizer role** (writes the prompts)")
        _persisted_input("Optimizer base URL", "optimizer_base_url",
                         os.environ.get("PROMPTOPT_OPTIMIZER_BASE_URL", ""),
                         help="Empty: the task model's endpoint (the embedded backend when that is empty too).")
        _persisted_input("Optimizer model", "optimizer_model", os.environ.get("PROMPTOPT_OPTIMIZER_MODEL", ""),
                         help=f"Empty: the task model (embedded: PROMPTOPT_OPTIMIZER_MODEL_EMBEDDED if set). "
                              f"Embedded: {_EMBEDDED_MODELS}, served beside the task model.")
        _key_input("Optimizer API key", "optimizer_api_key", "An optimizer key is set for this session.",
                   _SESSION_ONLY + " Empty: PROMPTOPT_OPTIMIZER_API_KEY, else the task key on the task's endpoint, "
                   "else OPENAI_API_KEY.")
        try:
            st.caption(describe_roles())
        except Exception as e:  # a bad setting is the fields' to fix, not a traceback
            st.caption(f"Cannot resolve the roles: {e}")


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
