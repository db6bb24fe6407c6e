"""The endpoint picker's protocol, driven over real gRPC by a scripted gateway (the point is the
ext_proc exchange, so the workers are fake): streamed and buffered request bodies, the pick in
header and metadata, the subset hint, 503 / 429 / 4xx ImmediateResponses, the served endpoint,
a released request ended by its worker's state, a followed response stream, health, TLS, and
the local Envoy's generated configs (checked by Envoy itself)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import grpc
import pytest
from click.testing import CliRunner
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from fakeworker import MODEL, FakeWorker, free_port
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aladdin.cli import cli
from aladdin.errors import AladdinError
from aladdin.gateway import EnvoyConfig, envoy_binary, envoy_config
from aladdin.plugin.router.config import RouterConfig, Timeouts
from aladdin.plugin.router.inputs import WordTokenizer
from aladdin.plugin.router.picker import (
    BODY_CHUNK_BYTES,
    DESTINATION_KEY,
    HEALTH_SERVICES,
    PickerConfig,
    PickerServer,
    endpoint_url,
    parse_subset,
)

pytestmark = pytest.mark.timeout(60)

STREAMED = ProcessingMode.FULL_DUPLEX_STREAMED
BUFFERED = ProcessingMode.BUFFERED


@contextlib.asynccontextmanager
async def picker_for(workers: list[FakeWorker], tls: tuple[str, str] | None = None, **overrides):
    for worker in workers:
        await worker.start()
    placement = RouterConfig(workers=tuple(w.url for w in workers), policy=overrides.pop("policy", "jsq"),
                             health_interval_s=0.05, state_interval_s=0.05, startup_timeout_s=2.0, port=free_port(),
                             timeouts=Timeouts(queue=2.0, health=1.0), **overrides)
    config = PickerConfig(placement, grpc_port=free_port(), tls_cert=tls[0] if tls else None,
                          tls_key=tls[1] if tls else None, drain_s=0.3, grace_s=0.5)
    server = PickerServer(config, tokenizer=WordTokenizer())
    await server.start()
    target = f"127.0.0.1:{server.grpc_port}"
    if tls:
        channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(Path(tls[0]).read_bytes()),
                                          options=[("grpc.ssl_target_name_override", "localhost")])
    else:
        channel = grpc.aio.insecure_channel(target)
    server.channel = channel
    try:
        yield server
    finally:
        await channel.close()
        await server.stop()
        for worker in workers:
            await worker.stop()


def headers_message(path: str = "/v1/completions", method: str = "POST", *, body: bool = True, mode: int = STREAMED,
                    response_mode: int = ProcessingMode.NONE, subset=None, extra: dict | None = None) -> ext.ProcessingRequest:
    pairs = {":path": path, ":method": method, "content-type": "application/json", **(extra or {})}
    message = ext.ProcessingRequest(request_headers=ext.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]),
        end_of_stream=not body))
    message.protocol_config.request_body_mode = mode
    message.protocol_config.response_body_mode = response_mode
    if subset is not None:
        hint = struct_pb2.Struct()
        hint.update({"x-gateway-destination-endpoint-subset": subset})
        message.metadata_context.filter_metadata["envoy.lb.subset_hint"].CopyFrom(hint)
    return message


def body_messages(payload: dict | bytes, chunks: int = 1) -> list[ext.ProcessingRequest]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    size = max(len(data) // chunks, 1)
    parts = [data[i:i + size] for i in range(0, len(data), size)]
    return [ext.ProcessingRequest(request_body=ext.HttpBody(body=part, end_of_stream=i == len(parts) - 1))
            for i, part in enumerate(parts)]


def completion(prompt: str = "hello there", **fields) -> dict:
    return {"model": MODEL, "prompt": prompt, "max_tokens": 4, "stream": True, **fields}


class Gateway:
    """One ext_proc stream, as a gateway drives it: write messages, read answers."""

    def __init__(self, channel):
        self.call = ext_grpc.ExternalProcessorStub(channel).Process()

    async def send(self, *messages) -> None:
        for message in messages:
            await self.call.write(message)

    async def read(self) -> ext.ProcessingResponse:
        return await asyncio.wait_for(self.call.read(), 5.0)

    async def close(self) -> None:
        await self.call.done_writing()


def set_headers(common: ext.CommonResponse) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


async def pick(server, payload: dict, **headers_kw) -> tuple[Gateway, dict[str, str], bytes]:
    """A streamed request through the picker: (its stream, the headers set, the body sent on)."""
    gateway = Gateway(server.channel)
    await gateway.send(headers_message(**headers_kw), *body_messages(payload, chunks=2))
    first = await gateway.read()
    assert first.WhichOneof("response") == "request_headers", first
    body = b""
    while True:
        answer = await gateway.read()
        streamed = answer.request_body.response.body_mutation.streamed_response
        body += streamed.body
        if streamed.end_of_stream:
            break
    headers = set_headers(first.request_headers.response)
    assert first.dynamic_metadata.fields["envoy.lb"].struct_value.fields[DESTINATION_KEY].string_value \
        == headers[DESTINATION_KEY]
    assert first.request_headers.response.clear_route_cache
    assert "content-length" in first.request_headers.response.header_mutation.remove_headers
    return gateway, headers, body


async def until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_a_streamed_body_is_picked_held_until_its_end_and_sent_back_with_the_prediction():
    async def main():
        workers = [FakeWorker(), FakeWorker()]
        async with picker_for(workers) as server:
            gateway, headers, body = await pick(server, completion())
            assert headers[DESTINATION_KEY] in {w.id for w in workers}
            assert headers["x-request-id"].startswith("rtr")
            sent = json.loads(body)
            assert sent["vllm_xargs"]["aladdin_output_tokens"] >= 1
            assert "stream_options" not in sent  # the client's response is not changed
            await gateway.close()

    asyncio.run(main())


def test_slo_headers_arrive_lower_case_and_count():
    async def main():
        async with picker_for([FakeWorker()]) as server:
            await pick(server, completion(), extra={"x-aladdin-ttft-slo-ms": "250", "x-llm-d-slo-tpot-ms": "40"})
            ticket = next(iter(server.picker.service.placer.tickets.values()))
            assert ticket.core.ttft_slo == 0.25 and ticket.core.atgt_slo == 0.04

    asyncio.run(main())


def test_a_large_body_goes_back_in_gateway_sized_chunks():
    async def main():
        async with picker_for([FakeWorker()]) as server:
            prompt = " ".join(["w" * 150] * 1000)  # 1000 words (the fake tokenizer's tokens), ~150 kB
            _, _, body = await pick(server, completion(prompt, max_tokens=1), path="/v1/completions")
            assert len(body) > 2 * BODY_CHUNK_BYTES and json.loads(body)["prompt"] == prompt

    asyncio.run(main())


def test_a_buffered_body_is_answered_headers_first_then_replaced():
    async def main():
        async with picker_for([FakeWorker()]) as server:
            gateway = Gateway(server.channel)
            await gateway.send(headers_message(mode=BUFFERED))
            first = await gateway.read()
            assert first.WhichOneof("response") == "request_headers"
            assert not first.request_headers.response.header_mutation.set_headers  # nothing decided yet
            await gateway.send(*body_messages(completion()))
            answer = await gateway.read()
            common = answer.request_body.response
            headers = set_headers(common)
            assert headers[DESTINATION_KEY] == server.picker.service.workers.endpoints.popitem()[0]
            assert int(headers["content-length"]) == len(common.body_mutation.body)
            assert json.loads(common.body_mutation.body)["vllm_xargs"]["aladdin_output_tokens"] >= 1

    asyncio.run(main())


def test_the_subset_hint_limits_the_pick_as_a_list_or_a_string():
    assert parse_subset(None) is None and parse_subset([]) == [] and parse_subset("a:1, b:2") == ["a:1", "b:2"]

    async def main():
        workers = [FakeWorker(), FakeWorker(), FakeWorker()]
        async with picker_for(workers, policy="rr") as server:
            for subset in ([workers[1].id], workers[2].id, f"{workers[0].id},{workers[2].id}"):
                allowed = set(parse_subset(subset))
                for _ in range(3):
                    _, headers, _ = await pick(server, completion(), subset=subset)
                    assert headers[DESTINATION_KEY] in allowed

    asyncio.run(main())


def immediate_of(answer: ext.ProcessingResponse) -> tuple[int, dict[str, str], dict]:
    assert answer.WhichOneof("response") == "immediate_response", answer
    reply = answer.immediate_response
    headers = {h.header.key: h.header.raw_value.decode() for h in reply.headers.set_headers}
    return reply.status.code, headers, json.loads(reply.body)


def test_an_empty_or_foreign_subset_and_no_ready_worker_are_503():
    async def main():
        worker = FakeWorker()
        async with picker_for([worker]) as server:
            for subset in ([], ["10.9.9.9:8000"]):
                gateway = Gateway(server.channel)
                await gateway.send(headers_message(subset=subset), *body_messages(completion()))
                status, headers, body = immediate_of(await gateway.read())
                assert status == 503 and "subset" in body["error"]["message"] and headers["retry-after"] == "1"
            worker.healthy = False
            await until(lambda: not server.picker.service.workers.endpoints[worker.id].up)
            gateway = Gateway(server.channel)
            await gateway.send(headers_message(), *body_messages(completion()))
            status, _, body = immediate_of(await gateway.read())
            assert status == 503 and "no model server is ready" in body["error"]["message"]

    asyncio.run(main())


def test_bad_input_is_a_4xx_immediate_response_and_the_picker_keeps_serving():
    async def main():
        async with picker_for([FakeWorker()]) as server:
            for payload, status, words in ((b"{not json", 400, "not valid JSON"),
                                           (completion(model="other"), 404, "does not exist"),
                                           (completion(max_tokens=-1), 400, "max_tokens")):
                gateway = Gateway(server.channel)
                await gateway.send(headers_message(), *body_messages(payload))
                got, _, body = immediate_of(await gateway.read())
                assert got == status and words in body["error"]["message"]
            await pick(server, completion())
            assert server.picker.metrics.bad_requests.value() == 3

    asyncio.run(main())


def test_a_full_queue_is_429_with_retry_after():
    async def main():
        # 1024 KV tokens: one ~600-token request with 400 predicted fits, a second does not
        async with picker_for([FakeWorker(kv_blocks=65, max_model_len=1024)], policy="aladdin", max_queue=0) as server:
            big = completion(" ".join(["w"] * 600), max_tokens=400, vllm_xargs={"aladdin_output_tokens": 400})
            await pick(server, big)  # stays placed: its stream is open
            gateway = Gateway(server.channel)
            await gateway.send(headers_message(), *body_messages(big))
            status, headers, body = immediate_of(await gateway.read())
            assert status == 429 and headers["retry-after"] == "1" and "queue is full" in body["error"]["message"]
            assert server.picker.metrics.rejected.value("queue_full") == 1

    asyncio.run(main())


def response_headers(status: str = "200", served: str | None = None,
                     content_type: str = "text/event-stream") -> ext.ProcessingRequest:
    message = ext.ProcessingRequest(response_headers=ext.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=":status", raw_value=status.encode()),
        base_pb2.HeaderValue(key="content-type", raw_value=content_type.encode())])))
    if served is not None:
        meta = struct_pb2.Struct()
        meta.update({"x-gateway-destination-endpoint-served": served})
        message.metadata_context.filter_metadata["envoy.lb"].CopyFrom(meta)
    return message


def test_a_released_request_is_ended_by_its_workers_state():
    async def main():
        worker = FakeWorker(plugin_state=True)
        async with picker_for([worker]) as server:
            placer = server.picker.service.placer
            gateway, headers, _ = await pick(server, completion())
            await gateway.send(response_headers(served=headers[DESTINATION_KEY]))
            assert (await gateway.read()).WhichOneof("response") == "response_headers"
            ticket = next(iter(placer.tickets.values()))
            await until(lambda: ticket.released)
            assert ticket.id in placer.scheduler.requests  # the worker has not reported its end yet
            worker.finished.append({"seq": 1, "id": f"cmpl-{headers['x-request-id']}-0", "output_tokens": 7,
                                    "aborted": False})
            await until(lambda: not placer.tickets and not placer.scheduler.requests)
            assert server.picker.metrics.actual_tokens.value() == 7  # its length was learned

    asyncio.run(main())


def test_a_request_on_a_stock_worker_leaves_the_core_at_its_response_and_one_served_elsewhere_too():
    async def main():
        workers = [FakeWorker(), FakeWorker()]  # no engine plugin: nothing would report the requests
        async with picker_for(workers, policy="rr") as server:
            placer = server.picker.service.placer
            gateway, headers, _ = await pick(server, completion())
            await gateway.send(response_headers(served=headers[DESTINATION_KEY]))
            await gateway.read()
            await until(lambda: not placer.tickets)
            gateway, headers, _ = await pick(server, completion())
            other = next(w.id for w in workers if w.id != headers[DESTINATION_KEY])
            await gateway.send(response_headers(served=other))
            await gateway.read()
            await until(lambda: not placer.tickets and not placer.scheduler.requests)
            assert server.picker.metrics.requests.value("served_elsewhere") == 1

    asyncio.run(main())


def test_a_followed_response_stream_is_echoed_and_its_length_learned():
    async def main():
        async with picker_for([FakeWorker()]) as server:
            placer = server.picker.service.placer
            gateway, headers, _ = await pick(server, completion(), response_mode=STREAMED)
            await gateway.send(response_headers(served=headers[DESTINATION_KEY]))
            await gateway.read()
            events = b"".join(b'data: {"choices": [{"index": 0, "text": " t%d"}]}\n\n' % i for i in range(5))
            chunks = [events[:30], events[30:], b"data: [DONE]\n\n"]
            for i, chunk in enumerate(chunks):
                await gateway.send(ext.ProcessingRequest(response_body=ext.HttpBody(body=chunk,
                                                                                    end_of_stream=i == len(chunks) - 1)))
                echoed = (await gateway.read()).response_body.response.body_mutation.streamed_response
                assert echoed.body == chunk and echoed.end_of_stream == (i == len(chunks) - 1)
            await until(lambda: not placer.tickets)
            assert server.picker.metrics.actual_tokens.value() == 5

    asyncio.run(main())


def test_a_request_without_a_body_goes_to_the_least_loaded_worker():
    async def main():
        workers = [FakeWorker(), FakeWorker()]
        async with picker_for(workers) as server:
            busy_gateway, busy_headers, _ = await pick(server, completion())  # one request stays on a worker
            gateway = Gateway(server.channel)
            await gateway.send(headers_message("/v1/models", "GET", body=False))
            answer = await gateway.read()
            picked = set_headers(answer.request_headers.response)[DESTINATION_KEY]
            assert picked != busy_headers[DESTINATION_KEY]

    asyncio.run(main())


def test_health_services_serve_then_go_down_at_shutdown():
    async def main():
        async with picker_for([FakeWorker()]) as server:
            stub = health_pb2_grpc.HealthStub(server.channel)
            for name in HEALTH_SERVICES:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
            stopping = asyncio.create_task(server.stop())
            await asyncio.sleep(0.1)  # draining: not ready, still answering
            reply = await stub.Check(health_pb2.HealthCheckRequest(service="readiness"))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            live = await stub.Check(health_pb2.HealthCheckRequest(service="liveness"))
            assert live.status == health_pb2.HealthCheckResponse.SERVING
            async with aiohttp.ClientSession() as session:  # the HTTP probe says the same
                async with session.get(f"http://127.0.0.1:{server.http_port}/health") as resp:
                    assert resp.status == 503 and (await resp.json())["status"] == "draining"
            await stopping
            server._grpc = None  # stopped once

    asyncio.run(main())


def test_tls_on_the_grpc_port(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)

    async def main():
        async with picker_for([FakeWorker()], tls=(str(cert), str(key))) as server:
            _, headers, _ = await pick(server, completion())
            assert headers[DESTINATION_KEY]

    asyncio.run(main())


def test_bad_picker_settings_are_one_line_errors(tmp_path):
    with pytest.raises(AladdinError, match="HOST:PORT"):
        endpoint_url("nonsense")
    assert endpoint_url("10.0.0.7:8000") == "http://10.0.0.7:8000"
    placement = RouterConfig(workers=("http://127.0.0.1:8000",), port=9090)
    with pytest.raises(AladdinError, match="both --tls-cert and --tls-key"):
        PickerConfig(placement, tls_cert=str(tmp_path / "x")).validate()
    with pytest.raises(AladdinError, match="must differ"):
        PickerConfig(placement, grpc_port=9090).validate()
    result = CliRunner().invoke(cli, ["picker", "--worker", "no-port-here"])
    assert result.exit_code != 0 and "Traceback" not in result.output and "HOST:PORT" in result.output
    result = CliRunner().invoke(cli, ["picker", "--worker", "127.0.0.1:1", "--policy", "nonesuch"])
    assert result.exit_code != 0 and "Traceback" not in result.output


@pytest.mark.parametrize("settings", [
    {},
    {"request_body_mode": "BUFFERED", "failure_mode": "FailOpen", "workers": ("127.0.0.1:8100", "127.0.0.1:8101")},
    {"response_body_mode": "FULL_DUPLEX_STREAMED", "subset_header": True, "picker_tls": True,
     "pickers": ("127.0.0.1:9002", "127.0.0.1:9003"), "access_log": "/dev/null"},
])
def test_envoy_accepts_every_generated_config(tmp_path, settings):
    config = EnvoyConfig(**{"pickers": ("127.0.0.1:9002",), **settings})
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(envoy_config(config)))
    done = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True)
    assert done.returncode == 0 and "OK" in done.stdout + done.stderr, done.stdout + done.stderr


def test_bad_gateway_settings_are_one_line_errors():
    with pytest.raises(AladdinError, match="FailOpen needs the workers"):
        envoy_config(EnvoyConfig(pickers=("127.0.0.1:9002",), failure_mode="FailOpen"))
    with pytest.raises(AladdinError, match="request body mode"):
        envoy_config(EnvoyConfig(pickers=("127.0.0.1:9002",), request_body_mode="STREAMED"))
    with pytest.raises(AladdinError, match="is not HOST:PORT"):
        envoy_config(EnvoyConfig(pickers=("nowhere",)))


def test_gateway_cli_up_detached_then_down(tmp_path):
    state = tmp_path / "gw"
    port, admin = free_port(), free_port()
    up = subprocess.run([sys.executable, "-m", "aladdin", "gateway", "up", "--picker", "127.0.0.1:9", "--port", str(port),
                         "--admin-port", str(admin), "--detach", "--state-dir", str(state)],
                        capture_output=True, text=True, timeout=60)  # as a user runs it: Envoy outlives it
    assert up.returncode == 0 and f"http://127.0.0.1:{port}" in up.stdout, up.stderr
    pid = json.loads((state / "state.json").read_text())["pid"]
    assert Path(f"/proc/{pid}").exists()
    runner = CliRunner()
    result = runner.invoke(cli, ["gateway", "down", "--state-dir", str(state)])
    assert result.exit_code == 0 and "stopped" in result.output
    assert not Path(f"/proc/{pid}").exists()
    result = runner.invoke(cli, ["gateway", "config", "--picker", "127.0.0.1:9002", "--failure-mode", "FailOpen"])
    assert result.exit_code != 0 and "FailOpen needs the workers" in result.output and "Traceback" not in result.output


def test_no_cluster_keeps_envoys_default_1024_requests_in_flight():
    """Each LLM stream holds an upstream request and a picker stream for its whole life: Envoy's
    default circuit breakers (1,024) refused requests with 500s under load (the overhead run)."""
    config = EnvoyConfig(pickers=("127.0.0.1:9002",), failure_mode="FailOpen", workers=("127.0.0.1:8100",))
    clusters = envoy_config(config)["static_resources"]["clusters"]
    assert {c["name"] for c in clusters} == {"model_servers", "fail_open", "picker"}
    for cluster in clusters:
        limits = cluster["circuit_breakers"]["thresholds"][0]
        assert min(limits["max_requests"], limits["max_pending_requests"], limits["max_connections"]) >= 100_000


def test_the_gateway_health_checks_each_picker_every_interval_even_without_traffic():
    """ext_proc streams are not traffic to Envoy's health checker, which then checked a picker
    once a minute: a draining replica kept getting requests, and one arriving as it stopped got
    a 500 (the two-replica restart test in CI)."""
    picker = next(c for c in envoy_config(EnvoyConfig(pickers=("127.0.0.1:9002",)))["static_resources"]["clusters"]
                  if c["name"] == "picker")
    check = picker["health_checks"][0]
    assert check["no_traffic_interval"] == check["interval"] == "0.5s"
