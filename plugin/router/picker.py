"""``aladdin picker``: the scheduler core as a Gateway API Inference Extension endpoint picker.

Why: clusters that run LLM traffic through a Kubernetes gateway (Envoy Gateway, kgateway, Istio,
GKE) ask an endpoint picker (EPP) which model server takes each request, over Envoy's
``ext_proc`` gRPC stream. Speaking that protocol lets any such gateway use Aladdin's placement,
with Envoy carrying the bytes instead of the router's own proxy. The placement is the router's:
the same :class:`PlacementService` (pool, core, queue, worker state, input checks).

One ext_proc stream is one HTTP request (:class:`Exchange`):

- request headers, then the body (``BUFFERED``: one message, answered headers-first;
  ``FULL_DUPLEX_STREAMED``, the protocol's mode: chunks, and the header answer is held until
  the body's end, then the body is sent back in chunks). Envoy says which in ``protocol_config``.
- At the body's end the request is checked and measured like the router's; the core places it
  (late binding: it may wait in the central queue) on a worker in the gateway's subset hint.
  The answer sets ``x-gateway-destination-endpoint`` (header and ``envoy.lb`` metadata, the
  same value) and the body gains the prediction and SLOs in ``vllm_xargs`` for the engine
  plugin. Refusals are ImmediateResponses: 503 when no endpoint is ready (or the subset has
  none), 429 with Retry-After when the core sheds or the queue is full, 4xx for bad input.
- Response headers carry ``x-gateway-destination-endpoint-served`` (``envoy.lb`` metadata):
  a request served elsewhere than picked leaves the core's picture. If the gateway streams the
  response body too, its tokens are followed and its length learned; otherwise the request is
  released to its worker's engine plugin, whose ``/aladdin/state`` reports its progress and end
  (so several picker replicas can run side by side; a stock worker's requests are not tracked).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multidict import CIMultiDict

from aladdin.errors import AladdinError
from aladdin.plugin.router import proxy
from aladdin.plugin.router.config import RouterConfig
from aladdin.plugin.router.inputs import CHAT_PATH, ClientError, Tokenizer
from aladdin.plugin.router.metrics import RouterMetrics
from aladdin.plugin.router.placement import Refused, Ticket
from aladdin.plugin.router.service import PlacementService

try:  # the picker extra: grpcio, grpcio-health-checking and xds-protos (Envoy's API)
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
    from envoy.type.v3 import http_status_pb2
    from google.protobuf import struct_pb2
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1.health import aio as health_aio
except ImportError as exc:  # pragma: no cover - depends on the install
    raise AladdinError("the endpoint picker needs its extra: pip install 'aladdin-slo[picker]' "
                       f"({exc.name} is missing)") from None

log = logging.getLogger("aladdin.picker")

SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
DESTINATION_NAMESPACE = "envoy.lb"
DESTINATION_KEY = "x-gateway-destination-endpoint"
SERVED_KEY = "x-gateway-destination-endpoint-served"
REQUEST_ID_HEADER = "x-request-id"  # the engine's request id contains it: how its state is matched
BODY_CHUNK_BYTES = 62_000  # a body sent back in chunks of at most this (what gateways expect)
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
HEALTH_SERVICES = ("", "liveness", "readiness", EXT_PROC_SERVICE)
PLACED_PATHS = ("/v1/completions", CHAT_PATH)  # placed by the core; any other path goes to the least loaded
MAX_RESPONSE_BYTES = 4 * 2**20  # a non-streamed response body followed for its usage, at most


@dataclass(frozen=True)
class PickerConfig:
    """One picker process. ``placement``: the router's settings (workers, policy, SLO defaults,
    queue); its host and port serve ``/metrics``, ``/state`` and ``/health`` over HTTP.
    ``tls_cert`` / ``tls_key``: PEM files; given, the gRPC port speaks TLS (gateways connect so)."""

    placement: RouterConfig
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 9002
    tls_cert: str | None = None
    tls_key: str | None = None
    drain_s: float = 2.0  # on shutdown: not ready at once, yet new streams served this long (health checks move on)
    grace_s: float = 5.0  # then streams in flight get this long

    def validate(self) -> None:
        self.placement.validate()
        if not 0 < self.grpc_port < 65536:
            raise AladdinError(f"--grpc-port must be in 1..65535, got {self.grpc_port}")
        if self.grpc_port == self.placement.port and self.grpc_host == self.placement.host:
            raise AladdinError(f"--grpc-port and --metrics-port must differ, both are {self.grpc_port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise AladdinError("TLS needs both --tls-cert and --tls-key (PEM files)")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not Path(path).is_file():
                raise AladdinError(f"TLS file {path} does not exist")
        for name in ("drain_s", "grace_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise AladdinError(f"--{name[:-2]} must be >= 0 seconds, got {value}")


def endpoint_url(address: str) -> str:
    """A worker as ``HOST:PORT`` (what gateways name endpoints by) or a URL: its URL."""
    if "://" in address:
        return address.rstrip("/")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise AladdinError(f"--worker {address!r} is not HOST:PORT (e.g. 10.0.0.7:8000) or an http:// URL")
    return f"http://{address}"


# ---------------------------------------------------------------------- messages


def _header_option(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
                                      append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)


def _common(headers: dict[str, str] | None = None, remove: Iterable[str] = (), body: bytes | None = None,
            clear_route_cache: bool = False) -> ext.CommonResponse:
    common = ext.CommonResponse(clear_route_cache=clear_route_cache)
    if headers or remove:
        common.header_mutation.CopyFrom(ext.HeaderMutation(
            set_headers=[_header_option(k, v) for k, v in (headers or {}).items()], remove_headers=list(remove)))
    if body is not None:
        common.body_mutation.CopyFrom(ext.BodyMutation(body=body))
    return common


def _destination_metadata(endpoint: str) -> struct_pb2.Struct:
    metadata = struct_pb2.Struct()
    metadata.update({DESTINATION_NAMESPACE: {DESTINATION_KEY: endpoint}})
    return metadata


def immediate(status: int, body: dict[str, Any], retry_after: int | None = None) -> ext.ProcessingResponse:
    """An answer the picker makes itself (OpenAI's error shape), instead of any upstream."""
    headers = [_header_option("content-type", "application/json")]
    if retry_after is not None:
        headers.append(_header_option("retry-after", str(retry_after)))
    return ext.ProcessingResponse(immediate_response=ext.ImmediateResponse(
        status=http_status_pb2.HttpStatus(code=status), headers=ext.HeaderMutation(set_headers=headers),
        body=json.dumps(body).encode(), details=str(body.get("error", {}).get("message", ""))[:200]))


def _headers_of(message: Any) -> dict[str, str]:
    """Envoy's header map (values in ``raw_value`` or ``value``), keys lower-case."""
    out = {}
    for header in message.headers.headers:
        out[header.key.lower()] = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
    return out


def _metadata_value(request: Any, namespace: str, key: str) -> Any:
    """A value of ``metadata_context.filter_metadata[namespace][key]`` as Python (None: absent)."""
    if not request.HasField("metadata_context"):
        return None
    struct = request.metadata_context.filter_metadata.get(namespace)
    if struct is None or key not in struct.fields:
        return None
    value = struct.fields[key]
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "list_value":
        return [v.string_value for v in value.list_value.values if v.WhichOneof("kind") == "string_value"]
    return None


def parse_subset(value: Any) -> list[str] | None:
    """The subset hint (a list, or one comma-separated string) as endpoint ids; None: no hint."""
    if value is None:
        return None
    items = value if isinstance(value, list) else str(value).split(",")
    return [item.strip() for item in items if item.strip()]


# ---------------------------------------------------------------------- one request


@dataclass
class Exchange:
    """One HTTP request's ext_proc stream, as far as it has come."""

    headers: dict[str, str] = field(default_factory=dict)
    # how Envoy sends the bodies (its protocol_config); without one, the protocol's streaming mode
    request_mode: int = ProcessingMode.FULL_DUPLEX_STREAMED
    response_mode: int = ProcessingMode.NONE
    subset: list[str] | None = None
    body: bytearray = field(default_factory=bytearray)
    answered: bool = False  # the request side is answered (picked or refused)
    endpoint: str | None = None
    ticket: Ticket | None = None
    tracker: proxy.StreamTracker | None = None
    partial_event: bytes = b""  # the start of a response event whose end is in the next chunk
    response_body: bytearray | None = None  # a non-streamed response, for its usage
    refused: bool = False

    @property
    def path(self) -> str:
        return self.headers.get(":path", "").split("?", 1)[0]

    @property
    def streamed(self) -> bool:
        return self.request_mode == ProcessingMode.FULL_DUPLEX_STREAMED


class Picker(ext_grpc.ExternalProcessorServicer):
    """The ext_proc service. ``tokenizer``: as PlacementService takes it (tests pass one)."""

    def __init__(self, config: PickerConfig, tokenizer: Tokenizer | None = None, tokenizer_dir: str | None = None):
        config.validate()
        self.config = config
        self.metrics = RouterMetrics()
        self.service = PlacementService(config.placement, self.metrics, tokenizer, tokenizer_dir)
        self.health = health_aio.HealthServicer()
        self.streams = 0  # ext_proc streams open now

    # ------------------------------------------------------------------ the stream

    async def Process(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:  # noqa: N802
        exchange = Exchange()
        self.streams += 1
        try:
            async for message in request_iterator:
                for response in await self._handle(exchange, message):
                    yield response
        finally:
            self.streams -= 1
            self._end(exchange)

    async def _handle(self, exchange: Exchange, message: Any) -> list[Any]:
        kind = message.WhichOneof("request")
        if kind == "request_headers":
            return await self._request_headers(exchange, message)
        if kind == "request_body":
            exchange.body += message.request_body.body
            if not message.request_body.end_of_stream:
                return []
            return await self._answer(exchange)
        if kind == "request_trailers":
            out = [] if exchange.answered else await self._answer(exchange)
            return [*out, ext.ProcessingResponse(request_trailers=ext.TrailersResponse())]
        if kind == "response_headers":
            self._response_headers(exchange, message)
            return [ext.ProcessingResponse(response_headers=ext.HeadersResponse())]
        if kind == "response_body":
            return [self._response_body(exchange, message.response_body)]
        if kind == "response_trailers":
            self._response_end(exchange)
            return [ext.ProcessingResponse(response_trailers=ext.TrailersResponse())]
        return []

    async def _request_headers(self, exchange: Exchange, message: Any) -> list[Any]:
        exchange.headers = _headers_of(message.request_headers)
        exchange.subset = parse_subset(_metadata_value(message, SUBSET_NAMESPACE, SUBSET_KEY))
        if message.HasField("protocol_config"):
            exchange.request_mode = message.protocol_config.request_body_mode
            exchange.response_mode = message.protocol_config.response_body_mode
        if message.request_headers.end_of_stream:  # no body (a GET): the least loaded worker
            return await self._answer(exchange)
        if not exchange.streamed:
            return [ext.ProcessingResponse(request_headers=ext.HeadersResponse())]  # the body follows
        return []  # FULL_DUPLEX_STREAMED: the header answer waits for the body's end

    async def _answer(self, exchange: Exchange) -> list[Any]:
        """The request side's answer, once the whole body is in: a pick or a refusal."""
        exchange.answered = True
        try:
            endpoint, body = await self._pick(exchange)
        except ClientError as exc:
            exchange.refused = True
            self.metrics.requests.inc("rejected" if exc.status == 429 else f"refused_{exc.status}")
            return [immediate(exc.status, exc.body(), exc.retry_after)]
        exchange.endpoint = endpoint
        headers = {DESTINATION_KEY: endpoint}
        if exchange.ticket is not None:
            headers[REQUEST_ID_HEADER] = exchange.ticket.id
        metadata = _destination_metadata(endpoint)
        had_body = bool(exchange.body) or body is not None
        if not had_body:  # bodiless: the pick rides on the header answer
            return [ext.ProcessingResponse(request_headers=ext.HeadersResponse(
                response=_common(headers, clear_route_cache=True)), dynamic_metadata=metadata)]
        data = body if body is not None else bytes(exchange.body)
        if not exchange.streamed:  # BUFFERED: the headers were answered; this answer replaces the body
            headers["content-length"] = str(len(data))
            return [ext.ProcessingResponse(request_body=ext.BodyResponse(
                response=_common(headers, body=data, clear_route_cache=True)), dynamic_metadata=metadata)]
        out = [ext.ProcessingResponse(request_headers=ext.HeadersResponse(
            response=_common(headers, remove=("content-length",), clear_route_cache=True)), dynamic_metadata=metadata)]
        chunks = [data[i:i + BODY_CHUNK_BYTES] for i in range(0, len(data), BODY_CHUNK_BYTES)] or [b""]
        for i, chunk in enumerate(chunks):
            streamed = ext.StreamedBodyResponse(body=chunk, end_of_stream=i == len(chunks) - 1)
            out.append(ext.ProcessingResponse(request_body=ext.BodyResponse(
                response=ext.CommonResponse(body_mutation=ext.BodyMutation(streamed_response=streamed)))))
        return out

    async def _pick(self, exchange: Exchange) -> tuple[str, bytes | None]:
        """The endpoint for this request and the body to send it (None: unchanged)."""
        service = self.service
        workers, placer = service.workers, service.placer
        assert workers is not None and placer is not None
        eligible = [e.id for e in workers.endpoints.values() if e.up
                    and (exchange.subset is None or e.id in exchange.subset)]
        if not eligible:
            what = "in the gateway's subset " if exchange.subset is not None else ""
            raise ClientError(503, f"no model server {what}is ready", "ServiceUnavailableError",
                              self.config.placement.retry_after_s)
        if exchange.headers.get(":method", "POST") != "POST" or exchange.path not in PLACED_PATHS:
            least = min(eligible, key=lambda e: (len(placer.scheduler.worker(e).requests), workers.endpoints[e].untracked))
            return least, None
        size = len(exchange.body)
        if size > self.config.placement.max_body_bytes:
            self.metrics.bad_requests.inc()
            raise ClientError(413, f"the request body is larger than {self.config.placement.max_body_bytes} bytes")
        headers = CIMultiDict(exchange.headers)  # HTTP/2 and Envoy lower-case names; the SLO headers' are mixed
        measured = await service.measure(exchange.path, bytes(exchange.body), headers)
        parsed = measured.parsed
        service.desired.arrived()
        try:
            ticket = service.admit(measured, only=eligible if exchange.subset is not None else None)
            exchange.ticket = ticket
            worker = await placer.wait(ticket, self.config.placement.timeouts.queue)
        except Refused as refusal:
            self.metrics.rejected.inc(refusal.reason)
            raise ClientError(429, refusal.message, "TooManyRequests", self.config.placement.retry_after_s) from None
        self.metrics.requests.inc("picked")
        return worker, proxy.upstream_body(parsed, ticket, placer.clock(), ask_usage=False)

    # ------------------------------------------------------------------ the response

    def _response_headers(self, exchange: Exchange, message: Any) -> None:
        ticket, placer = exchange.ticket, self.service.placer
        if ticket is None or placer is None:
            return
        headers = _headers_of(message.response_headers)
        served = _metadata_value(message, DESTINATION_NAMESPACE, SERVED_KEY)
        if isinstance(served, list):
            served = served[0] if served else None
        status = headers.get(":status", "200")
        if served is not None and served != exchange.endpoint:
            self.metrics.requests.inc("served_elsewhere")
            log.warning("request %s was picked for %s but served by %s", ticket.id, exchange.endpoint, served)
            placer.close(ticket)
            return
        if status != "200":
            self.metrics.requests.inc(f"worker_{status}")
            placer.close(ticket)
            return
        if exchange.response_mode != ProcessingMode.NONE and not message.response_headers.end_of_stream:
            if headers.get("content-type", "").startswith("text/event-stream"):
                exchange.tracker = proxy.StreamTracker(wants_usage=True)
            else:
                exchange.response_body = bytearray()
            return
        self._release(exchange)

    def _release(self, exchange: Exchange) -> None:
        """The picker no longer sees this request: its worker's engine plugin reports its end."""
        ticket, workers, placer = exchange.ticket, self.service.workers, self.service.placer
        assert ticket is not None and workers is not None and placer is not None
        info = workers.endpoints[ticket.worker].info if ticket.worker in workers.endpoints else None
        if info is None or not info.plugin:
            placer.close(ticket)  # a stock worker reports no requests: the core cannot follow it
        else:
            ticket.released = True

    def _response_body(self, exchange: Exchange, body: Any) -> Any:
        """Follow a streamed response (tokens, its end) and pass it on unchanged."""
        data, end = body.body, body.end_of_stream
        ticket, placer = exchange.ticket, self.service.placer
        if ticket is not None and placer is not None and not ticket.done:
            if exchange.tracker is not None:
                events = exchange.partial_event + data  # an event may be split across chunks
                cut = proxy.events_end(events)
                exchange.partial_event = events[cut:]
                for event in events[:cut].split(b"\n\n"):
                    if event.strip():
                        exchange.tracker.feed(event.strip(b"\n"))
                placer.tokens(ticket, exchange.tracker.generated)
            elif exchange.response_body is not None and len(exchange.response_body) + len(data) <= MAX_RESPONSE_BYTES:
                exchange.response_body += data
            if end or (exchange.tracker is not None and exchange.tracker.done):
                self._response_end(exchange)
        if exchange.response_mode == ProcessingMode.FULL_DUPLEX_STREAMED:  # every chunk is answered with itself
            streamed = ext.StreamedBodyResponse(body=data, end_of_stream=end)
            return ext.ProcessingResponse(response_body=ext.BodyResponse(
                response=ext.CommonResponse(body_mutation=ext.BodyMutation(streamed_response=streamed))))
        return ext.ProcessingResponse(response_body=ext.BodyResponse())

    def _response_end(self, exchange: Exchange) -> None:
        """A followed response is over: the core learns its length (from the usage when given)."""
        ticket, placer = exchange.ticket, self.service.placer
        if ticket is None or placer is None or ticket.done:
            return
        tokens = None
        if exchange.tracker is not None and not exchange.tracker.error:
            tokens = exchange.tracker.output_tokens
        elif exchange.response_body is not None:
            try:
                tokens = int((json.loads(bytes(exchange.response_body)).get("usage") or {})["completion_tokens"])
            except (ValueError, AttributeError, TypeError, KeyError):
                tokens = None
        if tokens is None:
            self.metrics.requests.inc("error")
            placer.close(ticket)
        else:
            self.metrics.requests.inc("ok")
            placer.finish(ticket, tokens)

    def _end(self, exchange: Exchange) -> None:
        """The stream closed (the request is over for Envoy, or the gateway or client went away)."""
        ticket, placer = exchange.ticket, self.service.placer
        if ticket is None or placer is None or ticket.done or ticket.released:
            return
        if exchange.tracker is not None or exchange.response_body is not None:
            placer.close(ticket)  # followed, but its end never came (the client or the gateway went away)
        elif exchange.answered and not exchange.refused and ticket.placed_at is not None:
            self._release(exchange)  # picked, then the stream ended before response headers reached us
        else:
            placer.close(ticket)

    # ------------------------------------------------------------------ health

    async def set_ready(self, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in HEALTH_SERVICES:
            if name == "liveness":
                continue
            await self.health.set(name, status)

    async def watch_readiness(self) -> None:
        """Ready while any worker is up (the protocol's readiness: able to pick)."""
        workers = self.service.workers
        assert workers is not None
        ready = None
        while True:
            now = any(e.up for e in workers.endpoints.values())
            if now != ready:
                ready = now
                await self.set_ready(now)
            await asyncio.sleep(self.config.placement.health_interval_s)


# ---------------------------------------------------------------------- serving


class PickerServer:
    """The gRPC server (ext_proc + health, TLS when configured) and the HTTP side (metrics,
    state, health), in one event loop. ``start()`` / ``stop()``; ``serve()`` until a signal."""

    def __init__(self, config: PickerConfig, tokenizer: Tokenizer | None = None, tokenizer_dir: str | None = None):
        self.config = config
        self.picker = Picker(config, tokenizer, tokenizer_dir)
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self._grpc: Any = None
        self._runner: Any = None
        self._ready_task: asyncio.Task | None = None
        self.draining = False

    async def start(self) -> None:
        from aiohttp import web

        from aladdin.plugin.router.app import PROMETHEUS_TYPE

        picker = self.picker
        await picker.service.start()
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        ext_grpc.add_ExternalProcessorServicer_to_server(picker, server)
        health_pb2_grpc.add_HealthServicer_to_server(picker.health, server)
        address = f"{self.config.grpc_host}:{self.config.grpc_port}"
        if self.config.tls_cert is not None:
            assert self.config.tls_key is not None
            credentials = grpc.ssl_server_credentials([(Path(self.config.tls_key).read_bytes(),
                                                        Path(self.config.tls_cert).read_bytes())])
            self.grpc_port = server.add_secure_port(address, credentials)
        else:
            self.grpc_port = server.add_insecure_port(address)
        if not self.grpc_port:
            raise AladdinError(f"cannot listen on {address} (in use?)")
        await picker.health.set("liveness", health_pb2.HealthCheckResponse.SERVING)
        workers = picker.service.workers
        assert workers is not None
        await picker.set_ready(any(e.up for e in workers.endpoints.values()))
        await server.start()
        self._grpc = server
        self._ready_task = asyncio.create_task(picker.watch_readiness())

        async def prometheus(_request: web.Request) -> web.Response:
            return web.Response(body=picker.metrics.registry.render().encode(), headers={"Content-Type": PROMETHEUS_TYPE})

        async def state(_request: web.Request) -> web.Response:
            return web.Response(text=picker.service.state_json(), content_type="application/json")

        async def health(_request: web.Request) -> web.Response:  # the readiness rule, for HTTP probes
            workers = picker.service.workers
            up = [e.id for e in workers.endpoints.values() if e.up] if workers else []
            status = "draining" if self.draining else "ok" if up else "no worker up"
            return web.json_response({"status": status, "workers_up": up, "streams": picker.streams},
                                     status=200 if status == "ok" else 503)

        app = web.Application()
        app.router.add_get("/metrics", prometheus)
        app.router.add_get("/state", state)
        app.router.add_get("/health", health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.placement.host, self.config.placement.port)
        await site.start()
        self.http_port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Not ready at once, new streams still served for the drain (until health checks move
        the gateways away), then the streams in flight get the grace."""
        picker = self.picker
        if self._ready_task is not None:
            self._ready_task.cancel()
            await asyncio.gather(self._ready_task, return_exceptions=True)
        if self._grpc is not None:
            self.draining = True
            await picker.set_ready(False)
            await asyncio.sleep(self.config.drain_s)
            await self._grpc.stop(self.config.grace_s)
        if self._runner is not None:
            await self._runner.cleanup()
        await picker.service.stop()

    async def serve(self) -> None:
        await self.start()
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        log.warning("aladdin picker: ext_proc on %s:%d%s, metrics on http://%s:%d", self.config.grpc_host,
                    self.grpc_port, " (TLS)" if self.config.tls_cert else "", self.config.placement.host, self.http_port)
        try:
            await done.wait()
        finally:
            await self.stop()


def run(config: PickerConfig, tokenizer_dir: str | None = None) -> None:
    """Serve until interrupted (``aladdin picker``)."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    asyncio.run(PickerServer(config, tokenizer_dir=tokenizer_dir).serve())
