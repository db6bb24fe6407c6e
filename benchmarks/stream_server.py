"""A loopback OpenAI-style streaming server that answers on a known schedule.

Only for measuring the *client*: its first token comes ``--ttft`` after the request arrives
and each next token ``--tbt`` later, so anything the replayer measures beyond that is the
client's own error. It is not a model server and stands in for none.

    python benchmarks/stream_server.py --port 8999 --ttft 0.05 --tbt 0.01
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time

from aiohttp import web


def make_app(ttft: float, tbt: float, error_every: int = 0, model: str = "fake") -> web.Application:
    counter = itertools.count(1)

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model"}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        t_arrival = time.perf_counter()
        body = await request.json()
        n = next(counter)
        if error_every and n % error_every == 0:
            return web.json_response({"error": {"message": f"injected failure #{n}", "code": 500}}, status=500)
        max_tokens = int(body.get("max_tokens", 16))
        prompt = body.get("prompt") or body.get("messages", [{}])[-1].get("content", "")
        prompt_tokens = len(prompt) if isinstance(prompt, list) else max(1, len(str(prompt).split()))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Aladdin-Worker": "fake-0"})
        await resp.prepare(request)
        for i in range(max_tokens):
            target = t_arrival + ttft + i * tbt  # absolute targets: no drift
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            chunk = {
                "object": "text_completion",
                "choices": [{"index": 0, "text": " tok", "finish_reason": "length" if i == max_tokens - 1 else None}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": i + 1},
            }
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens, "total_tokens": prompt_tokens + max_tokens}
        await resp.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", completions)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8999)
    parser.add_argument("--ttft", type=float, default=0.05, help="seconds to the first token")
    parser.add_argument("--tbt", type=float, default=0.01, help="seconds between tokens")
    parser.add_argument("--error-every", type=int, default=0, help="answer every K-th request with HTTP 500")
    parser.add_argument("--keepalive", type=float, default=75.0, help="seconds an idle connection is kept open")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(args.ttft, args.tbt, args.error_every), host="127.0.0.1", port=args.port,
                print=None, access_log=None, keepalive_timeout=args.keepalive)


if __name__ == "__main__":
    main()
