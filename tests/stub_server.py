"""A tiny scripted OpenAI-compatible server over real HTTP, for deterministic tests: scripted replies, a request log,
injected faults (429 with Retry-After, 5xx, timeouts, dropped connections, empty or truncated or invalid replies)."""

from __future__ import annotations

import hashlib
import json
import math
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class StubReply:
    text: str
    finish_reason: str = "stop"
    logprobs: list[dict] | None = None


Responder = Callable[[dict], "str | StubReply"]


def _words(s: str) -> int:
    return len((s or "").split())


def _embed(text: str, dim: int = 64) -> list[float]:
    v = [0.0] * dim
    for w in (text or "").lower().split():
        h = int(hashlib.md5(w.encode()).hexdigest(), 16)
        v[h % dim] += 1.0
    n = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / n for x in v]


class StubServer:
    def __init__(self, responder: Responder | None = None, *, latency: float = 0.0,
                 max_concurrency: int | None = None, models: tuple[str, ...] | list[str] = ("stub-task", "stub-opt"),
                 api_key: str | None = None):
        self.responder = responder or (lambda req: "ok")
        self.latency, self.models, self.api_key = latency, list(models), api_key
        self._sem = threading.Semaphore(max_concurrency) if max_concurrency else None
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._faults: list[tuple[str, dict]] = []
        self._rate: tuple[float, list[str], random.Random] | None = None
        self.faults_served = 0
        self.faults_by_kind: dict[str, int] = {}
        self.billed = 0  # replies that carried usage (tokens): what a paying user is charged for
        self.billed_by_model: dict[str, list[int]] = {}  # model -> [prompt tokens, completion tokens, calls]
        self.send_usage = True  # False: a server that reports no usage
        self._inflight = 0
        self.max_seen_concurrency = 0
        self._down = False
        self._httpd: ThreadingHTTPServer | None = None
        self.base_url = ""

    # --- control ------------------------------------------------------------------------------------------------
    def add_faults(self, kind: str, count: int = 1, **opts: Any) -> None:
        with self._lock:
            self._faults.extend([(kind, opts)] * count)

    def set_fault_rate(self, rate: float, kinds: list[str], seed: int = 0) -> None:
        self._rate = (rate, list(kinds), random.Random(seed))

    def set_down(self, down: bool) -> None:
        self._down = down

    def chat_requests(self) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r.get("_path", "").endswith("/chat/completions")]

    def _next_fault(self) -> tuple[str, dict] | None:
        with self._lock:
            fault = None
            if self._faults:
                fault = self._faults.pop(0)
            elif self._rate:
                rate, kinds, rng = self._rate
                if rng.random() < rate:
                    fault = rng.choice(kinds), {}
            if fault:
                self.faults_served += 1
                self.faults_by_kind[fault[0]] = self.faults_by_kind.get(fault[0], 0) + 1
            return fault

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> StubServer:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes: Nagle + delayed ACK add 40 ms

            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                stub._handle(self, "GET")

            def do_POST(self):
                stub._handle(self, "POST")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- handling -----------------------------------------------------------------------------------------------
    def _send(self, h: BaseHTTPRequestHandler, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        if self._down:
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            return self._send(h, 400, {"error": {"message": "bad json"}})
        path = h.path.split("?")[0]
        body["_path"] = path
        body["_headers"] = {k.lower(): v for k, v in h.headers.items()}
        with self._lock:
            self.requests.append(body)
        if self.api_key and h.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._send(h, 401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                                 "code": "invalid_api_key"}})
        if method == "GET" and path.endswith("/models"):
            return self._send(h, 200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "stub"}
                                                                  for m in self.models]})
        if self._sem:
            self._sem.acquire()
        with self._lock:
            self._inflight += 1
            self.max_seen_concurrency = max(self.max_seen_concurrency, self._inflight)
        try:
            self._serve(h, path, body)
        finally:
            with self._lock:
                self._inflight -= 1
            if self._sem:
                self._sem.release()

    def _serve(self, h: BaseHTTPRequestHandler, path: str, body: dict) -> None:
        fault = self._next_fault()
        if self.latency:
            time.sleep(self.latency)
        kind, opts = fault if fault else (None, {})
        if kind == "429":
            hd = {"Retry-After": str(opts.get("retry_after", 0))}
            if "retry_after_ms" in opts:
                hd["retry-after-ms"] = str(opts["retry_after_ms"])
            return self._send(h, 429, {"error": {"message": "rate limited", "type": "rate_limit"}}, hd)
        if kind in ("500", "502", "503"):
            return self._send(h, int(kind), {"error": {"message": f"server error {kind}"}})
        if kind == "timeout":
            time.sleep(opts.get("seconds", 30))
        if kind == "drop":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if kind == "invalid_json":
            return self._send(h, 200, b"{this is not json")
        if path.endswith("/embeddings"):
            inp = body.get("input")
            texts = [inp] if isinstance(inp, str) else list(inp or [])
            with self._lock:
                self.billed += 1
                b = self.billed_by_model.setdefault(body.get("model", "stub"), [0, 0, 0])
                b[0], b[2] = b[0] + sum(map(_words, texts)), b[2] + 1
            return self._send(h, 200, {"object": "list", "model": body.get("model"),
                                       "data": [{"object": "embedding", "index": i, "embedding": _embed(t)}
                                                for i, t in enumerate(texts)],
                                       "usage": {"prompt_tokens": sum(map(_words, texts)),
                                                 "total_tokens": sum(map(_words, texts))}})
        if body.get("stream"):
            return self._send(h, 400, {"error": {"message": "stream is not supported by the stub"}})
        try:
            reply = self.responder(body)
        except Exception as e:  # a scripted failure
            return self._send(h, 500, {"error": {"message": f"responder failed: {e}"}})
        if isinstance(reply, str):
            reply = StubReply(reply)
        text, finish = reply.text, reply.finish_reason
        if kind == "length":
            text, finish = " ".join(text.split()[: max(1, _words(text) // 2)]), "length"
        chat = path.endswith("/chat/completions")
        if chat:
            ptoks = sum(_words(m.get("content") or "") + 1 for m in body.get("messages") or [])
        else:
            ptoks = _words(body.get("prompt") or "")
        usage = {"prompt_tokens": ptoks, "completion_tokens": _words(text), "total_tokens": ptoks + _words(text)}
        choices = [] if kind == "empty_choices" else [self._choice(body, text, finish, reply, chat)]
        obj = "chat.completion" if chat else "text_completion"
        reply_body = {"id": "stub-" + str(len(self.requests)), "object": obj, "created": int(time.time()),
                      "model": body.get("model", "stub"), "choices": choices}
        if self.send_usage:
            reply_body["usage"] = usage
        with self._lock:
            self.billed += 1
            b = self.billed_by_model.setdefault(body.get("model", "stub"), [0, 0, 0])
            b[0], b[1], b[2] = b[0] + ptoks, b[1] + _words(text), b[2] + 1
        return self._send(h, 200, reply_body)

    @staticmethod
    def _choice(body: dict, text: str, finish: str, reply: StubReply, chat: bool) -> dict:
        ch: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            ch["message"] = {"role": "assistant", "content": text}
        else:
            ch["text"] = text
        if body.get("logprobs"):
            k = int(body.get("top_logprobs") or 0)
            content = reply.logprobs or [
                {"token": t, "logprob": -0.1, "bytes": None,
                 "top_logprobs": [{"token": t, "logprob": -0.1, "bytes": None}]
                 + [{"token": f"alt{j}", "logprob": -3.0 - j, "bytes": None} for j in range(max(0, k - 1))]}
                for t in text.split()]
            ch["logprobs"] = {"content": content}
        else:
            ch["logprobs"] = None
        return ch
