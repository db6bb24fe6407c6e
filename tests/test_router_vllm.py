"""The router in front of two real vLLM CPU workers (tiny model, dummy weights): worker 0 runs the
engine plugin (AladdinScheduler, the front door, GET /aladdin/state) with a small KV cache, worker
1 is stock vLLM (the session's pair, conftest's mixed_cluster); each test runs its own in-process router
against them. Checked: pass-through equals direct (streaming and not, temperature 0), the worker
header, bad input, a hand-back by the plugin retried on the other worker, overload 429s, client
disconnects aborting on the workers, and a worker killed mid-run (last: it takes a worker away)
leaving no hung request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest
from aiohttp import web

from aladdin.plugin.router.app import Router
from aladdin.plugin.router.config import RouterConfig, Timeouts
from aladdin.plugin.router.inputs import HFTokenizer

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = "tiny"


@pytest.fixture(scope="module")
def workers(mixed_cluster):
    return mixed_cluster


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return HFTokenizer(tiny_model_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def router_for(cluster, tokenizer, **overrides):
    config = RouterConfig(workers=overrides.pop("workers", tuple(cluster.urls)), policy=overrides.pop("policy", "rr"),
                          health_interval_s=0.2,
                          timeouts=overrides.pop("timeouts", Timeouts(first_token=60, read=30, request=120, queue=30)),
                          **overrides)
    router = Router(config, tokenizer=tokenizer)
    runner = web.AppRunner(router.application(), handler_cancellation=True, access_log=None, shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    router.base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            router.client = session
            yield router
    finally:
        await runner.cleanup()


async def post(session, url: str, body: dict, headers: dict | None = None) -> tuple[int, dict, bytes]:
    async with session.post(url, json=body, headers=headers or {}) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def stream_text(raw: bytes) -> tuple[str, list]:
    text, finish = "", []
    for event in raw.split(b"\n\n"):
        if event.startswith(b"data: {"):
            chunk = json.loads(event[6:])
            for choice in chunk.get("choices") or []:
                text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                if choice.get("finish_reason"):
                    finish.append(choice["finish_reason"])
    return text, finish


async def until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def running_on(session, url: str) -> float:
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")))


def long_prompt(words: int) -> str:
    """About ``words`` + 1 tokens (each word one token of the tiny tokenizer, plus BOS)."""
    return " ".join(["the"] * words)


# ---------------------------------------------------------------------------------------


def test_pass_through_equals_direct_with_the_worker_header(workers, tokenizer):
    async def main():
        async with router_for(workers, tokenizer) as router:
            ids = {w.url: f"127.0.0.1:{w.port}" for w in workers.workers}
            by_id = {v: k for k, v in ids.items()}
            body = {"model": MODEL, "prompt": "The quick brown fox jumps over", "max_tokens": 16, "temperature": 0,
                    "ignore_eos": True}
            seen = set()
            for stream in (False, False, True, True):  # round robin: each worker once per mode
                request = {**body, "stream": stream}
                status, headers, raw = await post(router.client, router.base + "/v1/completions", request)
                assert status == 200, raw
                worker = headers["X-Aladdin-Worker"]
                seen.add((worker, stream))
                d_status, _, direct = await post(router.client, by_id[worker] + "/v1/completions", request)
                assert d_status == 200
                if stream:
                    assert stream_text(raw) == stream_text(direct) and stream_text(raw)[1] == ["length"]
                    assert b'"usage"' not in raw  # the usage chunk the router asked for is not passed on
                else:
                    got, want = json.loads(raw), json.loads(direct)
                    assert got["choices"][0]["text"] == want["choices"][0]["text"]
                    assert got["usage"] == want["usage"] and got["usage"]["completion_tokens"] == 16
            assert seen == {(i, s) for i in ids.values() for s in (False, True)}
            # chat: whatever the worker answers direct (the tiny model may have no chat template)
            chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
            status, headers, raw = await post(router.client, router.base + "/v1/chat/completions", chat)
            d_status, _, direct = await post(router.client, by_id[headers["X-Aladdin-Worker"]] + "/v1/chat/completions",
                                             chat)
            assert status == d_status and (status != 200 or json.loads(raw)["choices"] == json.loads(direct)["choices"])
            # bad input against the real context length and model list
            too_long = {"model": MODEL, "prompt": long_prompt(2100), "max_tokens": 4}
            status, _, raw = await post(router.client, router.base + "/v1/completions", too_long)
            assert status == 400 and "largest worker context is 2048" in raw.decode()
            status, _, raw = await post(router.client, router.base + "/v1/completions", {**body, "model": "nope"})
            assert status == 404
            async with router.client.get(router.base + "/state") as resp:
                state = await resp.json()
            assert [w["source"] for w in state["workers"]] == ["aladdin-state", "vllm-metrics"]
            assert [w["kv_capacity_tokens"] for w in state["workers"]] == [2048, 8160]
            assert state["in_flight"] == 0

    asyncio.run(main())


def test_the_cli_serves_and_exports_metrics(workers, tiny_model_dir):
    port = free_port()
    command = [sys.executable, "-m", "aladdin", "router", "--port", str(port), "--policy", "aladdin",
               "--tokenizer", str(tiny_model_dir), *[arg for url in workers.urls for arg in ("--worker", url)]]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        async def main():
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as session:
                async def up() -> bool:
                    assert proc.poll() is None, proc.stdout.read().decode()
                    try:
                        async with session.get(base + "/health") as resp:
                            return resp.status == 200
                    except aiohttp.ClientError:
                        return False

                await until(up, 120)
                status, headers, raw = await post(session, base + "/v1/completions",
                                                  {"model": MODEL, "prompt": "hello", "max_tokens": 4})
                assert status == 200 and "X-Aladdin-Worker" in headers
                async with session.get(base + "/metrics") as resp:
                    text = await resp.text()
                assert "aladdin_router_placements_total" in text and "aladdin_desired_workers" in text

        asyncio.run(main())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_hand_back_by_the_engine_plugin_is_re_placed_on_the_stock_worker(workers, tokenizer):
    async def main():
        async with router_for(workers, tokenizer) as router:
            plugin_url, stock_url = workers.urls
            long = {"model": MODEL, "prompt": long_prompt(1000), "max_tokens": 1000, "ignore_eos": True,
                    "stream": True}
            first = await router.client.post(router.base + "/v1/completions", json=long)  # rr: the plugin worker
            await first.content.readuntil(b"\n\n")
            assert first.headers["X-Aladdin-Worker"].endswith(f":{workers.workers[0].port}")
            status, headers, _ = await post(router.client, router.base + "/v1/completions",  # rr: the stock worker
                                            {"model": MODEL, "prompt": "hi", "max_tokens": 2})
            assert status == 200 and headers["X-Aladdin-Worker"].endswith(f":{workers.workers[1].port}")
            # rr: the plugin worker again, whose KV is taken: it holds the request, its TTFT runs out
            # there, it is handed back (503, X-Aladdin-Outcome) and the router re-places it
            status, headers, raw = await post(router.client, router.base + "/v1/completions",
                                              {**long, "max_tokens": 8, "stream": False},
                                              headers={"X-Aladdin-TTFT-SLO-Ms": "300"})
            assert status == 200, raw
            assert headers["X-Aladdin-Worker"].endswith(f":{workers.workers[1].port}")
            assert json.loads(raw)["usage"]["completion_tokens"] == 8
            assert router.metrics.retries.value("handed_back") == 1
            async with router.client.get(plugin_url + "/aladdin/state") as resp:
                assert (await resp.json())["handed_back_total"] >= 1
            first.close()  # the client goes away: the worker aborts the long request

            async def idle() -> bool:
                return await running_on(router.client, plugin_url) == 0

            await until(idle)
            assert stock_url

    asyncio.run(main())


def test_overload_is_429_and_disconnects_abort_on_the_workers(workers, tokenizer):
    async def main():
        async with router_for(workers, tokenizer, policy="aladdin", max_queue=0) as router:
            # ~1000 prompt tokens + 900 predicted (the client's own prediction): 1 fits the plugin
            # worker's 2048 KV tokens, 4 the stock worker's 8160; the sixth has no room
            body = {"model": MODEL, "prompt": long_prompt(1000), "max_tokens": 900, "ignore_eos": True, "stream": True,
                    "vllm_xargs": {"aladdin_output_tokens": 900}}
            streams = []
            for _ in range(5):
                resp = await router.client.post(router.base + "/v1/completions", json=body)
                assert resp.status == 200
                await resp.content.readuntil(b"\n\n")
                streams.append(resp)
            placed = sorted(r.headers["X-Aladdin-Worker"] for r in streams)
            assert len(set(placed)) == 2
            status, headers, raw = await post(router.client, router.base + "/v1/completions", {**body, "stream": False})
            assert status == 429 and headers["Retry-After"] == "1", raw
            assert "queue is full" in json.loads(raw)["error"]["message"]
            for resp in streams:
                resp.close()

            async def idle() -> bool:
                counts = [await running_on(router.client, url) for url in workers.urls]
                return not any(counts) and not router.placer.tickets

            await until(idle)

    asyncio.run(main())


@contextlib.asynccontextmanager
async def round_robin_l4(backends: list[int]):
    """A minimal TCP (L4) balancer: each new connection goes to the next backend port."""
    turn = iter(range(1 << 30))

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def accept(client_reader, client_writer):
        port = backends[next(turn) % len(backends)]
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def test_two_router_groups_behind_an_l4_balancer_each_place_on_their_own_workers(workers, tokenizer):
    """The paper's grouped schedulers: one router per group of workers, any balancer in front."""
    async def main():
        group_a, group_b = ([url] for url in workers.urls)
        async with router_for(workers, tokenizer, policy="aladdin", workers=tuple(group_a)) as router_a, \
                router_for(workers, tokenizer, policy="aladdin", workers=tuple(group_b)) as router_b:
            ports = [int(r.base.rsplit(":", 1)[1]) for r in (router_a, router_b)]
            own = {ports[0]: f"127.0.0.1:{workers.workers[0].port}", ports[1]: f"127.0.0.1:{workers.workers[1].port}"}
            async with round_robin_l4(ports) as front:
                body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "ignore_eos": True,
                        "stream": True}
                connector = aiohttp.TCPConnector(force_close=True)  # one connection per request: the L4 spreads them
                async with aiohttp.ClientSession(connector=connector) as session:
                    results = await asyncio.gather(*[post(session, f"http://127.0.0.1:{front}/v1/completions", body)
                                                     for _ in range(6)])
            assert all(status == 200 and stream_text(raw)[1] == ["length"] for status, _, raw in results)
            served = [headers["X-Aladdin-Worker"] for _, headers, _ in results]
            assert sorted(set(served)) == sorted(own.values())
            for router, port in ((router_a, ports[0]), (router_b, ports[1])):
                async with router.client.get(router.base + "/state") as resp:
                    state = await resp.json()
                assert [w["id"] for w in state["workers"]] == [own[port]]
                assert set(router.metrics.placements.values) == {(own[port],)}
                assert sum(router.metrics.placements.values.values()) == served.count(own[port])

    asyncio.run(main())


def test_a_worker_killed_mid_run_leaves_no_hung_request(workers, tokenizer):
    """Runs last in this module: the stock worker does not come back."""
    async def main():
        async with router_for(workers, tokenizer, policy="jsq") as router:
            body = {"model": MODEL, "prompt": long_prompt(100), "max_tokens": 600, "ignore_eos": True}
            stock = workers.workers[1]
            stock_id = f"127.0.0.1:{stock.port}"
            streams = []
            for _ in range(4):  # jsq alternates: two streams on each worker, all mid-stream
                resp = await router.client.post(router.base + "/v1/completions", json={**body, "stream": True})
                first = await resp.content.readuntil(b"\n\n")
                streams.append((resp, first))
            assert sum(r.headers["X-Aladdin-Worker"] == stock_id for r, _ in streams) == 2

            async def plain() -> tuple[int, bytes]:
                async with router.client.post(router.base + "/v1/completions", json=body) as resp:
                    return resp.status, await resp.read()

            plains = [asyncio.create_task(plain()) for _ in range(4)]

            async def placed() -> bool:
                return sum(router.metrics.placements.values.values()) >= 8

            await until(placed)
            assert router.metrics.placements.value(stock_id) >= 3  # both kinds are on the stock worker
            os.killpg(stock.pid, signal.SIGKILL)
            os.waitpid(stock.pid, 0)

            async def rest(resp, first) -> tuple[int, bytes]:
                return resp.status, first + await resp.read()

            results = await asyncio.wait_for(asyncio.gather(*[rest(r, f) for r, f in streams], *plains), 180)
            outcomes = []
            for status, raw in results:  # every request served or answered with a clear error
                if status == 200 and raw.startswith(b"data:"):
                    text, finish = stream_text(raw)
                    cut = b'"error"' in raw
                    assert finish == ["length"] or (cut and b"incomplete" in raw), raw[-300:]
                    assert raw.rstrip().endswith(b"data: [DONE]")
                    outcomes.append("cut" if cut else "ok")
                elif status == 200:
                    assert json.loads(raw)["usage"]["completion_tokens"] == 600
                    outcomes.append("ok")
                else:
                    assert json.loads(raw)["error"]["message"], raw
                    outcomes.append(str(status))
            print("outcomes:", outcomes, "retries:", dict(router.metrics.retries.values))
            assert outcomes[:4].count("cut") == 2 and outcomes[4:].count("ok") == 4  # plain ones were re-placed

            async def stock_left() -> bool:
                return not router.workers.endpoints[stock_id].up

            await until(stock_left)
            assert not router.placer.tickets and not router.placer.scheduler.requests
            status, headers, _ = await post(router.client, router.base + "/v1/completions",
                                            {"model": MODEL, "prompt": "hi", "max_tokens": 2})
            assert status == 200 and headers["X-Aladdin-Worker"] != stock_id

    asyncio.run(main())
