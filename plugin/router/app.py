"""The router's aiohttp front end: OpenAI-compatible endpoints proxied to the worker the core picks.

Why one object: the handlers share the pool, the placer and the metrics, and their start-up
order matters (probe the workers, size the core's models from what they report, load the
tokenizer, then serve). Endpoints: ``POST /v1/completions`` and ``/v1/chat/completions``
(streaming or not), ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus),
``GET /state`` (JSON). Every answer the router makes itself is OpenAI's error shape with a
one-line message; 429s and 503s carry ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web

from aladdin.errors import AladdinError
from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel
from aladdin.plugin.core.policies import parse_policy
from aladdin.plugin.router import inputs, proxy
from aladdin.plugin.router.config import RouterConfig
from aladdin.plugin.router.inputs import ClientError, ParsedRequest, Tokenizer
from aladdin.plugin.router.metrics import RouterMetrics
from aladdin.plugin.router.placement import Placer, Refused, Ticket
from aladdin.plugin.router.scaling import DesiredWorkers
from aladdin.plugin.router.workers import Endpoint, Workers, reports_from_state

log = logging.getLogger("aladdin.router")

DEFAULT_MAX_NUM_SEQS = 256  # without a profile: vLLM's default
DEFAULT_MAX_BATCHED_TOKENS = 8192
OPEN_PATHS = ("/health",)  # answered without the API key
KEEPALIVE_S = 3.0  # idle upstream connections are dropped before uvicorn's 5 s keep-alive closes them
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KEEP_UPSTREAM_S = 1.0  # after [DONE], wait at most this for the body's end to keep the connection


class Router:
    """One router process's state and handlers; ``application()`` builds the aiohttp app.

    ``tokenizer``: counts prompt tokens (tests pass one); else ``tokenizer_dir`` names a model
    folder, and without either the tiny model's folder is used when the workers serve ``tiny``.
    """

    def __init__(self, config: RouterConfig, tokenizer: Tokenizer | None = None, tokenizer_dir: str | None = None):
        config.validate()
        self.config = config
        self.tokenizer = tokenizer
        self.tokenizer_dir = tokenizer_dir
        self.metrics = RouterMetrics()
        self.desired = DesiredWorkers(config.scaling)
        self.session: aiohttp.ClientSession | None = None
        self.workers: Workers | None = None
        self.placer: Placer | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aladdin-tokenize")
        # one thread: a fast tokenizer called from two threads at once raises "Already borrowed"
        self._tick_task: asyncio.Task | None = None
        self._settling: set[asyncio.Future] = set()  # streams whose upstream body is being read to its end
        self._upstream_headers = {"Authorization": f"Bearer {config.worker_api_key}"} if config.worker_api_key else {}
        self.started = time.time()
        self.metrics.registry.collectors.append(self._collect)

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
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            limit=0, ttl_dns_cache=300, keepalive_timeout=KEEPALIVE_S))
        self.workers = Workers(self.config, self.session)
        await self.workers.probe_all()
        loop = asyncio.get_running_loop()
        models = self._perf_models()
        spec = parse_policy(self.config.policy, self.config.headroom)
        limit = self.context_limit(None)
        self.placer = await loop.run_in_executor(None, lambda: Placer(
            models, spec, self.metrics, max_queue=self.config.max_queue, lost_ttft=self.config.lost_ttft,
            queue_order=self.config.queue_order, max_output_tokens=limit, length_quantile=self.config.length_quantile))
        for endpoint in self.workers.endpoints.values():
            self.placer.set_up(endpoint.id, endpoint.up)
        self.metrics.start_series(list(self.workers.endpoints))
        self.workers.on_change = self._worker_changed
        self.workers.on_state = self._worker_state
        if self.tokenizer is None:
            folder = self.tokenizer_dir
            if folder is None:
                if "tiny" not in self.known_models():
                    raise AladdinError("--tokenizer DIR is needed (a model folder with the served model's tokenizer); "
                                       "only the tiny model's is found on its own")
                from aladdin.modeldir import default_model_dir

                folder = str(await loop.run_in_executor(self.executor, default_model_dir, "tiny"))
            self.tokenizer = await loop.run_in_executor(self.executor, inputs.HFTokenizer, folder)
        self.workers.start()
        self._tick_task = asyncio.create_task(self._tick_loop())
        up = sum(e.up for e in self.workers.endpoints.values())
        log.info("aladdin router: policy %s, %d/%d workers up, models %s", spec.name, up,
                 len(self.workers.endpoints), ", ".join(self.known_models()) or "(none yet)")

    async def _cleanup(self, _app: web.Application) -> None:
        for task in list(self._settling):
            task.cancel()
        await asyncio.gather(*self._settling, return_exceptions=True)
        if self._tick_task is not None:
            self._tick_task.cancel()
            await asyncio.gather(self._tick_task, return_exceptions=True)
        if self.workers is not None:
            await self.workers.stop()
        if self.session is not None:
            await self.session.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _perf_models(self) -> list[tuple[str, PerfModel]]:
        """Each worker's model: the profile's times (or none) with the worker's own KV cache."""
        assert self.workers is not None
        if self.config.profile is not None:
            from aladdin.plugin.profile.io import load_profile

            base = load_profile(self.config.profile)
        else:
            zero = 0.0
            base = None
            default_kv = None
            known = [e.info for e in self.workers.endpoints.values() if e.info and e.info.capacity_tokens]
            if known:
                best = max(known, key=lambda i: i.capacity_tokens or 0)
                default_kv = KVModel(best.block_size or 16, best.capacity_tokens or 0)
            if default_kv is None:
                raise AladdinError("no worker reported its KV cache size and no --profile gives one; start the "
                                   "workers first or pass --profile")
            base = PerfModel(PrefillModel(zero, zero, zero), DecodeModel(zero, zero, zero), default_kv,
                             DEFAULT_MAX_NUM_SEQS, DEFAULT_MAX_BATCHED_TOKENS)
        models = []
        for endpoint in self.workers.endpoints.values():
            info = endpoint.info
            perf = base
            if info is not None and info.capacity_tokens and info.block_size:
                perf = replace(base, kv=KVModel(info.block_size, info.capacity_tokens))
            models.append((endpoint.id, perf))
        return models

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_s)
            try:
                assert self.placer is not None
                self.placer.tick()
            except Exception:  # noqa: BLE001 - the clock must keep running
                log.exception("queue retry failed")

    def _worker_changed(self, endpoint: Endpoint) -> None:
        assert self.placer is not None
        self.placer.set_up(endpoint.id, endpoint.up)

    def _worker_state(self, endpoint: Endpoint, state: dict[str, Any] | None) -> None:
        placer = self.placer
        assert placer is not None
        mine = placer.on_worker(endpoint.id)
        if state is not None:
            prompts = {t.id: t.core.prompt_tokens for t in mine}
            placer.reconcile(endpoint.id, reports_from_state(state, prompts.get), endpoint.kv_tokens_held)
            scale = state.get("decode_scale")  # the engine's measured / profiled decode step time
            if isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0:
                placer.scale_decode(endpoint.id, float(scale))
        elif endpoint.kv_tokens_held is not None:
            placer.report_kv(endpoint.id, endpoint.kv_tokens_held)
        seen = (endpoint.running or 0) + (endpoint.waiting or 0) + (endpoint.held or 0)
        endpoint.untracked = max(seen - len(mine), 0)

    # ------------------------------------------------------------------ helpers

    def known_models(self) -> list[str]:
        assert self.workers is not None
        names: dict[str, None] = {}
        for endpoint in self.workers.endpoints.values():
            if endpoint.info is not None:
                names.update(dict.fromkeys(endpoint.info.model_ids))
        return list(names)

    def context_limit(self, model: str | None) -> int | None:
        """The largest context any worker serving ``model`` holds (its length limit and KV cache)."""
        assert self.workers is not None
        limits = []
        for endpoint in self.workers.endpoints.values():
            info = endpoint.info
            if info is None or (model is not None and model not in info.model_ids):
                continue
            bounds = [b for b in (info.max_model_len, info.capacity_tokens) if b]
            if bounds:
                limits.append(min(bounds))
        return max(limits) if limits else None

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
        assert self.workers is not None
        up = [e.id for e in self.workers.endpoints.values() if e.up]
        return web.json_response({"status": "ok" if up else "no worker up", "workers_up": up},
                                 status=200 if up else 503)

    async def models(self, _request: web.Request) -> web.Response:
        assert self.workers is not None
        cards: dict[str, dict[str, Any]] = {}
        for endpoint in self.workers.endpoints.values():
            if endpoint.info is not None:
                for card in endpoint.info.models:
                    cards.setdefault(str(card["id"]), card)
        return web.json_response({"object": "list", "data": list(cards.values())})

    async def prometheus(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.registry.render().encode(), headers={"Content-Type": PROMETHEUS_TYPE})

    def _collect(self) -> None:
        placer, workers, m = self.placer, self.workers, self.metrics
        if placer is None or workers is None:
            return
        m.queue_length.set(len(placer.scheduler.queue))
        for worker_id, (kv, atgt) in placer.fills().items():
            m.kv_fill.set(kv, worker_id)
            m.atgt_fill.set(atgt, worker_id)
            m.decode_scale.set(placer.scheduler.worker(worker_id).decode_scale, worker_id)
            m.outstanding.set(len(placer.scheduler.worker(worker_id).requests), worker_id)
            m.worker_up.set(1.0 if workers.endpoints[worker_id].up else 0.0, worker_id)
        m.desired.set(self.desired.compute(placer, sum(e.up for e in workers.endpoints.values())))

    async def state(self, _request: web.Request) -> web.Response:
        placer, workers = self.placer, self.workers
        assert placer is not None and workers is not None
        fills = placer.fills()
        now = time.monotonic()
        rows = []
        for endpoint in workers.endpoints.values():
            core = placer.scheduler.worker(endpoint.id)
            kv, atgt = fills[endpoint.id]
            info = endpoint.info
            rows.append({
                "id": endpoint.id, "url": endpoint.url, "up": endpoint.up, "failures": endpoint.failures,
                "last_error": endpoint.last_error, "source": "aladdin-state" if info and info.plugin else "vllm-metrics",
                "models": info.model_ids if info else [], "max_model_len": info.max_model_len if info else None,
                "kv_capacity_tokens": core.perf.kv.capacity_tokens, "outstanding": len(core.requests),
                "decoding": core.num_decoding, "predicted_kv_fill": kv, "predicted_atgt_fill": atgt,
                "decode_scale": core.decode_scale,
                "kv_tokens_held": endpoint.kv_tokens_held, "reported": {
                    "running": endpoint.running, "waiting": endpoint.waiting, "held": endpoint.held,
                    "age_s": None if endpoint.state_at is None else now - endpoint.state_at},
                "untracked": endpoint.untracked, "placements": self.metrics.placements.value(endpoint.id),
            })
        queue = [{"id": r.id, "prompt_tokens": r.prompt_tokens, "predicted_output_tokens": r.predicted_output_tokens,
                  "waited_s": placer.clock() - r.arrival_time} for r in placer.scheduler.queue]
        m = self.metrics
        body = {
            "policy": placer.spec.to_dict(), "profile": self.config.profile, "uptime_s": time.time() - self.started,
            "workers": rows, "queue": {"length": len(queue), "max": self.config.max_queue, "requests": queue},
            "in_flight": len(placer.tickets), "desired_workers": m.desired.value(), "desired_source": self.desired.source,
            "totals": {
                "requests": dict(("/".join(k), v) for k, v in m.requests.values.items()),
                "rejected_429": dict(("/".join(k), v) for k, v in m.rejected.values.items()),
                "retries": dict(("/".join(k), v) for k, v in m.retries.values.items()),
                "bad_requests": m.bad_requests.value(), "queued_ever": placer.scheduler.queued_requests,
                "shed": placer.scheduler.shed_requests,
            },
            "prediction_error_by_worker": placer.scheduler.error_summary(),
            "slo_defaults": {"ttft_s": _finite(self.config.ttft_slo), "atgt_s": _finite(self.config.atgt_slo)},
        }
        return web.json_response(body, dumps=lambda obj: json.dumps(obj, default=str))

    # ------------------------------------------------------------------ completions

    async def completions(self, request: web.Request) -> web.StreamResponse:
        placer, workers, cfg = self.placer, self.workers, self.config
        assert placer is not None and workers is not None and self.tokenizer is not None
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.metrics.bad_requests.inc()
            raise ClientError(413, f"the request body is larger than {cfg.max_body_bytes} bytes") from None
        try:
            parsed = inputs.parse(request.path, body, request.headers)
            known = self.known_models()
            if known and parsed.model not in known:
                raise ClientError(404, f"the model {parsed.model!r} does not exist here; served: {', '.join(known)}",
                                  "NotFoundError")
            loop = asyncio.get_running_loop()
            prompt_tokens = await loop.run_in_executor(self.executor, self.tokenizer.count, parsed)
            limit = self.context_limit(parsed.model)
            inputs.check_lengths(parsed, prompt_tokens, limit)
        except ClientError:
            self.metrics.bad_requests.inc()
            raise
        cap = (limit - prompt_tokens) if limit is not None else (parsed.max_tokens or 2**31)
        if parsed.max_tokens is not None:
            cap = min(cap, parsed.max_tokens)
        ttft = parsed.ttft_slo if parsed.ttft_slo is not None else cfg.ttft_slo
        atgt = parsed.atgt_slo if parsed.atgt_slo is not None else cfg.atgt_slo
        self.desired.arrived()
        ticket: Ticket | None = None
        try:
            ticket = placer.admit(prompt_tokens, max(cap, 1), ttft, atgt, parsed.predicted_output_tokens)
            last = ""
            while True:
                worker = await placer.wait(ticket, cfg.timeouts.queue)
                endpoint = workers.endpoints[worker]
                try:
                    upstream = await proxy.start(
                        self.session, endpoint.url, parsed, ticket, headers=self._upstream_headers,  # type: ignore[arg-type]
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


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


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
