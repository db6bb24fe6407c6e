"""What every front end of the scheduler core shares: the pool, the core, the tokenizer, the checks.

Why one object: the aiohttp router and the Envoy endpoint picker place requests the same way.
Both probe the workers, size the core's models from what they report, follow each worker's
state (the engine plugin's exact per-request rows, or a stock vLLM's metrics), retry the
central queue on a clock, and refuse bad input with the same 4xx lines. Only what carries the
bytes differs (the router proxies them; Envoy does, for the picker), so that is all the two
front ends implement.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import aiohttp

from aladdin.errors import AladdinError
from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel
from aladdin.plugin.core.policies import parse_policy
from aladdin.plugin.router import inputs
from aladdin.plugin.router.config import RouterConfig
from aladdin.plugin.router.inputs import ClientError, ParsedRequest, Tokenizer
from aladdin.plugin.router.metrics import RouterMetrics
from aladdin.plugin.router.placement import Placer, Ticket
from aladdin.plugin.router.scaling import DesiredWorkers
from aladdin.plugin.router.workers import ROUTER_ID, Endpoint, Workers, reports_from_state

if TYPE_CHECKING:
    from aladdin.plugin.predict.text import TextLengthPredictor

log = logging.getLogger("aladdin.router")

DEFAULT_MAX_NUM_SEQS = 256  # without a profile: vLLM's default
DEFAULT_MAX_BATCHED_TOKENS = 8192
KEEPALIVE_S = 3.0  # idle upstream connections are dropped before uvicorn's 5 s keep-alive closes them
UNSEEN_GRACE_S = 2.0  # a released request its worker never reported within this long has ended


@dataclass(frozen=True)
class Measured:
    """A checked request, counted: what placement needs besides its SLOs."""

    parsed: ParsedRequest
    prompt_tokens: int
    max_output_tokens: int  # the output cap: its max_tokens, within the largest context
    text_prediction: float | None = None  # the text model's uncorrected length (--length-predictor text)


class PlacementService:
    """The shared half of a front end; ``start()`` once inside the event loop, ``stop()`` at the end.

    ``tokenizer``: counts prompt tokens (tests pass one); else ``tokenizer_dir`` names a model
    folder, and without either the tiny model's folder is used when the workers serve ``tiny``.
    """

    def __init__(self, config: RouterConfig, metrics: RouterMetrics, tokenizer: Tokenizer | None = None,
                 tokenizer_dir: str | None = None):
        config.validate()
        self.config = config
        self.metrics = metrics
        self.tokenizer = tokenizer
        self.tokenizer_dir = tokenizer_dir
        self.desired = DesiredWorkers(config.scaling)
        self.session: aiohttp.ClientSession | None = None
        self.workers: Workers | None = None
        self.placer: Placer | None = None
        self.text_predictor: TextLengthPredictor | None = None  # --length-predictor text
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aladdin-tokenize")
        # one thread: a fast tokenizer called from two threads at once raises "Already borrowed"
        self._tick_task: asyncio.Task | None = None
        self.started = time.time()
        metrics.registry.collectors.append(self._collect)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Probe the workers, build the core from what they report, load the tokenizer, start the loops."""
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            limit=0, ttl_dns_cache=300, keepalive_timeout=KEEPALIVE_S))
        self.workers = Workers(self.config, self.session)
        await self.workers.probe_all()
        loop = asyncio.get_running_loop()
        models = self._perf_models()
        spec = parse_policy(self.config.policy, self.config.headroom)
        limit = self.context_limit(None)
        if self.config.length_predictor == "text":
            from aladdin.plugin.predict.text import TextLengthPredictor

            self.text_predictor = await loop.run_in_executor(
                None, lambda: TextLengthPredictor.load(quantile=self.config.length_quantile))
        self.placer = await loop.run_in_executor(None, lambda: Placer(
            models, spec, self.metrics, max_queue=self.config.max_queue, lost_ttft=self.config.lost_ttft,
            queue_order=self.config.queue_order, max_output_tokens=limit, length_quantile=self.config.length_quantile,
            text_predictor=self.text_predictor))
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
        log.info("aladdin: policy %s, %d/%d workers up, models %s", spec.name, up,
                 len(self.workers.endpoints), ", ".join(self.known_models()) or "(none yet)")

    async def stop(self) -> None:
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
        """A worker left or (re)joined; one that joins reports its KV cache anew (it may have
        been down at start-up, or restarted with another size)."""
        assert self.placer is not None
        info = endpoint.info
        if endpoint.up and info is not None and info.capacity_tokens and info.block_size:
            self.placer.resize_kv(endpoint.id, KVModel(info.block_size, info.capacity_tokens))
        self.placer.set_up(endpoint.id, endpoint.up)

    def _worker_state(self, endpoint: Endpoint, state: dict[str, Any] | None) -> None:
        """A worker reported. With the engine plugin: its rows replace the core's picture, its
        finished requests end theirs (their exact lengths learned), and a released request it no
        longer reports (or never did, within a grace) has ended too."""
        placer = self.placer
        assert placer is not None
        mine = placer.on_worker(endpoint.id)
        if state is not None:
            prompts = {t.id: t.core.prompt_tokens for t in mine}
            reports = reports_from_state(state, prompts.get)
            placer.reconcile(endpoint.id, reports, endpoint.kv_tokens_held)
            scale = state.get("decode_scale")  # the engine's measured / profiled decode step time
            if isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0:
                placer.scale_decode(endpoint.id, float(scale))
            self._end_reported(mine, state, {report.id for report in reports})
            mine = placer.on_worker(endpoint.id)
        elif endpoint.kv_tokens_held is not None:
            placer.report_kv(endpoint.id, endpoint.kv_tokens_held)
        seen = (endpoint.running or 0) + (endpoint.waiting or 0) + (endpoint.held or 0)
        endpoint.untracked = max(seen - len(mine), 0)

    def _end_reported(self, mine: list, state: dict[str, Any], running: set[str]) -> None:
        placer = self.placer
        assert placer is not None
        by_id = {ticket.id: ticket for ticket in mine}
        for row in state.get("finished") or []:
            match = ROUTER_ID.search(str(row.get("id", "")))
            ticket = by_id.pop(match.group(0), None) if match else None
            if ticket is None:
                continue
            tokens = row.get("output_tokens")
            if row.get("aborted") or not isinstance(tokens, int):
                placer.close(ticket)
            else:
                placer.finish(ticket, tokens)
        now = placer.clock()
        for ticket in by_id.values():
            if ticket.id in running:
                ticket.reported = True
            elif ticket.released and (ticket.reported or now - (ticket.placed_at or now) > UNSEEN_GRACE_S):
                placer.close(ticket)  # it ended unseen (the plugin's finished list had moved on)

    # ------------------------------------------------------------------ requests

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

    async def measure(self, path: str, body: bytes, headers: Any) -> Measured:
        """Check a completion request, count its prompt and (with the text model) predict its
        length from its words, off the event loop. Bad input raises ClientError (and is counted)."""
        assert self.tokenizer is not None
        try:
            parsed = inputs.parse(path, body, headers)
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
        text_prediction = None
        model = self.text_predictor
        if model is not None and parsed.predicted_output_tokens is None:
            text = inputs.prompt_text(parsed)
            raw = await loop.run_in_executor(self.executor, lambda: model.predict_raw([text], [prompt_tokens]))
            text_prediction = float(raw[0])
        return Measured(parsed, prompt_tokens, max(cap, 1), text_prediction)

    def admit(self, measured: Measured, only: list[str] | None = None) -> Ticket:
        """Place or queue a measured request with its SLOs (see Placer.admit); Refused past the queue's bound."""
        assert self.placer is not None
        ttft, atgt = self.slos(measured.parsed)
        return self.placer.admit(measured.prompt_tokens, measured.max_output_tokens, ttft, atgt,
                                 measured.parsed.predicted_output_tokens, only=only,
                                 text_prediction=measured.text_prediction)

    def slos(self, parsed: ParsedRequest) -> tuple[float, float]:
        """The request's (TTFT, ATGT) SLOs: its headers', else the defaults."""
        ttft = parsed.ttft_slo if parsed.ttft_slo is not None else self.config.ttft_slo
        atgt = parsed.atgt_slo if parsed.atgt_slo is not None else self.config.atgt_slo
        return ttft, atgt

    # ------------------------------------------------------------------ reading

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

    def state(self) -> dict[str, Any]:
        """The JSON of ``GET /state``: the pool, the queue, the totals."""
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
        return {
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

    def state_json(self) -> str:
        return json.dumps(self.state(), default=str)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
