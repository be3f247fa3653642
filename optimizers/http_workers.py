"""Chat requests sent from worker processes: the HTTP request/response work of an endpoint spread over N processes.

Why: with 64 requests in flight, one process spent its CPU on the openai client's request path (~0.7 ms a call) and
on 64 threads contending for its GIL, and reached ~90% of a fast server's throughput (BENCHMARKS.md, "Engine overhead
and throughput"). Here worker processes send the requests with the openai client (its own transport, auth, retries
and Retry-After handling), so the sending costs the parent's GIL nothing.
Measured (BENCHMARKS.md, "HTTP worker processes"): 2-3 points more of C/L at C = 64, 1.5x the calls/s at C = 256,
no less CPU per call in total; so it is opt-in, about one process per core.

Only the sending moves. The parent still claims the budget, checks the cache and journals the try before a request
is dispatched, and parses, settles, caches and raises after (optimizers/llm.py): the cap and resume-by-replay are
unchanged. A worker returns the reply's raw bytes, or the HTTP error (status, headers, body) which the parent turns
into the same openai exception its own client would have raised; a worker that dies fails its requests in flight
as a dropped connection (openai.APIConnectionError: retried by Endpoint.call, or EndpointDown), and is replaced.

The API key reaches a worker only in memory: pickled into the spawn pipe with the client's arguments, never in its
command line, environment, a file or a log.

    Endpoint(url, key, max_concurrency=64, processes=2)     # or PROMPTOPT_HTTP_PROCESSES=2
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import pickle
import sys
import threading
import types
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import openai

_CTX = multiprocessing.get_context("spawn")  # the parent has threads: never fork it


class _Slot:
    """One request's reply: a lock held until the reader thread has put the outcome in (cheaper than a Future)."""

    __slots__ = ("lock", "outcome")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.outcome: tuple = ()


_MAIN_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_main():
    """Spawn re-runs the parent's __main__ file in the child unless it was started with -m; a worker needs none of
    it, and a script's main may not be importable twice (measured: after Streamlit's AppTest ran a page, the child
    ran that page and died). The child gets an empty __main__ instead."""
    with _MAIN_LOCK:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


class _Worker:
    def __init__(self, client_args: dict[str, Any]):
        mine, theirs = _CTX.Pipe(duplex=True)
        self.proc = _CTX.Process(target=_serve, args=(theirs, client_args), daemon=True, name="promptopt-http")
        with _no_main():
            self.proc.start()
        theirs.close()
        self.conn = mine
        self.pending: dict[int, _Slot] = {}
        self.alive = True
        self._send_lock = threading.Lock()
        threading.Thread(target=self._read, name="promptopt-http-reader", daemon=True).start()

    def request(self, rid: int, body: dict[str, Any]) -> tuple:
        slot = _Slot()
        self.pending[rid] = slot
        if not self.alive:  # the reader may have failed the pending ones already: see _read
            self.pending.pop(rid, None)
            return ("dead", "the HTTP worker process is gone")
        data = pickle.dumps((rid, body), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            with self._send_lock:
                self.conn.send_bytes(data)
        except (OSError, ValueError):
            self._fail("the HTTP worker process is gone")
        slot.lock.acquire()
        return slot.outcome

    def _read(self) -> None:
        try:
            while True:
                rid, *outcome = pickle.loads(self.conn.recv_bytes())
                slot = self.pending.pop(rid, None)
                if slot is not None:
                    slot.outcome = tuple(outcome)
                    slot.lock.release()
        except (EOFError, OSError, pickle.UnpicklingError):
            code = self.proc.exitcode
            self._fail(f"the HTTP worker process died (exit code {code})" if code is not None
                       else "the HTTP worker process closed its pipe")

    def _fail(self, why: str) -> None:
        """Every request in flight here gets an error (a request registered after `alive` turned False sees it)."""
        self.alive = False
        for rid in list(self.pending):
            slot = self.pending.pop(rid, None)
            if slot is not None:
                slot.outcome = ("dead", why)
                slot.lock.release()

    def close(self) -> None:
        self.alive = False
        try:
            self.conn.close()
        except OSError:
            pass
        self.proc.join(timeout=2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=2)


class WorkerPool:
    """`processes` worker processes for one endpoint, started at the first request, replaced when one dies, closed
    with the endpoint or at exit. Each request goes to the worker with the fewest in flight, so the endpoint's
    concurrency limit (still enforced in the parent) is split evenly across them."""

    def __init__(self, client: openai.OpenAI, client_args: dict[str, Any], processes: int):
        self._client = client  # the parent's own client: builds the error a failed request raises
        self._args = dict(client_args)
        self.processes = processes
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._closed = False
        self._request = httpx2.Request("POST", str(client_args["base_url"]).rstrip("/") + "/chat/completions")
        weakref.finalize(self, _close_all, self._workers)

    def _pick(self) -> _Worker:
        workers = self._workers
        if len(workers) < self.processes or not all(w.alive for w in workers):
            with self._lock:
                if self._closed:
                    raise RuntimeError("the endpoint's HTTP worker processes are closed")
                for i, w in enumerate(workers):
                    if not w.alive:
                        w.close()
                        workers[i] = _Worker(self._args)
                while len(workers) < self.processes:
                    workers.append(_Worker(self._args))
        try:
            return min(workers, key=lambda w: len(w.pending))
        except ValueError:  # closed meanwhile
            raise RuntimeError("the endpoint's HTTP worker processes are closed") from None

    def start(self) -> list[int]:
        """Starts the workers now rather than at the first request and waits until each answers: their process ids."""
        self._pick()
        for w in list(self._workers):
            w.request(next(self._ids), None)
        return [w.proc.pid for w in self._workers]

    def post(self, body: dict[str, Any]) -> bytes:
        """POST /chat/completions with `body` from a worker process: the reply's bytes, or the openai exception the
        parent's client would have raised for the same outcome."""
        outcome = self._pick().request(next(self._ids), body)
        kind = outcome[0]
        if kind == "ok":
            return outcome[1]
        if kind == "status":
            _, status, headers, content = outcome
            response = httpx2.Response(status, headers=headers, content=content, request=self._request)
            raise self._client._make_status_error_from_response(response)
        if kind == "timeout":
            raise openai.APITimeoutError(request=self._request)
        if kind in ("conn", "dead"):
            raise openai.APIConnectionError(message=f"Connection error ({outcome[1]}).", request=self._request)
        key = str(self._args.get("api_key") or "")
        raise RuntimeError("HTTP worker process: " + (outcome[1].replace(key, "***") if len(key) >= 4 else outcome[1]))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            _close_all(self._workers)


def _close_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.close()
    workers.clear()


# --- the worker process --------------------------------------------------------------------------------------------

def _serve(conn: Any, client_args: dict[str, Any]) -> None:
    """A worker: requests in from the pipe, each sent on a thread of its own with a client of its own (as
    Endpoint.leased does: one connection each, kept alive), its outcome back into the pipe. Threads measured cheaper
    here than one asyncio loop with the openai async client (1.2-1.5 against 1.4-2.0 ms of CPU a call,
    bench/bench_engine.py, C = 64). Ends when the parent closes the pipe or dies."""
    tls = httpx2.create_ssl_context()
    idle: list[openai.OpenAI] = []
    send_lock = threading.Lock()

    def reply(out: tuple) -> None:
        data = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
        with send_lock:
            conn.send_bytes(data)

    def one(rid: int, body: dict[str, Any]) -> None:
        try:
            client = idle.pop()
        except IndexError:
            client = openai.OpenAI(**client_args, http_client=openai.DefaultHttpxClient(verify=tls))
        try:
            raw = client.post("/chat/completions", body=body, cast_to=bytes, options={"security": {"bearer_auth": True}})
            out: tuple = (rid, "ok", raw)
        except openai.APIStatusError as e:
            out = (rid, "status", e.status_code, dict(e.response.headers), e.response.content)
        except openai.APITimeoutError:
            out = (rid, "timeout")
        except openai.APIConnectionError as e:
            out = (rid, "conn", type(e.__cause__).__name__ if e.__cause__ else "connection error")
        except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
            out = (rid, "other", f"{type(e).__name__}: {e}"[:300])
        finally:
            idle.append(client)
        try:
            reply(out)
        except OSError:
            pass  # the parent is gone; the main loop ends at its next read

    with ThreadPoolExecutor(max_workers=1024, thread_name_prefix="http") as pool:  # bounded by the parent's limit
        while True:
            try:
                rid, body = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                break
            if body is None:  # a ping: the worker is up
                reply((rid, "ok", b""))
            else:
                pool.submit(one, rid, body)
        pool.shutdown(wait=False, cancel_futures=True)
