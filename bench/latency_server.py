"""An OpenAI-compatible chat endpoint that answers every request after a fixed latency L and serves at most C at
once: the stand-in for a serving cluster in bench_engine.py.

Written on asyncio rather than tests/stub_server.py's thread per connection, because at 300+ requests a second the
threaded stub's own CPU (a thread per connection, http.server's parsing) became the bottleneck the benchmark measured,
not the engine. It speaks only what the engine sends: POST /v1/chat/completions with a JSON body, HTTP/1.1 keep-alive.

    python bench/latency_server.py LATENCY CONCURRENCY   # prints its base URL, serves until killed
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

REPLY = {"object": "chat.completion", "model": "stub-task",
         "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "positive"},
                      "logprobs": None}],
         "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}}


def response(status: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: keep-alive\r\n\r\n").encode() + data


async def serve(latency: float, concurrency: int) -> None:
    slots = asyncio.Semaphore(concurrency)
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                if not head.startswith(b"POST ") or b"/chat/completions" not in head.split(b"\r\n", 1)[0]:
                    writer.write(response("404 Not Found", {"error": {"message": "not found"}}))
                    continue
                json.loads(body)  # a malformed body is the engine's bug: let it show as a dropped connection
                async with slots:
                    await asyncio.sleep(latency)
                count += 1
                writer.write(response("200 OK", {**REPLY, "id": f"stub-{count}", "created": int(time.time())}))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(float(sys.argv[1]), int(sys.argv[2])))
