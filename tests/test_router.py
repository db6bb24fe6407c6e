"""The router against fake upstream workers (the point is the proxy): pass-through, the worker
header and vllm_xargs, hand-back and failure retries, overload 429s, late binding from the queue,
bad input, client disconnects, mid-stream cuts, timeouts, health, metrics and state. Each test
starts its fake workers and one router in-process on loopback ports (milliseconds)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web
from fakeworker import MODEL, FakeWorker, free_port

from aladdin.plugin.router.app import Router
from aladdin.plugin.router.config import RouterConfig, ScalingConfig, Timeouts
from aladdin.plugin.router.inputs import WordTokenizer
from aladdin.plugin.router.metrics import Counter, Gauge, Histogram, Registry
from aladdin.plugin.router.proxy import StreamTracker
from aladdin.plugin.router.workers import parse_metrics

pytestmark = pytest.mark.timeout(30)


@contextlib.asynccontextmanager
async def router_for(workers: list[FakeWorker], start_workers: bool = True, **overrides):
    if start_workers:
        for worker in workers:
            await worker.start()
    timeouts = overrides.pop("timeouts", Timeouts(queue=5.0, first_token=5.0, read=5.0, request=5.0, health=1.0))
    config = RouterConfig(workers=tuple(w.url for w in workers), policy=overrides.pop("policy", "jsq"),
                          health_interval_s=overrides.pop("health_interval_s", 0.05), state_interval_s=0.05,
                          startup_timeout_s=overrides.pop("startup_timeout_s", 2.0), timeouts=timeouts, **overrides)
    router = Router(config, tokenizer=WordTokenizer())
    runner = web.AppRunner(router.application(), handler_cancellation=True, access_log=None,
                           shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    router.base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        router.client = session
        try:
            yield router
        finally:
            await runner.cleanup()
            for worker in workers:
                await worker.stop()


async def post(router, body: dict, path: str = "/v1/completions", headers: dict | None = None,
               raw: bytes | None = None) -> tuple[int, dict, bytes]:
    data = raw if raw is not None else json.dumps(body).encode()
    async with router.client.post(router.base + path, data=data, headers={"Content-Type": "application/json",
                                                                            **(headers or {})}) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def events(raw: bytes) -> list[dict | str]:
    out: list[dict | str] = []
    for event in raw.split(b"\n\n"):
        if event.startswith(b"data: "):
            data = event[6:]
            out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


def text_of(raw: bytes) -> str:
    return "".join(c["choices"][0].get("text") or c["choices"][0].get("delta", {}).get("content", "")
                   for c in events(raw) if isinstance(c, dict) and c.get("choices"))


async def get_json(router, path: str) -> dict:
    async with router.client.get(router.base + path) as resp:
        return await resp.json()


async def settled(router) -> None:
    """Wait until the router has no request in flight (each handler's finally ran)."""
    await until(lambda: not router.placer.tickets and not router.placer.scheduler.requests)


async def until(condition, timeout: float = 5.0) -> None:
    """Wait for a condition the router reaches on its own (a poll or a health check)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------------------------------


def test_streaming_and_plain_pass_through_with_worker_header_and_xargs():
    async def main():
        worker = FakeWorker()
        async with router_for([worker], ttft_slo=2.0) as router:
            body = {"model": MODEL, "prompt": "a b c", "max_tokens": 5, "stream": True}
            status, headers, raw = await post(router, body, headers={"X-Aladdin-ATGT-SLO-Ms": "50"})
            assert status == 200 and headers["X-Aladdin-Worker"] == worker.id
            assert text_of(raw) == " t0 t1 t2 t3 t4" and events(raw)[-1] == "[DONE]"
            assert not any(isinstance(e, dict) and "usage" in e and not e.get("choices") for e in events(raw))
            xargs = worker.received[-1]["vllm_xargs"]
            assert 1 <= xargs["aladdin_output_tokens"] <= 5 and xargs["aladdin_atgt_slo"] == pytest.approx(0.05)
            assert 0 < xargs["aladdin_ttft_slo"] <= 2.0
            assert worker.request_ids[-1].startswith("rtr")
            # the client's own usage request is honoured, and llm-d's headers are read too
            body["stream_options"] = {"include_usage": True}
            status, _, raw = await post(router, body, headers={"x-llm-d-slo-ttft-ms": "900", "x-llm-d-slo-tpot-ms": "40"})
            assert status == 200 and events(raw)[-2]["usage"]["completion_tokens"] == 5
            assert worker.received[-1]["vllm_xargs"]["aladdin_atgt_slo"] == pytest.approx(0.04)
            assert worker.received[-1]["vllm_xargs"]["aladdin_ttft_slo"] <= 0.9
            status, headers, raw = await post(router, {"model": MODEL, "prompt": "a b c", "max_tokens": 3})
            assert status == 200 and headers["X-Aladdin-Worker"] == worker.id
            assert json.loads(raw)["choices"][0]["text"] == " t0 t1 t2"
            chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 2, "stream": True}
            status, _, raw = await post(router, chat, "/v1/chat/completions")
            assert status == 200 and text_of(raw) == " t0 t1"
            await settled(router)
            assert router.placer.scheduler.predictor is not None
            state = await get_json(router, "/state")
            assert state["totals"]["requests"]["ok"] == 4 and state["in_flight"] == 0
            models = await get_json(router, "/v1/models")
            assert [m["id"] for m in models["data"]] == [MODEL]

    run(main())


def test_a_hand_back_is_re_placed_on_another_worker():
    async def main():
        first, second = FakeWorker(behaviors=["handback"]), FakeWorker()
        async with router_for([first, second], policy="rr") as router:
            status, headers, raw = await post(router, {"model": MODEL, "prompt": "x", "max_tokens": 2, "stream": True})
            assert status == 200 and headers["X-Aladdin-Worker"] == second.id and text_of(raw) == " t0 t1"
            assert len(first.received) == 1 and len(second.received) == 1
            assert first.request_ids[0] == second.request_ids[0]  # one request, re-placed
            assert router.metrics.retries.value("handed_back") == 1
            assert router.workers.endpoints[first.id].up  # a hand-back is not a failure
            await settled(router)

    run(main())


def test_every_worker_handing_back_ends_with_a_clear_answer():
    async def main():
        workers = [FakeWorker(behaviors=["handback"]), FakeWorker(behaviors=["busy"])]
        async with router_for(workers) as router:
            status, headers, raw = await post(router, {"model": MODEL, "prompt": "x", "max_tokens": 2})
            assert status == 429 and headers["Retry-After"] == "1"
            assert "every worker handed the request back" in json.loads(raw)["error"]["message"]
            await settled(router)
            status, _, _ = await post(router, {"model": MODEL, "prompt": "x", "max_tokens": 2})
            assert status == 200  # the behaviours are used up: it keeps serving

    run(main())


def test_a_worker_that_drops_requests_before_the_first_byte_is_retried_elsewhere():
    async def main():
        dying, good = FakeWorker(behaviors=["die"]), FakeWorker()
        async with router_for([dying, good], policy="rr", unhealthy_after=1) as router:
            for stream in (True, False):
                status, headers, raw = await post(router, {"model": MODEL, "prompt": "x", "max_tokens": 2,
                                                           "stream": stream})
                assert status == 200 and headers["X-Aladdin-Worker"] == good.id, raw
                dying.behaviors.append("die")
            assert router.metrics.retries.value("failed") >= 1
            await settled(router)

    run(main())


def test_a_worker_down_at_start_up_brings_its_own_kv_cache_when_it_joins():
    async def main():
        late, good = FakeWorker(kv_blocks=65), FakeWorker()  # 1024 KV tokens against 16384
        await good.start()
        async with router_for([late, good], start_workers=False, startup_timeout_s=0.1) as router:
            core = router.placer.scheduler
            assert core.worker(late.id).perf.kv.capacity_tokens == 16384  # not known yet: the best known
            await late.start()
            await until(lambda: router.workers.endpoints[late.id].up)
            assert core.worker(late.id).perf.kv.capacity_tokens == 1024
            assert core.pool.scalar("capacity")[core.worker(late.id).index] == 1024

    asyncio.run(main())


def test_a_refusing_worker_leaves_the_pool_and_rejoins_when_healthy():
    async def main():
        down, good = FakeWorker(), FakeWorker()
        await good.start()
        async with router_for([down, good], start_workers=False, policy="rr", startup_timeout_s=0.1) as router:
            state = await get_json(router, "/state")
            assert [w["up"] for w in state["workers"]] == [False, True]
            for _ in range(3):
                status, headers, _ = await post(router, {"model": MODEL, "prompt": "x", "max_tokens": 1})
                assert status == 200 and headers["X-Aladdin-Worker"] == good.id
            await down.start()
            await until(lambda: router.workers.endpoints[down.id].up)
            seen = set()
            for _ in range(4):
                _, headers, _ = await post(router, {"model": MODEL, "prompt": "x", "max_tokens": 1})
                seen.add(headers["X-Aladdin-Worker"])
            assert seen == {down.id, good.id}
            good.healthy = False  # fails its health checks: leaves
            await until(lambda: not router.workers.endpoints[good.id].up)
            _, headers, _ = await post(router, {"model": MODEL, "prompt": "x", "max_tokens": 1})
            assert headers["X-Aladdin-Worker"] == down.id
            metrics = await (await router.client.get(router.base + "/metrics")).text()
            assert f'aladdin_router_worker_up{{worker="{good.id}"}} 0' in metrics

    run(main())


def test_a_stream_cut_mid_way_ends_with_an_error_event():
    async def main():
        worker = FakeWorker(behaviors=["cut"])
        async with router_for([worker]) as router:
            status, _, raw = await post(router, {"model": MODEL, "prompt": "x", "max_tokens": 6, "stream": True})
            assert status == 200
            got = events(raw)
            assert text_of(raw) == " t0 t1" and "error" in got[-2] and got[-1] == "[DONE]"
            assert "incomplete" in got[-2]["error"]["message"]
            assert router.metrics.requests.value("cut") == 1
            await settled(router)

    run(main())


def test_a_stream_that_stalls_mid_way_ends_after_the_read_timeout():
    async def main():
        worker = FakeWorker(behaviors=["stall"])
        timeouts = Timeouts(queue=5.0, first_token=5.0, read=0.3, request=5.0, health=1.0)
        async with router_for([worker], timeouts=timeouts) as router:
            started = asyncio.get_running_loop().time()
            status, _, raw = await post(router, {"model": MODEL, "prompt": "x", "max_tokens": 6, "stream": True})
            waited = asyncio.get_running_loop().time() - started
            assert status == 200 and 0.3 <= waited < 2.0
            got = events(raw)
            assert text_of(raw) == " t0 t1" and "no data from worker" in got[-2]["error"]["message"]
            assert router.metrics.requests.value("cut") == 1
            # a stream sending on time is not cut by a read timeout shorter than the whole stream
            status, _, raw = await post(router, {"model": MODEL, "prompt": "x", "max_tokens": 4, "stream": True})
            assert status == 200 and text_of(raw) == " t0 t1 t2 t3"
            await settled(router)

    run(main())


def test_streams_that_end_cleanly_reuse_the_upstream_connection():
    async def main():
        worker = FakeWorker()
        async with router_for([worker]) as router:
            for _ in range(5):
                status, _, raw = await post(router, {"model": MODEL, "prompt": "x", "max_tokens": 3, "stream": True})
                assert status == 200 and text_of(raw) == " t0 t1 t2"
                await asyncio.sleep(0.02)
            await settled(router)
            # kept-alive connections carried them (health and state polls borrow from the same
            # pool, so at most a few distinct ones); a stream closed after [DONE] would take five
            assert len(worker.peers) <= 3, worker.peers

    run(main())


def test_a_client_that_disconnects_aborts_its_request_on_the_worker():
    async def main():
        worker = FakeWorker(behaviors=["slow", "hang"])
        async with router_for([worker]) as router:
            for stream in (True, False):
                async with router.client.post(router.base + "/v1/completions", json={
                        "model": MODEL, "prompt": "x", "max_tokens": 5, "stream": stream}) as resp:
                    if stream:
                        await resp.content.readuntil(b"\n\n")  # the first event is through
                    else:
                        await until(lambda: len(worker.received) == 2)
                    resp.close()  # the client goes away
                want = 1 if stream else 2
                await until(lambda: len(worker.aborted) == want)  # noqa: B023 - awaited here
                await settled(router)
            assert router.metrics.requests.value("client_gone") >= 1

    run(main())


def test_overload_is_429_with_retry_after_and_the_queue_binds_late():
    async def main():
        # 64 KV tokens: one request of 3 + 40 tokens fits, two do not
        worker = FakeWorker(kv_blocks=5, block_size=16, max_model_len=64, behaviors=["slow"])
        async with router_for([worker], policy="aladdin", max_queue=1) as router:
            body = {"model": MODEL, "prompt": "a b c", "max_tokens": 40, "stream": True}
            first = await router.client.post(router.base + "/v1/completions", json=body)
            await first.content.readuntil(b"\n\n")
            second = asyncio.create_task(post(router, {**body, "stream": False}))
            await until(lambda: len(router.placer.scheduler.queue) == 1)  # waiting in the router, on no worker yet
            status, headers, raw = await post(router, body)
            assert status == 429 and headers["Retry-After"] == "1" and "queue is full" in raw.decode()
            first.close()  # the first ends: the queued one is placed (late binding)
            status, headers, raw = await second
            assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 40
            await settled(router)
            assert router.metrics.rejected.value("queue_full") == 1
            assert router.metrics.queue_wait.count() == 2

    run(main())


def test_a_queued_request_whose_ttft_is_lost_is_shed_with_429():
    async def main():
        worker = FakeWorker(kv_blocks=5, block_size=16, max_model_len=64, behaviors=["slow"])
        async with router_for([worker], policy="aladdin", max_queue=4) as router:
            body = {"model": MODEL, "prompt": "a b c", "max_tokens": 40, "stream": True}
            first = await router.client.post(router.base + "/v1/completions", json=body)
            await first.content.readuntil(b"\n\n")
            status, headers, raw = await post(router, body, headers={"X-Aladdin-TTFT-SLO-Ms": "150"})
            assert status == 429 and headers["Retry-After"] == "1" and "TTFT" in raw.decode()
            assert router.metrics.rejected.value("ttft_lost") == 1
            first.close()
            await settled(router)

    run(main())


def test_a_queue_timeout_and_a_silent_worker_both_end_in_time():
    async def main():
        worker = FakeWorker(kv_blocks=5, block_size=16, max_model_len=64, behaviors=["slow", "hang"])
        timeouts = Timeouts(queue=0.2, first_token=0.3, read=5.0, request=0.3, health=1.0)
        async with router_for([worker], policy="aladdin", timeouts=timeouts) as router:
            body = {"model": MODEL, "prompt": "a b c", "max_tokens": 40, "stream": True}
            first = await router.client.post(router.base + "/v1/completions", json=body)
            await first.content.readuntil(b"\n\n")
            status, _, raw = await post(router, body)
            assert status == 429 and "within 0.2 s" in raw.decode()
            first.close()
            await settled(router)
            status, _, raw = await post(router, {"model": MODEL, "prompt": "a", "max_tokens": 2})
            assert status == 504 and "did not answer" in raw.decode()
            await settled(router)
            await until(lambda: len(worker.aborted) == 2)  # the silent request was dropped on the worker too

    run(main())


@pytest.mark.parametrize("raw, headers, status, words", [
    (b"{not json", {}, 400, "not valid JSON"),
    (b"[1, 2]", {}, 400, "JSON object"),
    (json.dumps({"model": "nope", "prompt": "x"}).encode(), {}, 404, "does not exist"),
    (json.dumps({"model": MODEL, "prompt": " ".join(["w"] * 70)}).encode(), {}, 400, "largest worker context"),
    (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": -1}).encode(), {}, 400, "at least 1"),
    (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 10**9}).encode(), {}, 400, "exceeds"),
    (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": "ten"}).encode(), {}, 400, "whole number"),
    (json.dumps({"model": MODEL, "prompt": "x"}).encode(), {"X-Aladdin-TTFT-SLO-Ms": "soon"}, 400, "milliseconds"),
    (json.dumps({"model": MODEL, "prompt": "x"}).encode(), {"x-llm-d-slo-tpot-ms": "-5"}, 400, "must be > 0"),
    (json.dumps({"model": MODEL, "prompt": ""}).encode(), {}, 400, "prompt"),
    (json.dumps({"model": MODEL, "prompt": "x", "n": 2}).encode(), {}, 400, "'n'"),
    (json.dumps({"model": MODEL, "prompt": "x", "stream": "yes"}).encode(), {}, 400, "stream"),
    (json.dumps({"model": MODEL, "prompt": "x" * 5000}).encode(), {}, 413, "larger than"),
])
def test_bad_input_is_a_clear_4xx_and_the_router_keeps_serving(raw, headers, status, words):
    async def main():
        worker = FakeWorker(max_model_len=64)
        async with router_for([worker], max_body_bytes=4096) as router:
            got, _, body = await post(router, {}, raw=raw, headers=headers)
            assert got == status, body
            message = json.loads(body)["error"]["message"]
            assert words in message and "\n" not in message
            got, _, _ = await post(router, {"model": MODEL, "prompt": "x", "max_tokens": 2})
            assert got == 200
            assert not worker.received[:-1]  # nothing bad reached the worker

    run(main())


def test_a_worker_error_passes_through_with_its_status():
    async def main():
        worker = FakeWorker(behaviors=["error400"])
        async with router_for([worker]) as router:
            status, headers, raw = await post(router, {"model": MODEL, "prompt": "x", "max_tokens": 2, "stream": True})
            assert status == 400 and json.loads(raw)["error"]["message"] == "worker says no"
            assert headers["X-Aladdin-Worker"] == worker.id
            await settled(router)

    run(main())


def test_api_key_is_required_when_set():
    async def main():
        async with router_for([FakeWorker()], api_key="s3cret") as router:
            body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
            assert (await post(router, body))[0] == 401
            assert (await post(router, body, headers={"Authorization": "Bearer wrong"}))[0] == 401
            assert (await post(router, body, headers={"Authorization": "Bearer s3cret"}))[0] == 200
            async with router.client.get(router.base + "/health") as resp:
                assert resp.status == 200
            async with router.client.get(router.base + "/metrics") as resp:
                assert resp.status == 401

    run(main())


def test_the_engines_measured_decode_scale_reaches_the_routers_core():
    async def main():
        workers = [FakeWorker(plugin_state=True, decode_scale=2.5), FakeWorker()]
        async with router_for(workers, policy="aladdin") as router:
            await until(lambda: router.placer.scheduler.worker(workers[0].id).decode_scale == 2.5)
            rows = {w["id"]: w for w in (await get_json(router, "/state"))["workers"]}
            assert rows[workers[0].id]["decode_scale"] == 2.5 and rows[workers[1].id]["decode_scale"] == 1.0

    asyncio.run(main())


def test_metrics_and_state_show_placements_fills_and_desired_workers():
    async def main():
        workers = [FakeWorker(behaviors=["slow"]), FakeWorker(plugin_state=True, behaviors=["slow"])]
        async with router_for(workers, policy="aladdin-spread", scaling=ScalingConfig(target_fill=0.5)) as router:
            slow = await router.client.post(router.base + "/v1/completions",
                                            json={"model": MODEL, "prompt": "a b c", "max_tokens": 3, "stream": True})
            await slow.content.readuntil(b"\n\n")
            busy_id = slow.headers["X-Aladdin-Worker"]
            await post(router, {"model": MODEL, "prompt": "a b", "max_tokens": 3})  # spread: the other worker
            await until(lambda: router.workers.endpoints[workers[0].id].kv_tokens_held is not None
                        and router.workers.endpoints[workers[1].id].state_at is not None)  # both polled
            await until(lambda: router.placer.scheduler.worker(busy_id).num_decoding == 1)
            state = await get_json(router, "/state")
            rows = {w["id"]: w for w in state["workers"]}
            assert {i: w["source"] for i, w in rows.items()} == {workers[0].id: "vllm-metrics",
                                                                  workers[1].id: "aladdin-state"}
            busy = rows[busy_id]
            assert busy["outstanding"] == 1 and busy["predicted_kv_fill"] > 0 and busy["decoding"] == 1
            assert rows[workers[0].id]["kv_tokens_held"] == 4096  # 25% of 1024 blocks of 16, from vLLM's gauge
            assert rows[workers[1].id]["kv_tokens_held"] == 32  # the plugin's exact count
            text = await (await router.client.get(router.base + "/metrics")).text()
            for name in ("aladdin_router_placements_total", "aladdin_router_queue_length",
                         "aladdin_router_queue_wait_seconds_bucket", "aladdin_router_output_length_error_tokens_count",
                         "aladdin_router_worker_predicted_kv_fill", "aladdin_router_worker_predicted_atgt_fill",
                         "aladdin_router_decision_seconds_bucket", "aladdin_desired_workers 1"):
                assert name in text, name
            assert text.count('aladdin_router_placements_total{worker="') == 2
            slow.close()
            await settled(router)

    run(main())


def test_desired_workers_from_the_planner_rule():
    from aladdin.plugin.router.scaling import DesiredWorkers

    now = [0.0]
    desired = DesiredWorkers(ScalingConfig(worker_rate=2.0, interval_s=10.0, headroom=0.0, scale_down_after=2),
                             clock=lambda: now[0])
    for _ in range(50):  # 5 req/s in the first interval
        desired.arrived()
    now[0] = 9.99
    assert desired.compute(None, 1) == 3  # ceil(5 / 2)
    now[0] = 15.0  # quiet since: the count is held for the scale-down window
    assert desired.compute(None, 1) == 3
    now[0] = 35.0
    assert desired.compute(None, 1) == 1


def test_tracker_counts_tokens_and_drops_unasked_usage():
    tracker = StreamTracker(wants_usage=False)
    assert tracker.feed(b'data: {"choices": [{"delta": {"role": "assistant"}}]}') is not None
    assert tracker.generated == 0
    tracker.feed(b'data: {"choices": [{"text": "a"}]}')
    tracker.feed(b'data: {"choices": [{"text": "b"}]}')
    assert tracker.feed(b'data: {"choices": [], "usage": {"completion_tokens": 3}}') is None
    assert tracker.feed(b"data: [DONE]") == b"data: [DONE]" and tracker.done
    assert tracker.generated == 2 and tracker.output_tokens == 3


def test_prometheus_text_and_parsing_round_trip():
    registry = Registry()
    counter = registry.add(Counter("x_requests", "help", ("worker",)))
    gauge = registry.add(Gauge("x_up", "help"))
    histogram = registry.add(Histogram("x_wait_seconds", "help", (0.1, 1.0)))
    counter.inc('w"1')
    gauge.set(2.5)
    histogram.observe(0.5)
    histogram.observe(5.0)
    text = registry.render()
    samples = parse_metrics(text)
    assert samples["x_requests_total"][0] == ({"worker": 'w\\"1'}, 1.0)
    assert samples["x_up"][0][1] == 2.5
    assert [v for _, v in samples["x_wait_seconds_bucket"]] == [0.0, 1.0, 2.0]
    assert samples["x_wait_seconds_count"][0][1] == 2.0


def test_config_refuses_bad_values():
    from aladdin.errors import AladdinError

    good = RouterConfig(workers=("http://127.0.0.1:1",))
    for bad in (replace(good, workers=()), replace(good, workers=("localhost:80",)),
                replace(good, workers=("http://a:1", "http://a:1/")), replace(good, max_queue=-1),
                replace(good, ttft_slo=0.0), replace(good, lost_ttft="drop"),
                replace(good, timeouts=Timeouts(read=0.0)), replace(good, length_quantile=1.0)):
        with pytest.raises(AladdinError):
            bad.validate()


def test_router_and_engine_plugin_reserve_the_same_quantile_by_default():
    """The router forwards its prediction to the plugin, which reserves KV for it: a mean there
    (the router's old default) under-reserved packed workers, and vLLM preempted."""
    from aladdin.plugin.vllm.config import PluginConfig

    assert RouterConfig(workers=("http://127.0.0.1:1",)).length_quantile == PluginConfig().length_quantile == 0.95


def test_the_cli_command_is_registered_and_refuses_a_bad_policy():
    from click.testing import CliRunner

    from aladdin.cli import cli

    result = CliRunner().invoke(cli, ["router", "--worker", "http://127.0.0.1:1", "--policy", "nope"])
    assert result.exit_code != 0 and "unknown placement policy" in result.output
    result = CliRunner().invoke(cli, ["router", "--help"])
    assert result.exit_code == 0 and "--max-queue" in result.output


def test_placer_re_predicts_an_overrun_within_max_tokens_and_learns_at_finish():
    from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel
    from aladdin.plugin.core.policies import named_policy
    from aladdin.plugin.router.metrics import RouterMetrics
    from aladdin.plugin.router.placement import Placer

    async def main():
        perf = PerfModel(PrefillModel(0, 0, 0), DecodeModel(0, 0, 0), KVModel(16, 4096), 64, 2048)
        placer = Placer([("a", perf), ("b", perf)], named_policy("aladdin"), RouterMetrics(), max_queue=4)
        ticket = placer.admit(10, 40, float("inf"), float("inf"), predicted_output_tokens=4)
        assert await placer.wait(ticket, 1.0) == "a" and ticket.core.predicted_output_tokens == 4
        for n in range(1, 30):
            placer.tokens(ticket, n)
        assert 29 < ticket.core.predicted_output_tokens <= 40 and ticket.core.repredictions >= 1
        placer.finish(ticket, 30)
        assert not placer.scheduler.requests and placer.metrics.actual_tokens.value() == 30
        assert placer.metrics.length_error.count() == 1

    run(main())


class _Chunks:
    """A stand-in for an aiohttp response: its body arrives in the given reads."""

    def __init__(self, reads: list[bytes]):
        self.content = self
        self.reads = list(reads)

    async def readany(self) -> bytes:
        return self.reads.pop(0) if self.reads else b""

    def at_eof(self) -> bool:
        return not self.reads


def _sse(*chunks) -> bytes:
    return b"".join(b"data: " + (c if isinstance(c, bytes) else json.dumps(c, separators=(",", ":")).encode())
                    + b"\n\n" for c in chunks)


def _reference(body: bytes, wants_usage: bool) -> tuple[bytes, StreamTracker]:
    """Event by event through ``feed``, as the router forwarded streams before it read bytes."""
    tracker = StreamTracker(wants_usage)
    out = []
    for event in body.split(b"\n\n")[:-1]:  # the last piece: no event (or an unfinished one)
        if event.strip():
            kept = tracker.feed(event)
            if kept is not None:
                out.append(kept + b"\n\n")
            if tracker.done:
                break
    return b"".join(out), tracker


def test_streams_forwarded_by_reads_equal_event_by_event_forwarding():
    import random

    from aladdin.plugin.router.proxy import EventReader

    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    text = [{"id": "c", "choices": [{"index": 0, "text": t, "logprobs": None, "finish_reason": None}]}
            for t in (" a", " b", " c", "")]
    chat = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
            *({"choices": [{"index": 0, "delta": {"content": t}}]} for t in (" a", " b", " c")),
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    continuous = [{**c, "usage": {**usage, "completion_tokens": i + 1}} for i, c in enumerate(text)]
    final = {"choices": [], "usage": usage}
    streams = {
        "text": _sse(*text, final, b"[DONE]"),
        "chat": _sse(*chat, final, b"[DONE]"),
        "continuous": _sse(*continuous, final, b"[DONE]"),
        "odd": b": ping\n\n\n\n" + _sse(*text[:2]) + b"\n\n \n\n\n" + _sse(text[2], b"not json", final, b"[DONE]")
               + _sse(text[3]),
        "error": _sse(*text[:2], {"error": {"message": "boom", "code": 500}}, b"[DONE]"),
        "cut": _sse(*text[:3]) + b'data: {"choices": [{"te',
    }
    rng = random.Random(0)

    async def through_reader(body: bytes, cuts: list[int], wants_usage: bool) -> tuple[bytes, StreamTracker]:
        reads = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)]) if b > a]
        reader, tracker, out = EventReader(_Chunks(reads)), StreamTracker(wants_usage), []  # type: ignore[arg-type]
        try:
            while not tracker.done and (events := await reader.next(5.0)) is not None:
                out.append(tracker.forward(events))
        finally:
            reader.stop()
        return b"".join(out), tracker

    async def main():
        for name, body in streams.items():
            for wants_usage in (False, True):
                want, ref = _reference(body, wants_usage)
                for trial in range(60):
                    cuts = sorted(rng.sample(range(1, len(body)), min(trial % 12, len(body) - 1)))
                    got, tracker = await through_reader(body, cuts, wants_usage)
                    assert got == want, (name, wants_usage, cuts)
                    assert (tracker.done, tracker.error) == (ref.done, ref.error), name
                    if ref.usage_tokens is not None:
                        assert tracker.output_tokens == ref.output_tokens == 4, name
                    if name in ("text", "chat"):  # progress: about the events with text (the count is the usage's)
                        assert 3 == ref.generated <= tracker.generated <= 4, (name, cuts)

    run(main())


@pytest.mark.timeout(120)  # loading the model takes seconds on a busy machine
def test_the_text_length_model_predicts_from_the_words_and_learns_at_finish():
    pytest.importorskip("sklearn")
    essay = "Write a detailed 1500-word essay on the history of the Roman Empire, with five sections and a conclusion."
    yes_no = "Answer with yes or no only: is 7 a prime number?"

    async def main():
        worker = FakeWorker()
        async with router_for([worker], length_predictor="text", length_quantile=None) as router:
            model = router.service.text_predictor
            predicted = {}
            for name, prompt in (("essay", essay), ("yes_no", yes_no)):
                status, _, _ = await post(router, {"model": MODEL, "prompt": prompt, "max_tokens": 1000})
                assert status == 200
                predicted[name] = worker.received[-1]["vllm_xargs"]["aladdin_output_tokens"]
            # the words, not the length, set the prediction: the two prompts are about as long
            assert predicted["yes_no"] < predicted["essay"]
            words = len(yes_no.split())
            assert predicted["yes_no"] == model.corrected(float(model.predict_raw([yes_no], [words])[0]))
            await settled(router)
            assert len(model._log_ratios) == 2  # each finished request taught the online correction
            # a client's own prediction wins, and teaches the text model nothing
            body = {"model": MODEL, "prompt": essay, "max_tokens": 8, "vllm_xargs": {"aladdin_output_tokens": 3}}
            status, _, _ = await post(router, body)
            assert status == 200 and worker.received[-1]["vllm_xargs"]["aladdin_output_tokens"] == 3
            await settled(router)
            assert len(model._log_ratios) == 2

    run(main())
