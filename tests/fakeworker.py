"""A vLLM stand-in for the front ends' tests (router, picker): the point there is the proxy and
the protocol, not the engine, so its timing and failures are scripted (``behaviors``)."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field

from aiohttp import web

MODEL = "fake"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FakeWorker:
    """A vLLM stand-in: ``behaviors`` are taken one per completion request (then ``ok``):
    ok, handback, busy (plain 503), die (connection dropped before any byte), cut (two events,
    then the connection dropped), stall (two events, then silence with the connection open),
    hang (never answers), slow (an event every 20 ms, for long), error400."""

    port: int = field(default_factory=free_port)
    behaviors: list[str] = field(default_factory=list)
    kv_blocks: int = 1025  # vLLM's num_gpu_blocks (one is its null block)
    block_size: int = 16
    max_model_len: int = 2048
    healthy: bool = True
    plugin_state: bool = False
    decode_scale: float | None = None  # reported in /aladdin/state when set
    received: list[dict] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    peers: set = field(default_factory=set)  # client ports the completions came from
    aborted: list[str] = field(default_factory=list)
    running: dict[str, int] = field(default_factory=dict)  # X-Request-Id -> tokens sent
    finished: list[dict] = field(default_factory=list)  # the plugin state's ended requests
    served: asyncio.Event | None = None
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def id(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        if self.plugin_state:
            app.router.add_get("/aladdin/state", self.state)
        app.router.add_post("/v1/completions", self.complete)
        app.router.add_post("/v1/chat/completions", self.complete)
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 500)

    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model",
                                                              "max_model_len": self.max_model_len}]})

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(text=(
            f'vllm:cache_config_info{{block_size="{self.block_size}",num_gpu_blocks="{self.kv_blocks}"}} 1.0\n'
            f'vllm:num_requests_running{{model_name="{MODEL}"}} {len(self.running)}\n'
            f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 0.0\n'
            f'vllm:kv_cache_usage_perc{{model_name="{MODEL}"}} 0.25\n'))

    async def state(self, _request: web.Request) -> web.Response:
        rows = [{"id": f"cmpl-{rid}-0", "generated_tokens": n, "predicted_output_tokens": 8, "prompt_tokens": 3}
                for rid, n in self.running.items()]
        capacity = (self.kv_blocks - 1) * self.block_size
        extra = {} if self.decode_scale is None else {"decode_scale": self.decode_scale}
        since = int(_request.query.get("finished_since", 0))
        finished = [row for row in self.finished if row["seq"] > since]
        return web.json_response({"capacity_tokens": capacity, "block_size": self.block_size, "kv_held_tokens": 32,
                                  "running": rows, "waiting": [], "held": [], "finished": finished,
                                  "finished_seq": len(self.finished), **extra})

    def _chunk(self, chat: bool, i: int, n: int) -> dict:
        finish = "length" if i == n - 1 else None
        if chat:
            return {"object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": f" t{i}"}, "finish_reason": finish}]}
        return {"object": "text_completion", "choices": [{"index": 0, "text": f" t{i}", "finish_reason": finish}]}

    async def complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        rid = request.headers.get("X-Request-Id", "")
        self.peers.add((request.transport.get_extra_info("peername") or ("", 0))[1])
        self.received.append(body)
        self.request_ids.append(rid)
        behavior = self.behaviors.pop(0) if self.behaviors else "ok"
        chat = request.path.endswith("/chat/completions")
        n = int(body.get("max_tokens") or 8)
        if behavior == "handback":
            return web.json_response({"error": {"message": "aladdin handed-back: TTFT lost here", "code": 503}},
                                     status=503, headers={"Retry-After": "1", "X-Aladdin-Outcome": "handed-back"})
        if behavior == "busy":
            return web.json_response({"error": {"message": "busy", "code": 503}}, status=503)
        if behavior == "error400":
            return web.json_response({"error": {"message": "worker says no", "code": 400}}, status=400)
        if behavior == "die":
            request.transport.close()
            await asyncio.sleep(3600)
        if behavior == "hang":
            try:
                await asyncio.sleep(3600)
            finally:
                self.aborted.append(rid)
        self.running[rid] = 0
        try:
            if not body.get("stream"):
                self.running[rid] = n
                text = "".join(f" t{i}" for i in range(n))
                choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                          if chat else {"index": 0, "text": text, "finish_reason": "length"})
                return web.json_response({"object": "chat.completion" if chat else "text_completion",
                                          "choices": [choice], "usage": {"completion_tokens": n, "prompt_tokens": 3}})
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            count = 10_000 if behavior == "slow" else n
            for i in range(count):
                if behavior == "cut" and i == 2:
                    request.transport.close()
                    await asyncio.sleep(3600)
                if behavior == "stall" and i == 2:
                    await asyncio.sleep(3600)
                await response.write(b"data: " + json.dumps(self._chunk(chat, i, count)).encode() + b"\n\n")
                self.running[rid] = i + 1
                await asyncio.sleep(0.02 if behavior == "slow" else 0)
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 3, "completion_tokens": count, "total_tokens": 3 + count}
                await response.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            self.aborted.append(rid)
            raise
        finally:
            sent = self.running.pop(rid, None)
            if sent is not None:
                self.finished.append({"seq": len(self.finished) + 1, "id": f"cmpl-{rid}-0", "output_tokens": sent,
                                      "aborted": False})


