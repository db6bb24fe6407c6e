"""Glue between live requests and the scheduler core: predict, place or queue, re-place, learn.

Why a layer: the core is pure and synchronous; the router is asynchronous and has workers that
come and go. A :class:`Ticket` is one client request's handle; the core's decisions (a placement,
possibly from the central queue much later: late binding; or a shed) resolve its future. The
core is never re-implemented here: its own pipeline places, with one extra filter in front
(:class:`Available`) that keeps out workers that left the pool and, per request, workers that
already handed it back or failed it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from aladdin.errors import AladdinError
from aladdin.plugin.core.lifecycle import Decision, Placement, Scheduler, SchedulerConfig, Shed
from aladdin.plugin.core.perfmodel import KVModel, PerfModel
from aladdin.plugin.core.pipeline import Available, Pipeline
from aladdin.plugin.core.policies import PolicySpec
from aladdin.plugin.core.predictor import LengthPredictor, PredictorConfig
from aladdin.plugin.core.request import Request, RequestStatus
from aladdin.plugin.core.worker import RequestReport
from aladdin.plugin.predict.text import TextLengthPredictor
from aladdin.plugin.router.metrics import RouterMetrics

ID_PREFIX = "rtr"  # router request ids: rtr + 24 hex digits (found again inside engine request ids)
PROBE_ID = "aladdin-router-probe"


class Refused(Exception):
    """The router will not place this request now: answered 429 with Retry-After."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason  # queue_full | ttft_lost | queue_timeout | no_worker
        self.message = message


@dataclass(eq=False)
class Ticket:
    """One client request from arrival to its answer, as the router tracks it."""

    id: str
    core: Request
    max_output_tokens: int
    future: asyncio.Future
    arrival: float
    worker: str | None = None
    placed_at: float | None = None
    attempts: int = 0
    tried: list[str] = field(default_factory=list)
    done: bool = False
    released: bool = False  # the front end no longer follows its stream: the worker's reports end it
    reported: bool = False  # the worker's state has listed it
    text_prediction: float | None = None  # the text model's uncorrected length, for its online correction


class Placer:
    """Drives one core Scheduler for the router; see the module docstring. ``clock``: the core's
    one clock (seconds)."""

    def __init__(self, workers: Sequence[tuple[str, PerfModel]], spec: PolicySpec, metrics: RouterMetrics, *,
                 max_queue: int, lost_ttft: str = "shed", queue_order: str = "fcfs",
                 clock: Callable[[], float] = time.monotonic, max_output_tokens: int | None = None,
                 length_quantile: float | None = None, text_predictor: TextLengthPredictor | None = None):
        built = spec.build()
        self.available = Available(len(workers))
        pipeline = Pipeline(built.name, [self.available, *built.filters], built.scorers, built.picker,
                            built.uses_predictions)
        self.scheduler = Scheduler(
            workers, pipeline, LengthPredictor(PredictorConfig(quantile=length_quantile, max_output_tokens=max_output_tokens)),
            SchedulerConfig(queue=queue_order, lost_ttft=lost_ttft, frontend_paid=False),
        )
        self.text_predictor = text_predictor
        self.spec = spec
        self.metrics = metrics
        self.max_queue = max_queue
        self.clock = clock
        self.rows = {worker_id: i for i, (worker_id, _) in enumerate(workers)}
        self.tickets: dict[str, Ticket] = {}
        # compile (or load) the core's kernels now, not on the first request
        self.scheduler.evaluate(Request(PROBE_ID, 1, clock(), predicted_output_tokens=1), clock())

    # ------------------------------------------------------------------ arrival and waiting

    def admit(self, prompt_tokens: int, max_output_tokens: int, ttft_slo: float, atgt_slo: float,
              predicted_output_tokens: int | None = None, only: Sequence[str] | None = None,
              text_prediction: float | None = None) -> Ticket:
        """A new request: predict its length (the caller's prediction if it gave one, else the
        text model's ``text_prediction`` corrected, else the core's; capped by
        ``max_output_tokens``), place or queue it, on one of the workers ``only`` names if given
        (a gateway's subset). Refused when the queue is past its bound."""
        now = self.clock()
        if predicted_output_tokens is None and text_prediction is not None and self.text_predictor is not None:
            predicted_output_tokens = self.text_predictor.corrected(text_prediction)
        else:
            text_prediction = None  # not what placed it: nothing for the text model to learn
        request_id = f"{ID_PREFIX}{uuid.uuid4().hex[:24]}"
        if only is not None:
            allowed = {self.rows[w] for w in only if w in self.rows}
            self.available.excluded[request_id] = [row for row in self.rows.values() if row not in allowed]
        core = Request(request_id, prompt_tokens, now, ttft_slo=ttft_slo, atgt_slo=atgt_slo,
                       predicted_output_tokens=predicted_output_tokens or 0, max_output_tokens=max_output_tokens)
        self.scheduler.predict(core)  # capped by max_output_tokens, as every re-prediction
        ticket = Ticket(request_id, core, max_output_tokens, asyncio.get_running_loop().create_future(), now,
                        text_prediction=text_prediction)
        self.tickets[request_id] = ticket
        self._offer(ticket, now)
        return ticket

    def _offer(self, ticket: Ticket, now: float) -> None:
        started = time.perf_counter()
        decisions = self.scheduler.offer(ticket.core, now)
        self.metrics.decision.observe(time.perf_counter() - started)
        self._apply(decisions, now)
        if ticket.core.status is RequestStatus.QUEUED and len(self.scheduler.queue) > self.max_queue:
            self._refuse(ticket, Refused("queue_full", f"the router's queue is full ({self.max_queue} requests wait "
                                                       "for a worker); retry later"))
            raise ticket.future.exception()  # type: ignore[misc]

    async def wait(self, ticket: Ticket, timeout: float) -> str:
        """The worker the core placed the ticket on, once it is placed (late binding)."""
        if not ticket.future.done():
            try:
                await asyncio.wait_for(asyncio.shield(ticket.future), timeout)
            except asyncio.TimeoutError:
                self._refuse(ticket, Refused("queue_timeout", f"no worker could take the request within {timeout:g} s; "
                                                              "retry later"))
        return ticket.future.result()

    def _refuse(self, ticket: Ticket, refusal: Refused) -> None:
        ticket.done = True
        if ticket.core.status is not RequestStatus.SHED:  # a shed request already left the core
            now = self.clock()
            self._apply(self.scheduler.abort(ticket.id, now), now)
        self.tickets.pop(ticket.id, None)
        self.available.excluded.pop(ticket.id, None)
        if not ticket.future.done():
            ticket.future.set_exception(refusal)
        ticket.future.exception()  # retrieved: no "never retrieved" warning if nobody awaits it

    def _apply(self, decisions: Iterable[Decision], now: float) -> None:
        """Carry out the core's decisions: resolve placed tickets, refuse shed ones."""
        for decision in decisions:
            ticket = self.tickets.get(decision.request.id)
            if ticket is None:
                continue
            if isinstance(decision, Placement):
                ticket.worker = decision.worker
                ticket.placed_at = now
                ticket.attempts += 1
                ticket.tried.append(decision.worker)
                self.metrics.placements.inc(decision.worker)
                self.metrics.queue_wait.observe(max(now - ticket.arrival, 0.0))
                if not ticket.future.done():
                    ticket.future.set_result(decision.worker)
            elif isinstance(decision, Shed):
                self._refuse(ticket, Refused("ttft_lost", "the request's TTFT SLO can no longer be met on any worker; "
                                                          "retry later or with a looser SLO"))

    # ------------------------------------------------------------------ re-placement

    def replace(self, ticket: Ticket) -> None:
        """Its worker handed it back (or failed) before the first byte: re-offer it to the core
        with that worker excluded for this request. The ticket's future is renewed."""
        if ticket.worker is None:
            raise AladdinError(f"request {ticket.id} is not on a worker")
        now = self.clock()
        self.available.excluded.setdefault(ticket.id, []).append(self.rows[ticket.worker])
        self._apply(self.scheduler.abort(ticket.id, now), now)
        old = ticket.core
        ticket.core = Request(old.id, old.prompt_tokens, old.arrival_time, ttft_slo=old.ttft_slo, atgt_slo=old.atgt_slo,
                              predicted_output_tokens=old.predicted_output_tokens, first_prediction=old.first_prediction,
                              predicted_here=old.predicted_here, max_output_tokens=old.max_output_tokens)
        ticket.worker = None
        ticket.future = asyncio.get_running_loop().create_future()
        if len(self.available.excluded[ticket.id]) >= len(self.rows):
            self._refuse(ticket, Refused("no_worker", "every worker handed the request back or failed it; retry later"))
            raise ticket.future.exception()  # type: ignore[misc]
        self._offer(ticket, now)

    # ------------------------------------------------------------------ progress and the end

    def tokens(self, ticket: Ticket, generated_tokens: int) -> None:
        """Its stream reached ``generated_tokens`` (the first call marks its first token)."""
        if ticket.done or ticket.core.worker is None or ticket.id not in self.scheduler.requests:
            return
        now = self.clock()
        self._apply(self.scheduler.tokens(ticket.id, generated_tokens, now), now)

    def finish(self, ticket: Ticket, output_tokens: int) -> None:
        """It ended well with ``output_tokens``: the core learns its length."""
        if ticket.done:
            return
        ticket.done = True
        self.tickets.pop(ticket.id, None)
        self.available.excluded.pop(ticket.id, None)
        if ticket.id not in self.scheduler.requests:
            return
        now = self.clock()
        if output_tokens >= 1:
            self.metrics.length_error.observe(output_tokens - ticket.core.first_prediction)
            self.metrics.predicted_tokens.inc(amount=ticket.core.first_prediction)
            self.metrics.actual_tokens.inc(amount=output_tokens)
            if ticket.text_prediction is not None and self.text_predictor is not None:
                self.text_predictor.observe(ticket.text_prediction, output_tokens)
            self._apply(self.scheduler.finish(ticket.id, output_tokens, now), now)
        else:
            self._apply(self.scheduler.abort(ticket.id, now), now)

    def close(self, ticket: Ticket) -> None:
        """The request ended any other way (error, client gone): the core forgets it, learns nothing."""
        if ticket.done:
            return
        ticket.done = True
        self.tickets.pop(ticket.id, None)
        self.available.excluded.pop(ticket.id, None)
        now = self.clock()
        self._apply(self.scheduler.abort(ticket.id, now), now)
        if not ticket.future.done():
            ticket.future.cancel()

    # ------------------------------------------------------------------ workers and time

    def set_up(self, worker_id: str, up: bool) -> None:
        """A worker left or rejoined the pool; rejoining retries the queue."""
        row = self.rows[worker_id]
        if bool(self.available.up[row]) == up:
            return
        self.available.up[row] = up
        if up:
            self.tick()

    def tick(self) -> None:
        """Retry the queue (time alone can make a queued request's TTFT lost: it is shed)."""
        if len(self.scheduler.queue):
            now = self.clock()
            started = time.perf_counter()
            decisions = self.scheduler.tick(now)
            self.metrics.decision.observe(time.perf_counter() - started)
            self._apply(decisions, now)

    def reconcile(self, worker_id: str, reports: Iterable[RequestReport], kv_tokens_held: int | None) -> None:
        now = self.clock()
        self._apply(self.scheduler.reconcile(worker_id, reports, kv_tokens_held, now), now)

    def report_kv(self, worker_id: str, kv_tokens_held: int) -> None:
        self.scheduler.report_kv(worker_id, kv_tokens_held)

    def resize_kv(self, worker_id: str, kv: KVModel) -> None:
        now = self.clock()
        self._apply(self.scheduler.resize_kv(worker_id, kv, now), now)

    def scale_decode(self, worker_id: str, factor: float) -> None:
        self.scheduler.scale_decode(worker_id, factor)

    # ------------------------------------------------------------------ reading

    def on_worker(self, worker_id: str) -> list[Ticket]:
        return [t for t in self.tickets.values() if t.worker == worker_id]

    def fills(self) -> dict[str, tuple[float, float]]:
        """Per worker: the core's predicted (KV fill, ATGT fill) (Scheduler.fills)."""
        return self.scheduler.fills(self.clock())
