"""The router's aiohttp front end: OpenAI-compatible endpoints proxied to the worker the core picks.

What it adds to the shared :class:`~aladdin.plugin.router.service.PlacementService` is the
data path: it proxies each request to its worker and follows the stream. Endpoints: ``POST /v1/completions`` and ``/v1/chat/completions``
(streaming or not), ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus),
``GET /state`` (JSON). Every answer the router makes itself is OpenAI's error shape with a
one-line message; 429s and 503s carry ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from aladdin.plugin.router import proxy
from aladdin.plugin.router.config import RouterConfig
from aladdin.plugin.router.inputs import ClientError, ParsedRequest, Tokenizer
from aladdin.plugin.router.metrics import RouterMetrics
from aladdin.plugin.router.placement import Placer, Refused, Ticket
from aladdin.plugin.router.service import PlacementService
from aladdin.plugin.router.workers import Endpoint, Workers

log = logging.getLogger("aladdin.router")

OPEN_PATHS = ("/health",)  # answered without the API key
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KEEP_UPSTREAM_S = 1.0  # after [DONE], wait at most this for the body's end to keep the connection


class Router:
    """One router process's handlers around a :class:`PlacementService`; ``application()``
    builds the aiohttp app. ``tokenizer`` / ``tokenizer_dir``: as PlacementService takes them."""

    def __init__(self, config: RouterConfig, tokenizer: Tokenizer | None = None, tokenizer_dir: str | None = None):
        self.config = config
        self.metrics = RouterMetrics()
        self.service = PlacementService(config, self.metrics, tokenizer, tokenizer_dir)
        self._settling: set[asyncio.Future] = set()  # streams whose upstream body is being read to its end
        self._upstream_headers = {"Authorization": f"Bearer {config.worker_api_key}"} if config.worker_api_key else {}

    @property
    def placer(self) -> Placer:
        assert self.service.placer is not None
        return self.service.placer

    @property
    def workers(self) -> Workers:
        assert self.service.workers is not None
        return self.service.workers

    # ------------------------------------------------------------------ lifecycle

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[self._guard])
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/state", self.state)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, _app: web.Application) -> None:
        await self.service.start()

    async def _cleanup(self, _app: web.Application) -> None:
        for task in list(self._settling):
            task.cancel()
        await asyncio.gather(*self._settling, return_exceptions=True)
        await self.service.stop()

    # ------------------------------------------------------------------ helpers

    def _error(self, exc: ClientError, worker: str | None = None) -> web.Response:
        headers = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        if worker is not None:
            headers[proxy.WORKER_HEADER] = worker
        return web.json_response(exc.body(), status=exc.status, headers=headers)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        key = self.config.api_key
        if key is not None and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                return self._error(ClientError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                                               "AuthenticationError"))
        try:
            return await handler(request)
        except ClientError as exc:
            return self._error(exc)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return self._error(ClientError(exc.status, exc.reason or "request refused", "BadRequestError"))
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:  # noqa: BLE001 - one bad request must not take the router down
            log.exception("request %s %s failed", request.method, request.path)
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return self._error(ClientError(500, f"router error: {type(exc).__name__}: {line}"[:500], "InternalServerError"))

    # ------------------------------------------------------------------ endpoints

    async def health(self, _request: web.Request) -> web.Response:
        up = [e.id for e in self.workers.endpoints.values() if e.up]
        return web.json_response({"status": "ok" if up else "no worker up", "workers_up": up},
                                 status=200 if up else 503)

    async def models(self, _request: web.Request) -> web.Response:
        cards: dict[str, dict[str, Any]] = {}
        for endpoint in self.workers.endpoints.values():
            if endpoint.info is not None:
                for card in endpoint.info.models:
                    cards.setdefault(str(card["id"]), card)
        return web.json_response({"object": "list", "data": list(cards.values())})

    async def prometheus(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.registry.render().encode(), headers={"Content-Type": PROMETHEUS_TYPE})

    async def state(self, _request: web.Request) -> web.Response:
        return web.Response(text=self.service.state_json(), content_type="application/json")

    # ------------------------------------------------------------------ completions

    async def completions(self, request: web.Request) -> web.StreamResponse:
        placer, workers, cfg, service = self.placer, self.workers, self.config, self.service
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.metrics.bad_requests.inc()
            raise ClientError(413, f"the request body is larger than {cfg.max_body_bytes} bytes") from None
        measured = await service.measure(request.path, body, request.headers)
        parsed = measured.parsed
        service.desired.arrived()
        ticket: Ticket | None = None
        try:
            ticket = service.admit(measured)
            last = ""
            while True:
                worker = await placer.wait(ticket, cfg.timeouts.queue)
                endpoint = workers.endpoints[worker]
                try:
                    upstream = await proxy.start(
                        service.session, endpoint.url, parsed, ticket, headers=self._upstream_headers,  # type: ignore[arg-type]
                        connect_s=cfg.timeouts.connect, first_token_s=cfg.timeouts.first_token,
                        request_s=cfg.timeouts.request, now=placer.clock())
                except proxy.Retry as retry:
                    if retry.worker_failed:
                        workers.failed(worker, retry.message)
                    elif retry.reason == "failed":
                        workers.suspect(worker)
                    last = f"{worker}: {retry.message}"
                    if ticket.attempts >= cfg.max_attempts:
                        self.metrics.requests.inc("failed")
                        return self._error(ClientError(503, f"no worker served the request after {ticket.attempts} "
                                                            f"attempts; last: {last}", "ServiceUnavailableError",
                                                       cfg.retry_after_s))
                    self.metrics.retries.inc(retry.reason)
                    placer.replace(ticket)
                    continue
                except proxy.UpstreamTimeout as exc:
                    self.metrics.requests.inc("timeout")
                    return self._error(ClientError(504, f"{worker}: {exc}", "GatewayTimeoutError"), worker)
                return await self._respond(request, parsed, ticket, endpoint, upstream)
        except Refused as refusal:
            self.metrics.rejected.inc(refusal.reason)
            self.metrics.requests.inc("rejected")
            return self._error(ClientError(429, refusal.message, "TooManyRequests", cfg.retry_after_s))
        finally:
            if ticket is not None:
                placer.close(ticket)  # a no-op once it finished

    async def _respond(self, request: web.Request, parsed: ParsedRequest, ticket: Ticket, endpoint: Endpoint,
                       upstream: proxy.Upstream) -> web.StreamResponse:
        placer = self.placer
        assert placer is not None
        headers = {proxy.WORKER_HEADER: endpoint.id}
        if upstream.body is not None:  # a whole answer
            if upstream.status == 200:
                try:
                    usage = json.loads(upstream.body).get("usage") or {}
                    placer.finish(ticket, int(usage.get("completion_tokens") or 0))
                except (ValueError, AttributeError, TypeError):
                    placer.close(ticket)
                self.metrics.requests.inc("ok")
            else:
                self.metrics.requests.inc(f"worker_{upstream.status}")
            return web.Response(body=upstream.body, status=upstream.status, headers=headers,
                                content_type=upstream.content_type.split(";")[0])
        assert upstream.reader is not None
        response = web.StreamResponse(status=200, headers={**headers, "Content-Type": "text/event-stream",
                                                            "Cache-Control": "no-cache"})
        tracker = proxy.StreamTracker(parsed.wants_usage)
        reader = upstream.reader
        reported = 0
        report_at = 0.0  # progress goes to the core at once the first time, then at most once a tick
        finished = False
        try:
            await response.prepare(request)
            events = upstream.head
            cut: str | None = None
            while True:
                out = tracker.forward(events)  # every event of one read goes out in one write
                if tracker.generated != reported:
                    now = time.monotonic()
                    if now >= report_at:
                        reported = tracker.generated
                        report_at = now + self.config.tick_s
                        placer.tokens(ticket, reported)
                if out:
                    await response.write(out)
                if tracker.done:
                    break
                try:
                    events = await reader.next(self.config.timeouts.read)
                except asyncio.TimeoutError:
                    cut = f"no data from worker {endpoint.id} for {self.config.timeouts.read:g} s"
                    break
                except (aiohttp.ClientError, ConnectionError) as exc:
                    cut = f"worker {endpoint.id} failed mid-stream: {type(exc).__name__}"
                    break
                if events is None:
                    cut = f"worker {endpoint.id} closed the stream before its end"
                    break
            if cut is not None:
                self.metrics.requests.inc("cut")
                await response.write(proxy.error_event(f"aladdin router: {cut}; the response is incomplete") + b"\n\n")
                await response.write(b"data: [DONE]\n\n")
                placer.close(ticket)
            else:
                self.metrics.requests.inc("error" if tracker.error else "ok")
                if tracker.error:
                    placer.close(ticket)
                else:
                    placer.finish(ticket, tracker.output_tokens)
            finished = True
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.metrics.requests.inc("client_gone")
            raise
        finally:
            if not finished or not tracker.done:
                upstream.close()  # the worker sees the client gone and aborts the request
            elif reader.at_end():
                upstream.release()  # back to the pool
            else:  # the body's end follows [DONE]: read it apart, so the connection is kept
                task = asyncio.ensure_future(self._settle(upstream))
                self._settling.add(task)
                task.add_done_callback(self._settling.discard)
        return response

    async def _settle(self, upstream: proxy.Upstream) -> None:
        """A stream that is over for the client: its connection goes back to the pool once the
        body has ended cleanly (within a second), else it is closed."""
        assert upstream.reader is not None and upstream.response is not None
        reusable = False
        try:
            reusable = await upstream.reader.finish(min(self.config.timeouts.read, KEEP_UPSTREAM_S))
        finally:
            if reusable:
                upstream.release()
            else:
                upstream.close()


def run(config: RouterConfig, tokenizer_dir: str | None = None) -> None:
    """Serve until interrupted (``aladdin router``)."""
    router = Router(config, tokenizer_dir=tokenizer_dir)
    try:  # uvloop when installed: a faster event loop (fewer syscalls per streamed event)
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    web.run_app(router.application(), host=config.host, port=config.port, handler_cancellation=True,
                access_log=None, print=lambda line: log.warning("%s", line))
