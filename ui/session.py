"""A browser session's view of PromptOpt: the run store, which backend answers (the embedded model, started lazily,
or the endpoint set in the sidebar), the connection sidebar, and links between pages.

Contracts:
* st.session_state["api_key"]: the key, this browser session only (never the store, logs, query params or exports).
* st.session_state["po_data"]: the PreparedTask (optimizers.prepare) chosen on the Data page.
* query parameter `run=<id>` opens that run.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import streamlit as st

from optimizers.store import Store


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
    from optimizers.backend import embedded_backend, open_backend

    url = base_url()
    if url:
        return open_backend(url, api_key() or os.environ.get("OPENAI_API_KEY"))
    server = embedded_server()
    return embedded_backend(server.base_url, server.model_alias)


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
