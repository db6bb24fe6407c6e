"""The request lifecycle: predict -> place or queue -> re-predict -> learn -> retry, in one object.

:class:`Scheduler` is what the simulator, the router and the in-engine plugin drive: they
report events (arrival, prefill progress, first token, decode steps, finish, abort,
preemption, a worker's own report) and carry out the :class:`Placement` and :class:`Shed`
decisions the events return. It owns the length predictor, the worker states, the policy
pipeline and the central queue, and nothing else: no clock, no I/O.

- **Predict** at arrival (or take the caller's prediction, e.g. from the router's request).
- **Place** with the pipeline, or **queue** when no worker passes its filters.
- **Re-predict** a decoding request that reaches its prediction unfinished: generated + the
  predictor's conditional remaining length, so its worker's forecast sees the corrected load.
- **Learn** each finished request's length, and each worker's prediction error: a worker
  whose requests keep running longer than predicted has its residents' remaining lengths
  inflated by that ratio in its forecasts (``length_inflation``), so it is filled less.
- **Retry** the queue on every capacity change: a finish or abort, a prefill done, a
  re-prediction, a reconciliation.

A queued request whose TTFT can no longer be met (even alone on an idle worker) follows
``lost_ttft``: ``best-effort`` places it as soon as a worker has room for it (max sequences,
KV) without breaking the residents' ATGT, its own SLOs no longer judged; it keeps its place
at the queue's head, so it is never starved. ``shed`` refuses it instead (the front end
answers 429).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from aladdin.errors import AladdinError
from aladdin.plugin.core.perfmodel import KVModel, PerfModel
from aladdin.plugin.core.pipeline import Evaluation, Fit, Pipeline
from aladdin.plugin.core.predictor import LengthPredictor
from aladdin.plugin.core.queue import QUEUE_ORDERS, CentralQueue
from aladdin.plugin.core.request import DONE, Request, RequestStatus
from aladdin.plugin.core.worker import RequestReport, WorkerPool, WorkerState

LOST_TTFT_RULES = ("best-effort", "shed")
FILL_PROBE_ID = "aladdin-fill-probe"  # a one-token request that measures fills, never placed


@dataclass(frozen=True)
class SchedulerConfig:
    """How the lifecycle runs, apart from the policy.

    ``frontend_paid``: requests reach the scheduler after the engine's front end (the
    simulator); a router sees them before it. ``error_feedback``: per-worker prediction error
    inflates that worker's forecasts (after ``feedback_min_samples`` finishes, over a window
    of ``feedback_window``). ``oracle_lengths``: predictions are the true lengths the caller
    passes (nothing to learn or re-predict).
    """

    queue: str = "fcfs"
    lost_ttft: str = "best-effort"
    frontend_paid: bool = True
    oracle_lengths: bool = False
    error_feedback: bool = True
    feedback_window: int = 64
    feedback_min_samples: int = 16
    max_inflation: float = 2.0

    def __post_init__(self) -> None:
        if self.queue not in QUEUE_ORDERS:
            raise AladdinError(f"queue order must be one of {', '.join(QUEUE_ORDERS)}, got {self.queue!r}")
        if self.lost_ttft not in LOST_TTFT_RULES:
            raise AladdinError(f"lost-TTFT rule must be one of {', '.join(LOST_TTFT_RULES)}, got {self.lost_ttft!r}")
        if self.feedback_window < 1 or self.feedback_min_samples < 1 or not self.max_inflation >= 1.0:
            raise AladdinError("feedback window and samples must be >= 1 and max_inflation >= 1")


@dataclass(frozen=True)
class Placement:
    request: Request
    worker: str


@dataclass(frozen=True)
class Shed:
    request: Request


Decision = Placement | Shed


class WorkerError:
    """One worker's prediction error over its recent finishes (first prediction vs actual)."""

    __slots__ = ("finished", "error_sum", "abs_error_sum", "repredictions", "_window", "_actual", "_predicted")

    def __init__(self, window: int):
        self.finished = 0
        self.error_sum = 0.0  # actual - predicted: > 0 means the worker ran longer than planned
        self.abs_error_sum = 0.0
        self.repredictions = 0
        self._window: deque[tuple[int, int]] = deque(maxlen=window)  # (actual, first prediction)
        self._actual = 0  # sums over the window
        self._predicted = 0

    def add(self, actual: int, predicted: int) -> None:
        self.finished += 1
        self.error_sum += actual - predicted
        self.abs_error_sum += abs(actual - predicted)
        if len(self._window) == self._window.maxlen:
            old_actual, old_predicted = self._window[0]
            self._actual -= old_actual
            self._predicted -= old_predicted
        self._window.append((actual, predicted))
        self._actual += actual
        self._predicted += predicted

    def inflation(self, min_samples: int, cap: float) -> float:
        """Recent actual / predicted output, at least 1 (a worker running short is left alone)."""
        if len(self._window) < min_samples:
            return 1.0
        return min(max(self._actual / max(self._predicted, 1), 1.0), cap)

    def to_dict(self) -> dict[str, float | int | None]:
        n = self.finished
        return {
            "finished": n, "error_sum": self.error_sum, "abs_error_sum": self.abs_error_sum,
            "repredictions": self.repredictions, "mean_error": self.error_sum / n if n else None,
            "mean_abs_error": self.abs_error_sum / n if n else None,
        }


class Scheduler:
    """See the module docstring. ``workers``: (id, PerfModel) per worker, in a fixed order."""

    def __init__(self, workers: Sequence[tuple[str, PerfModel]], policy: Pipeline,
                 predictor: LengthPredictor | None = None, config: SchedulerConfig | None = None):
        self.config = config or SchedulerConfig()
        self.policy = policy
        self.predictor = predictor or LengthPredictor()
        self.pool = WorkerPool(workers)
        self.queue = CentralQueue(self.config.queue)
        self.requests: dict[str, Request] = {}
        self.errors: dict[str, WorkerError] = {w.id: WorkerError(self.config.feedback_window) for w in self.pool.workers}
        self.track_overruns = not self.config.oracle_lengths and policy.uses_predictions
        for worker in self.pool.workers:
            worker.track_overruns = self.track_overruns
        self.queued_requests = 0
        self.shed_requests = 0

    # ------------------------------------------------------------------ arrivals

    def predict(self, request: Request, output_tokens: int | None = None) -> None:
        """Set the request's predicted length: the true one in oracle mode, the caller's if it
        set one (a router forwards it), else the predictor's."""
        if self.config.oracle_lengths:
            if output_tokens is None:
                raise AladdinError(f"request {request.id}: oracle lengths need its true output length")
            predicted = output_tokens
        elif request.predicted_output_tokens >= 1:
            predicted = request.predicted_output_tokens
        else:
            predicted = self.predictor.predict(request.prompt_tokens)
            request.predicted_here = True
        request.predicted_output_tokens = request.first_prediction = request.capped(predicted)

    def arrive(self, request: Request, now: float, output_tokens: int | None = None) -> list[Decision]:
        """A new request: predict its length, then place or queue it."""
        self.predict(request, output_tokens)
        return self.offer(request, now)

    def offer(self, request: Request, now: float) -> list[Decision]:
        """Place or queue a request whose length is predicted (a split-phase hand-off comes here
        with its first token out and its KV computed)."""
        if request.id in self.requests and self.requests[request.id] is not request:
            raise AladdinError(f"request id {request.id!r} is already in flight")
        self.requests[request.id] = request
        decision = self._try_place(request, now)
        if decision is not None:
            return [decision]
        request.status = RequestStatus.QUEUED
        if not request.queued_once:
            request.queued_once = True
            self.queued_requests += 1
        self.queue.push(request)
        return []

    def _try_place(self, request: Request, now: float, retry: bool = False) -> Decision | None:
        ev = Evaluation(self.pool, request, now, self.config.frontend_paid, self.policy.uses_predictions)
        row = self.policy.choose(ev)
        if row is None and retry and not request.started and math.isfinite(request.ttft_slo):
            if bool(np.all(ev.ttft()[1] > request.ttft_slo)):  # its TTFT is lost
                if self.config.lost_ttft == "shed":
                    request.status = RequestStatus.SHED
                    self.shed_requests += 1
                    del self.requests[request.id]
                    return Shed(request)
                row = self.policy.choose(ev, best_effort=True)
        if row is None:
            return None
        worker = self.pool.workers[row]
        worker.place(request)
        return Placement(request, worker.id)

    def _retry(self, now: float) -> list[Decision]:
        """Place queued requests from the head while the policy accepts them."""
        decisions: list[Decision] = []
        while len(self.queue):
            request = self.queue.head()
            if request.predicted_here and not request.started:  # the predictor may have learned since
                request.predicted_output_tokens = request.capped(self.predictor.predict(request.prompt_tokens))
            decision = self._try_place(request, now, retry=True)
            if decision is None:
                break
            self.queue.pop()
            decisions.append(decision)
        return decisions

    # ------------------------------------------------------------------ engine events

    def _request(self, request_id: str) -> tuple[Request, WorkerState]:
        request = self.requests.get(request_id)
        if request is None or request.worker is None:
            raise AladdinError(f"request {request_id!r} is not on a worker")
        return request, self.pool.by_id[request.worker]

    def worker(self, worker_id: str) -> WorkerState:
        worker = self.pool.by_id.get(worker_id)
        if worker is None:
            raise AladdinError(f"unknown worker {worker_id!r}")
        return worker

    def prefill_progress(self, request_id: str, computed_tokens: int) -> None:
        request, worker = self._request(request_id)
        worker.prefill_progress(request, computed_tokens)

    def started(self, request_id: str, generated_tokens: int, now: float) -> list[Decision]:
        """Its prefill (or its recompute after a preemption) is done; it decodes with
        ``generated_tokens`` out. A capacity change: the queue is retried."""
        request, worker = self._request(request_id)
        worker.start_decoding(request, generated_tokens, now)
        return self._retry(now) if len(self.queue) else []

    def advance(self, worker_id: str, steps: int, now: float) -> list[Decision]:
        """The worker ran ``steps`` decode steps; requests that outgrew their prediction are
        re-predicted (then the queue is retried)."""
        worker = self.worker(worker_id)
        return self._repredict(worker, worker.advance(steps, now), now)

    def tokens(self, request_id: str, generated_tokens: int, now: float) -> list[Decision]:
        """One request's stream reached ``generated_tokens`` (a router's view); the clock it
        moves may take other requests past their prediction too."""
        request, worker = self._request(request_id)
        if request.status is RequestStatus.PLACED:
            return self.started(request_id, generated_tokens, now)
        return self._repredict(worker, worker.tokens(request, generated_tokens, now), now)

    def _repredict(self, worker: WorkerState, overrun: list[Request], now: float) -> list[Decision]:
        """Re-predict requests that reached their prediction unfinished (within their limit),
        then retry the queue."""
        if not overrun or not self.track_overruns:
            return []
        for request in overrun:
            generated = worker.generated(request)
            total = request.capped(generated + self.predictor.repredict(request.prompt_tokens, generated))
            worker.repredict(request, max(total, generated + 1))
            self.errors[worker.id].repredictions += 1
        return self._retry(now) if len(self.queue) else []

    def tick(self, now: float) -> list[Decision]:
        """Retry the queue without a capacity change (a driver's clock): time alone can make a
        queued request's TTFT lost, which sheds it or places it best-effort."""
        return self._retry(now) if len(self.queue) else []

    def report_kv(self, worker_id: str, kv_tokens_held: int) -> None:
        self.worker(worker_id).report_kv(kv_tokens_held)

    def resize_kv(self, worker_id: str, kv: KVModel, now: float) -> list[Decision]:
        """A worker's KV cache as it reports it; more room may place queued requests."""
        self.worker(worker_id).set_kv(kv)
        return self._retry(now) if len(self.queue) else []

    def scale_decode(self, worker_id: str, factor: float) -> None:
        """The worker's decode steps take ``factor`` x the profile's (measured by its engine)."""
        self.worker(worker_id).set_decode_scale(factor)

    def preempted(self, request_id: str, generated_tokens: int) -> None:
        request, worker = self._request(request_id)
        worker.preempt(request, generated_tokens)

    def finish(self, request_id: str, output_tokens: int, now: float, worker_id: str | None = None) -> list[Decision]:
        """It finished with ``output_tokens``: learn its length and its worker's error, retry.
        ``worker_id`` names the worker of a request that finished off the pool (a split-phase
        prefill worker: one-token outputs)."""
        request = self.requests.pop(request_id, None)
        if request is None:
            raise AladdinError(f"request {request_id!r} is not in flight")
        worker = self.pool.by_id.get(request.worker) if request.worker else None
        if worker is not None:
            worker.remove(request)
        self.learn(request, output_tokens, worker.id if worker is not None else worker_id)
        return self._retry(now) if worker is not None and len(self.queue) else []

    def learn(self, request: Request, output_tokens: int, worker_id: str | None) -> None:
        """Record a finished request: its length teaches the predictor, its error its worker."""
        request.status = RequestStatus.FINISHED
        request.generated_tokens = output_tokens
        if self.config.oracle_lengths or output_tokens < 1:
            return  # nothing to learn (an aborted or empty output says nothing about lengths)
        self.predictor.observe(request.prompt_tokens, output_tokens)
        if worker_id is None:
            return
        errors = self.errors.setdefault(worker_id, WorkerError(self.config.feedback_window))
        errors.add(output_tokens, request.first_prediction)
        worker = self.pool.by_id.get(worker_id)
        if worker is not None and self.config.error_feedback:
            worker.set_length_inflation(errors.inflation(self.config.feedback_min_samples, self.config.max_inflation))

    def abort(self, request_id: str, now: float) -> list[Decision]:
        """The client went away (or the engine refused it): nothing is learned from it."""
        request = self.requests.pop(request_id, None)
        if request is None or request.status in DONE:
            return []
        request.status = RequestStatus.ABORTED
        if request.worker is None:
            self.queue.remove(request)
            return []
        self.pool.by_id[request.worker].remove(request)
        return self._retry(now) if len(self.queue) else []

    def reconcile(self, worker_id: str, reports: Iterable[RequestReport], kv_tokens_held: int | None,
                  now: float) -> list[Decision]:
        """The worker's own report (the engine plugin's exact per-request state) replaces the
        event-built picture; a capacity change."""
        self.worker(worker_id).reconcile(reports, kv_tokens_held, now)
        return self._retry(now) if len(self.queue) else []

    # ------------------------------------------------------------------ diagnostics

    def evaluate(self, request: Request, now: float) -> list[Fit]:
        """How ``request`` would fit on each worker (what the policy ranks)."""
        ev = Evaluation(self.pool, request, now, self.config.frontend_paid)
        return self.policy.evaluate(ev)

    def fills(self, now: float) -> dict[str, tuple[float, float]]:
        """Per worker, how full the core predicts it: (peak KV / capacity, the largest predicted
        ATGT / SLO of its residents on pace with a one-token probe added)."""
        pool = self.pool
        ev = Evaluation(pool, Request(FILL_PROBE_ID, 1, now, predicted_output_tokens=1), now, self.config.frontend_paid)
        atgt = ev.resident_atgt(np.arange(len(pool)))
        out = {}
        for worker in pool.workers:
            capacity = worker.perf.kv.capacity_tokens
            kv = pool.predicted_peak_kv(worker.index) / capacity if capacity else 0.0
            value = float(atgt[worker.index])
            out[worker.id] = (kv, value if math.isfinite(value) else 0.0)
        return out

    def demand(self, now: float) -> float:
        """The load in workers at full fill, an autoscaler's input: every worker's fill in its
        binding dimension, plus the KV the queued requests need over the largest worker's cache."""
        demand = sum(max(kv, atgt) for kv, atgt in self.fills(now).values())
        capacity = max((w.perf.kv.capacity_tokens for w in self.pool.workers), default=0)
        if capacity:
            demand += sum(r.prompt_tokens + r.predicted_output_tokens for r in self.queue) / capacity
        return demand

    def error_summary(self) -> dict[str, dict[str, float | int | None]]:
        return {worker: errors.to_dict() for worker, errors in sorted(self.errors.items())
                if errors.finished or errors.repredictions}
