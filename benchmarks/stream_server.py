"""A loopback OpenAI-style streaming server that answers on a known schedule.

Only for measuring the *client* (the replayer, or the router as a proxy): its first token comes
``--ttft`` after the request arrives and each next token ``--tbt`` later, so anything a client
measures beyond that is the client's own error (and the proxy's, through a router). It is not
a model server and stands in for none.

    python benchmarks/stream_server.py --port 8999 --ttft 0.05 --tbt 0.01
    python benchmarks/stream_server.py --ports 8100,8101,8102,8103 --model tiny   # one process, 4 workers

Besides the completions it answers what the router probes (``/health``, ``/metrics`` with
vLLM's ``vllm:cache_config_info``, ``max_model_len`` in ``/v1/models``), and it measures its own
schedule: a request's ``user`` field ``GROUP:...`` files it under GROUP, and ``GET /bench/stats``
gives per group the TTFT (first write minus arrival) and gaps between token writes as this
server made them, plus how late each write was against its target, so a client's error is
separable from the server's (``POST /bench/reset`` clears them; all ports share them).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import time

from aiohttp import web


class Schedule:
    """What the server itself did, per group: TTFTs, token-write gaps and lateness (seconds)."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, list[float]]] = {}

    def record(self, group: str, arrival: float, writes: list[float], targets: list[float]) -> None:
        g = self.groups.setdefault(group, {"ttft": [], "tbt": [], "late": []})
        if writes:
            g["ttft"].append(writes[0] - arrival)
            g["tbt"].extend(b - a for a, b in zip(writes, writes[1:]))
            g["late"].extend(w - t for w, t in zip(writes, targets))

    def stats(self) -> dict[str, dict[str, float | int | None]]:
        out = {}
        for name, g in self.groups.items():
            row: dict[str, float | int | None] = {"requests": len(g["ttft"]), "tokens": len(g["late"])}
            for key, values in g.items():
                ordered = sorted(values)
                for q in (50, 99):
                    row[f"{key}_p{q}_ms"] = _pct(ordered, q) * 1e3 if ordered else None
                row[f"{key}_max_ms"] = ordered[-1] * 1e3 if ordered else None
            out[name] = row
        return out


def _pct(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of a sorted list."""
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@functools.lru_cache(maxsize=4096)
def _chunk(i: int, n: int, prompt_tokens: int) -> bytes:
    chunk = {
        "object": "text_completion",
        "choices": [{"index": 0, "text": " tok", "finish_reason": "length" if i == n - 1 else None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": i + 1},
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def make_app(ttft: float, tbt: float, error_every: int = 0, model: str = "fake", *, name: str = "fake-0",
             schedule: Schedule | None = None, max_model_len: int = 32768, kv_blocks: int = 1 << 16,
             block_size: int = 16) -> web.Application:
    counter = itertools.count(1)
    schedule = schedule if schedule is not None else Schedule()

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model",
                                                              "max_model_len": max_model_len}]})

    async def health(_request: web.Request) -> web.Response:
        return web.Response()

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text=(
            f'vllm:cache_config_info{{block_size="{block_size}",num_gpu_blocks="{kv_blocks}"}} 1.0\n'
            f'vllm:num_requests_running{{model_name="{model}"}} 0.0\n'
            f'vllm:num_requests_waiting{{model_name="{model}"}} 0.0\n'
            f'vllm:kv_cache_usage_perc{{model_name="{model}"}} 0.0\n'))

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(schedule.stats())

    async def reset(_request: web.Request) -> web.Response:
        schedule.groups.clear()
        return web.json_response({})

    async def completions(request: web.Request) -> web.StreamResponse:
        t_arrival = time.perf_counter()
        body = await request.json()
        n = next(counter)
        if error_every and n % error_every == 0:
            return web.json_response({"error": {"message": f"injected failure #{n}", "code": 500}}, status=500)
        max_tokens = int(body.get("max_tokens", 16))
        prompt = body.get("prompt") or body.get("messages", [{}])[-1].get("content", "")
        prompt_tokens = len(prompt) if isinstance(prompt, list) else max(1, len(str(prompt).split()))
        user = body.get("user")
        group = user.partition(":")[0] if isinstance(user, str) and ":" in user else None
        writes: list[float] = []
        targets: list[float] = []
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Aladdin-Worker": name})
        await resp.prepare(request)
        for i in range(max_tokens):
            target = t_arrival + ttft + i * tbt  # absolute targets: no drift
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if group is not None:
                writes.append(time.perf_counter())
                targets.append(target)
            await resp.write(_chunk(i, max_tokens, prompt_tokens))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens, "total_tokens": prompt_tokens + max_tokens}
        await resp.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        if group is not None:
            schedule.record(group, t_arrival, writes, targets)
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/bench/stats", stats)
    app.router.add_post("/bench/reset", reset)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", completions)
    return app


async def serve(ports: list[int], args: argparse.Namespace) -> None:
    schedule = Schedule()
    runners = []
    for k, port in enumerate(ports):
        app = make_app(args.ttft, args.tbt, args.error_every, args.model, name=f"fake-{k}", schedule=schedule,
                       max_model_len=args.max_model_len, kv_blocks=args.kv_blocks)
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=args.keepalive)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8999)
    parser.add_argument("--ports", default=None, help="comma-separated ports served by this one process "
                        "(each a worker named fake-K; overrides --port)")
    parser.add_argument("--ttft", type=float, default=0.05, help="seconds to the first token")
    parser.add_argument("--tbt", type=float, default=0.01, help="seconds between tokens")
    parser.add_argument("--error-every", type=int, default=0, help="answer every K-th request with HTTP 500")
    parser.add_argument("--keepalive", type=float, default=75.0, help="seconds an idle connection is kept open")
    parser.add_argument("--model", default="fake", help="the model id served (tiny: the router uses its tokenizer)")
    parser.add_argument("--max-model-len", type=int, default=32768)
    parser.add_argument("--kv-blocks", type=int, default=1 << 16, help="KV blocks of 16 tokens reported in /metrics")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    ports = [int(p) for p in args.ports.split(",")] if args.ports else [args.port]
    try:
        asyncio.run(serve(ports, args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
