"""The worker pool as the router sees it: who is up, what each serves, and its live state.

Why a module: health and state come from the workers over HTTP on their own schedules, apart
from any request. Each worker has a health loop (``GET /health``: a worker that fails
``unhealthy_after`` checks in a row, or refuses a proxied connection, leaves the pool and rejoins
when it answers again) and a state loop that reconciles the core with the worker's own view:

- with the engine plugin, ``GET /aladdin/state`` gives the exact per-request state (generated
  tokens, running or waiting or held) and the KV in use, which replace the router's stream-built
  picture (``Scheduler.reconcile``);
- a stock vLLM's ``/metrics`` gives the KV usage (``vllm:kv_cache_usage_perc`` times the cache
  size from ``vllm:cache_config_info``) and the running and waiting counts; the router's own
  stream tracking (tokens seen per request) stays the picture, and requests the worker runs that
  the router did not send are counted as ``untracked``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from aladdin.plugin.core.worker import RequestReport
from aladdin.plugin.router.config import RouterConfig, worker_id

log = logging.getLogger("aladdin.router")

STATE_PATH = "/aladdin/state"
ROUTER_ID = re.compile(r"rtr[0-9a-f]{24}")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class WorkerInfo:
    """What a probe learned of one worker. ``capacity_tokens``: allocatable KV tokens."""

    models: list[dict[str, Any]] = field(default_factory=list)
    max_model_len: int | None = None
    plugin: bool = False
    capacity_tokens: int | None = None
    block_size: int | None = None

    @property
    def model_ids(self) -> list[str]:
        return [str(card.get("id")) for card in self.models]


@dataclass
class Endpoint:
    """One worker: its URL, whether it is in the pool, and the latest of its own reports."""

    id: str
    url: str
    info: WorkerInfo | None = None
    up: bool = False
    failures: int = 0
    last_error: str | None = None
    state_at: float | None = None  # time.monotonic of the last good state read
    running: int | None = None  # as the worker last reported
    waiting: int | None = None
    held: int | None = None
    kv_tokens_held: int | None = None
    untracked: int = 0
    finished_seq: int = 0  # the plugin's count of ended requests at the last read (restarts reset it)


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text: name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for match in _SAMPLE.finditer(text):
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        out.setdefault(name, []).append((dict(_LABEL.findall(labels or "")), number))
    return out


def metric_sum(samples: dict[str, list[tuple[dict[str, str], float]]], *names: str) -> float | None:
    for name in names:
        if name in samples:
            return sum(value for _, value in samples[name])
    return None


class Workers:
    """The pool: probes, health loops and state loops; tells ``on_change`` when a worker leaves
    or rejoins and ``on_state`` when it reports."""

    def __init__(self, config: RouterConfig, session: aiohttp.ClientSession):
        self.config = config
        self.session = session
        self.endpoints = {worker_id(url): Endpoint(worker_id(url), url.rstrip("/")) for url in config.workers}
        self.on_change: Callable[[Endpoint], None] = lambda endpoint: None
        self.on_state: Callable[[Endpoint, dict[str, Any] | None], None] = lambda endpoint, state: None
        self._tasks: list[asyncio.Task] = []
        self._headers = {"Authorization": f"Bearer {config.worker_api_key}"} if config.worker_api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=config.timeouts.health, sock_connect=config.timeouts.connect)

    # ------------------------------------------------------------------ probing

    async def _get(self, endpoint: Endpoint, path: str) -> aiohttp.ClientResponse:
        return await self.session.get(endpoint.url + path, headers=self._headers, timeout=self._timeout)

    async def probe(self, endpoint: Endpoint) -> WorkerInfo:
        """Models, context length, and the KV cache size (from the plugin's state or vLLM's metrics)."""
        info = WorkerInfo()
        async with await self._get(endpoint, "/v1/models") as resp:
            resp.raise_for_status()
            cards = (await resp.json(content_type=None)).get("data") or []
        info.models = [card for card in cards if isinstance(card, dict) and card.get("id")]
        lengths = [int(card["max_model_len"]) for card in info.models if isinstance(card.get("max_model_len"), int)]
        info.max_model_len = max(lengths) if lengths else None
        try:
            async with await self._get(endpoint, STATE_PATH) as resp:
                if resp.status == 200:
                    state = await resp.json(content_type=None)
                    info.plugin = True
                    info.capacity_tokens = int(state["capacity_tokens"])
                    info.block_size = int(state["block_size"])
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError):
            pass
        if info.capacity_tokens is None:
            try:
                async with await self._get(endpoint, "/metrics") as resp:
                    if resp.status == 200:
                        samples = parse_metrics(await resp.text())
                        for labels, _ in samples.get("vllm:cache_config_info", []):
                            blocks, size = labels.get("num_gpu_blocks"), labels.get("block_size")
                            if blocks and size and blocks.isdigit() and size.isdigit():
                                info.block_size = int(size)
                                info.capacity_tokens = max(int(blocks) - 1, 1) * int(size)  # vLLM keeps one null block
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                pass
        return info

    async def probe_all(self) -> None:
        """Probe every worker until each answers or the start-up timeout passes."""
        deadline = time.monotonic() + self.config.startup_timeout_s
        pending = list(self.endpoints.values())
        while pending:
            for endpoint in list(pending):
                try:
                    endpoint.info = await self.probe(endpoint)
                    endpoint.up = True
                    pending.remove(endpoint)
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                    endpoint.last_error = _describe(exc)
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(min(0.5, self.config.health_interval_s))
        for endpoint in pending:
            log.warning("worker %s did not answer at start-up (%s); it joins once healthy", endpoint.url,
                        endpoint.last_error)

    # ------------------------------------------------------------------ loops

    def start(self) -> None:
        for endpoint in self.endpoints.values():
            self._tasks.append(asyncio.create_task(self._health_loop(endpoint)))
            self._tasks.append(asyncio.create_task(self._state_loop(endpoint)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def failed(self, endpoint_id: str, reason: str) -> None:
        """A proxied request could not reach the worker: it leaves the pool now."""
        endpoint = self.endpoints[endpoint_id]
        endpoint.failures = max(endpoint.failures, self.config.unhealthy_after)
        endpoint.last_error = reason
        self._set_up(endpoint, False)

    def suspect(self, endpoint_id: str) -> None:
        """A proxied request was dropped: check the worker's health now, not at the next interval."""
        endpoint = self.endpoints[endpoint_id]
        if endpoint.up:
            self._tasks.append(asyncio.create_task(self.check(endpoint)))
            self._tasks = [t for t in self._tasks if not t.done()]

    def _set_up(self, endpoint: Endpoint, up: bool) -> None:
        if endpoint.up != up:
            endpoint.up = up
            log.warning("worker %s %s%s", endpoint.url, "rejoined the pool" if up else "left the pool",
                        "" if up else f": {endpoint.last_error}")
            self.on_change(endpoint)

    async def check(self, endpoint: Endpoint) -> None:
        """One health check (a worker rejoining is probed again: it may have restarted)."""
        try:
            async with await self._get(endpoint, "/health") as resp:
                healthy = resp.status == 200
                if not healthy:
                    endpoint.last_error = f"/health answered {resp.status}"
            if healthy and (not endpoint.up or endpoint.info is None):
                endpoint.info = await self.probe(endpoint)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            healthy = False
            endpoint.last_error = _describe(exc)
        if healthy:
            endpoint.failures = 0
            self._set_up(endpoint, True)
        else:
            endpoint.failures += 1
            if endpoint.failures >= self.config.unhealthy_after:
                self._set_up(endpoint, False)

    async def _health_loop(self, endpoint: Endpoint) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            try:
                await self.check(endpoint)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a loop that must outlive any one failure
                log.exception("health check of %s failed", endpoint.url)

    async def _state_loop(self, endpoint: Endpoint) -> None:
        while True:
            await asyncio.sleep(self.config.state_interval_s)
            if not endpoint.up or endpoint.info is None:
                continue
            try:
                state = await self._read_state(endpoint)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError) as exc:
                endpoint.last_error = f"state: {_describe(exc)}"
                continue
            except asyncio.CancelledError:
                raise
            try:
                self.on_state(endpoint, state)
            except Exception:  # noqa: BLE001
                log.exception("applying the state of %s failed", endpoint.url)

    async def _read_state(self, endpoint: Endpoint) -> dict[str, Any] | None:
        """The plugin's state (returned), or the stock metrics (stored on the endpoint; None)."""
        assert endpoint.info is not None
        if endpoint.info.plugin:
            async with await self._get(endpoint, f"{STATE_PATH}?finished_since={endpoint.finished_seq}") as resp:
                resp.raise_for_status()
                state = await resp.json(content_type=None)
            seq = state.get("finished_seq")
            endpoint.finished_seq = seq if isinstance(seq, int) and seq >= 0 else 0
            endpoint.running, endpoint.waiting, endpoint.held = (len(state["running"]), len(state["waiting"]),
                                                                 len(state["held"]))
            endpoint.kv_tokens_held = int(state["kv_held_tokens"])
            endpoint.state_at = time.monotonic()
            return state
        async with await self._get(endpoint, "/metrics") as resp:
            resp.raise_for_status()
            samples = parse_metrics(await resp.text())
        running = metric_sum(samples, "vllm:num_requests_running")
        waiting = metric_sum(samples, "vllm:num_requests_waiting")
        usage = metric_sum(samples, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
        endpoint.running = None if running is None else int(running)
        endpoint.waiting = None if waiting is None else int(waiting)
        capacity = endpoint.info.capacity_tokens
        if usage is not None and capacity and math.isfinite(usage):
            endpoint.kv_tokens_held = int(round(usage * capacity))
        endpoint.state_at = time.monotonic()
        return None


def reports_from_state(state: dict[str, Any], prompt_of: Callable[[str], int | None]) -> list[RequestReport]:
    """The plugin's rows as the core's reports, for the router's own requests (their ids are
    inside the engine's request ids). The state gives no prefill progress: a request still
    prefilling is reported with none computed."""
    reports = []
    for where in ("running", "waiting", "held"):
        for row in state.get(where) or []:
            match = ROUTER_ID.search(str(row.get("id", "")))
            if match is None:
                continue
            prompt = prompt_of(match.group(0))
            if prompt is None:
                continue
            generated = int(row.get("generated_tokens") or 0)
            decoding = where == "running" and generated >= 1
            reports.append(RequestReport(match.group(0), generated, prompt + generated if decoding else 0, decoding))
    return reports


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
