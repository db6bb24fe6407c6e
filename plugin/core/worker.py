"""Worker state updated by events, and its forecast: what one engine will do with its requests.

A :class:`WorkerState` follows one vLLM engine through the events its driver reports
(placed, prefill progress, first token, ``advance`` by k decode steps, finished, aborted,
preempted, re-predicted, reconciled). The forecast is the models' picture of the worker's
future (docs/placement.md): every request grows one token per decode step until its
predicted length, so the KV held, the step times and each request's predicted ATGT follow.

Why it is cheap live: the forecast is built in the worker's own step frame. A decode step
moves every decoding request one token along the same picture, so ``advance`` only moves the
worker's clock and the forecast is read ``delta`` steps further on (range maxima from sparse
tables, cumulative times by difference): tokens streaming on every worker cost O(1) each.
The forecast is rebuilt, lazily at the next decision, only when the set of requests or a
prediction changed (placed, first token, finished, preempted, re-predicted, reconciled).
Prompts not yet started are read as if they had advanced too until the next rebuild; their
first token, a rebuild trigger, corrects that.

:class:`WorkerPool` stacks the workers' forecasts into padded arrays, one row per worker,
so one decision evaluates every worker with a few vectorized operations (core.pipeline).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from aladdin.errors import AladdinError
from aladdin.plugin.core.perfmodel import PerfModel
from aladdin.plugin.core.request import Request, RequestStatus


@dataclass(frozen=True)
class RequestReport:
    """One request as its engine reports it (the in-engine plugin's exact state)."""

    id: str
    generated_tokens: int
    computed_tokens: int
    decoding: bool


class Forecast:
    """A worker's predicted future from step ``origin`` on, without a new request.

    Arrays over the requests (decoding first, then the rest in placement order): ``context``,
    ``remaining`` (>= 1). Over steps k = 0..K-1 (K = ``horizon``): U[k] tokens held
    (unrounded), V[k] = U[k] + (block_size - 1) * alive[k] (a bound on the block-rounded use),
    ``cum_time[j]`` = time of steps k < j. ``u_sparse[l][k]`` = max of U[i] + i over
    i in [k, k + 2^l) (likewise V), ``u_suffix[j]`` = max of U[k] over k >= j. Each request's
    predicted ATGT / SLO is ``atgt_base + atgt_clock * observed_at - cum_time[delta] * inv_tokens_slo``
    after ``delta`` steps (see ``WorkerState._rebuild``).
    """

    __slots__ = (
        "origin", "context", "remaining", "horizon", "cum_time", "u_sparse", "v_sparse", "u_suffix", "v_suffix",
        "atgt_base", "atgt_clock", "inv_tokens_slo",
    )


def sparse_max(values: np.ndarray) -> np.ndarray:
    """Sparse table of ``values`` (1-D): row l holds max(values[k:k + 2^l]) (-inf past the end)."""
    n = values.size
    levels = max(1, n.bit_length())
    table = np.full((levels, n + 1), -math.inf)
    table[0, :n] = values
    for level in range(1, levels):
        half = 1 << (level - 1)
        np.maximum(table[level - 1, : n + 1 - half], table[level - 1, half:], out=table[level, : n + 1 - half])
    return table


class WorkerState:
    """One worker as the scheduler core knows it; see the module docstring."""

    def __init__(self, worker_id: str, perf: PerfModel, index: int = 0, pool: WorkerPool | None = None):
        self.id = worker_id
        self._pool = pool  # told of every change, so a decision refreshes only changed rows
        self.perf = perf
        self.index = index  # row in its pool
        self.requests: dict[str, Request] = {}  # placement order
        self.step = 0  # decode steps so far (the worker's clock)
        self.observed_at = 0.0  # when the clock was last moved or the state last reported
        self._base: dict[str, int] = {}  # decoding requests: generated = step - base
        self.decoding_context_base = 0  # sum over decoding requests of prompt - base
        self.unprefilled_tokens = 0  # prompt tokens still to compute (queued prompts, unfinished chunks)
        self.prefill_work_ahead = 0.0  # their prefill work (PrefillModel.chunk_work)
        self.kv_tokens_reported: int | None = None  # KV in use as last reported (block-rounded)
        self.length_inflation = 1.0  # from this worker's prediction error (lifecycle's feedback)
        self._overruns: list[tuple[int, str]] = []  # heap: (step a decoding request reaches its prediction, id)
        self.track_overruns = True
        self.forecast: Forecast | None = None
        self.dirty = True
        self._touch()

    # ------------------------------------------------------------------ reading

    @property
    def num_outstanding(self) -> int:
        return len(self.requests)

    @property
    def num_decoding(self) -> int:
        return len(self._base)

    @property
    def decoding_context(self) -> int:
        """Context tokens of the decoding requests now (their decode batch)."""
        return self.decoding_context_base + len(self._base) * self.step

    def generated(self, request: Request) -> int:
        base = self._base.get(request.id)
        return request.generated_tokens if base is None else self.step - base

    def kv_tokens_held(self) -> int:
        """KV in use now: as reported, else the block-rounded contexts of admitted requests."""
        if self.kv_tokens_reported is not None:
            return self.kv_tokens_reported
        return self.decoding_context  # unreported: the decoding contexts (not block-rounded)

    def next_overrun(self) -> int | None:
        """The step at which the next decoding request reaches its prediction, if any."""
        heap = self._overruns
        while heap and not self._is_overrun_entry(*heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _is_overrun_entry(self, key: int, request_id: str) -> bool:
        base = self._base.get(request_id)
        return base is not None and base + self.requests[request_id].predicted_output_tokens == key

    # ------------------------------------------------------------------ events

    def _touch(self) -> None:
        """Counters changed (the pool refreshes this worker's scalars at the next decision)."""
        if self._pool is not None:
            self._pool.touched.add(self.index)

    def _changed(self) -> None:
        """Requests or predictions changed: the forecast is rebuilt at the next decision."""
        self.dirty = True
        self._touch()

    def place(self, request: Request) -> None:
        request.worker = self.id
        request.status = RequestStatus.PLACED
        self.requests[request.id] = request
        self._add_prefill(request)
        self._changed()

    def prefill_progress(self, request: Request, computed_tokens: int) -> None:
        """``computed_tokens`` of its context now have KV (chunked prefill moved on)."""
        self._remove_prefill(request)
        request.computed_tokens = computed_tokens
        self._add_prefill(request)
        self._touch()

    def start_decoding(self, request: Request, generated_tokens: int, now: float) -> None:
        """Its prefill (or a recompute after preemption) finished; it has ``generated_tokens``."""
        self._remove_prefill(request)
        if not request.started:
            request.first_token_time = now
        request.generated_tokens = generated_tokens
        request.computed_tokens = request.prompt_tokens + generated_tokens
        request.status = RequestStatus.DECODING
        base = self.step - generated_tokens
        self._base[request.id] = base
        self.decoding_context_base += request.prompt_tokens - base
        self._push_overrun(request)
        self._changed()

    def advance(self, steps: int, now: float) -> list[Request]:
        """Every decoding request generated ``steps`` more tokens; returns those that reached
        their prediction (the lifecycle re-predicts them)."""
        self.step += steps
        self.observed_at = now
        if self._pool is not None:
            self._pool.step[self.index] = self.step
            self._pool.observed[self.index] = now
        overrun = []
        heap = self._overruns
        while heap and heap[0][0] <= self.step:
            key, request_id = heapq.heappop(heap)
            if self._is_overrun_entry(key, request_id):
                overrun.append(self.requests[request_id])
        return overrun

    def tokens(self, request: Request, generated_tokens: int, now: float) -> None:
        """A report of one request's total generated tokens (a router sees streams one by one).

        A request ahead of the worker's clock moves the clock (the engine stepped; the rest
        of the batch follows); one more than a step behind (preempted, stalled) is re-anchored.
        """
        base = self._base.get(request.id)
        if base is None:
            request.generated_tokens = generated_tokens
            return
        expected = self.step - base
        if generated_tokens > expected:
            self.advance(generated_tokens - expected, now)
        elif expected - generated_tokens > 1:
            self._stop_decoding(request)
            request.generated_tokens = generated_tokens
            base = self.step - generated_tokens
            self._base[request.id] = base
            self.decoding_context_base += request.prompt_tokens - base
            self._push_overrun(request)
            self._changed()

    def remove(self, request: Request) -> None:
        """It finished or was aborted: its KV and its share of every forecast are gone."""
        if request.id in self._base:
            request.generated_tokens = self.generated(request)
            self._stop_decoding(request)
        else:
            self._remove_prefill(request)
        del self.requests[request.id]
        self._changed()

    def preempt(self, request: Request, generated_tokens: int) -> None:
        """Recompute preemption: its KV is freed; it waits to prefill prompt + generated again."""
        if request.id in self._base:
            self._stop_decoding(request)
        else:
            self._remove_prefill(request)
        request.generated_tokens = generated_tokens
        request.computed_tokens = 0
        request.status = RequestStatus.PLACED
        self._add_prefill(request)
        self._changed()

    def set_length_inflation(self, factor: float) -> None:
        """Stretch the residents' predicted remaining lengths by ``factor`` in the forecast."""
        if factor != self.length_inflation:
            self.length_inflation = factor
            self._changed()

    def report_kv(self, kv_tokens_held: int) -> None:
        """KV in use now, block-rounded, as the engine (or the simulator's block ledger) counts it."""
        self.kv_tokens_reported = kv_tokens_held
        self._touch()

    def repredict(self, request: Request, predicted_output_tokens: int) -> None:
        request.predicted_output_tokens = predicted_output_tokens
        request.repredictions += 1
        if request.id in self._base:
            self._push_overrun(request)
        self._changed()

    def reconcile(self, reports: Iterable[RequestReport], kv_tokens_held: int | None, now: float) -> None:
        """Replace the event-built picture with what the engine reports (exact counts)."""
        for report in reports:
            request = self.requests.get(report.id)
            if request is None:
                continue
            if request.id in self._base:
                self._stop_decoding(request)
            else:
                self._remove_prefill(request)
            request.generated_tokens = report.generated_tokens
            request.computed_tokens = report.computed_tokens
            if report.decoding:
                base = self.step - report.generated_tokens
                self._base[request.id] = base
                self.decoding_context_base += request.prompt_tokens - base
                request.status = RequestStatus.DECODING
                self._push_overrun(request)
            else:
                request.status = RequestStatus.PLACED
                self._add_prefill(request)
        self.kv_tokens_reported = kv_tokens_held
        self.observed_at = now
        if self._pool is not None:
            self._pool.observed[self.index] = now
        self._changed()

    # ------------------------------------------------------------------ bookkeeping

    def _prefill_left(self, request: Request) -> tuple[int, int]:
        context = request.prompt_tokens + request.generated_tokens
        done = min(request.computed_tokens, context)
        return context - done, done

    def _add_prefill(self, request: Request) -> None:
        left, done = self._prefill_left(request)
        self.unprefilled_tokens += left
        self.prefill_work_ahead += float(self.perf.prefill.chunk_work(left, done))

    def _remove_prefill(self, request: Request) -> None:
        left, done = self._prefill_left(request)
        self.unprefilled_tokens -= left
        self.prefill_work_ahead -= float(self.perf.prefill.chunk_work(left, done))
        if not self.unprefilled_tokens:
            self.prefill_work_ahead = 0.0  # no float drift when nothing is left

    def _stop_decoding(self, request: Request) -> None:
        base = self._base.pop(request.id)
        self.decoding_context_base -= request.prompt_tokens - base

    def _push_overrun(self, request: Request) -> None:
        if self.track_overruns:
            heapq.heappush(self._overruns, (self._base[request.id] + request.predicted_output_tokens, request.id))

    # ------------------------------------------------------------------ forecast

    def current_forecast(self) -> Forecast:
        if self.dirty or self.forecast is None:
            self.forecast = self._rebuild()
            self.dirty = False
        return self.forecast

    def _rebuild(self) -> Forecast:
        """The forecast from the current step (docs/placement.md, "Forecast").

        Each request's predicted ATGT covers its whole life, as the metric does: the time
        since its first token (to ``observed_at``), its predicted decode time from here and
        the stalls of the prefills not yet done ahead of it, over its tokens after the first.
        Prefills in flight on the worker stall every other started request; a queued prompt
        also stalls the queued prompts behind it.
        """
        perf = self.perf
        dec = perf.decode
        decoding = [r for r in self.requests.values() if r.id in self._base]
        others = [r for r in self.requests.values() if r.id not in self._base]
        ordered = decoding + others
        n = len(ordered)
        prompt = np.fromiter((r.prompt_tokens for r in ordered), dtype=np.int64, count=n)
        generated = np.fromiter((self.generated(r) for r in ordered), dtype=np.int64, count=n)
        predicted = np.fromiter((r.predicted_output_tokens for r in ordered), dtype=np.int64, count=n)
        slo = np.fromiter((r.atgt_slo for r in ordered), dtype=float, count=n)
        first = np.fromiter((r.first_token_time for r in ordered), dtype=float, count=n)
        context = prompt + generated
        remaining = np.maximum(predicted - generated, 1)
        if self.length_inflation > 1.0:
            remaining = np.ceil(remaining * self.length_inflation).astype(np.int64)
        horizon = int(remaining.max()) if n else 0
        k = np.arange(horizon)
        alive = n - np.cumsum(np.bincount(remaining, minlength=horizon + 1)[:horizon])  # remaining > k
        held = context.sum() - np.cumsum(np.bincount(remaining, weights=context, minlength=horizon + 1)[:horizon])
        held += k * alive
        upper = held + (perf.kv.block_size - 1) * alive
        cum_time = np.zeros(horizon + 1)
        np.cumsum(dec.a * alive + dec.b * held + dec.c, out=cum_time[1:])
        u_suffix = np.full(horizon + 1, -math.inf)
        v_suffix = np.full(horizon + 1, -math.inf)
        if horizon:
            np.maximum.accumulate(held[::-1], out=u_suffix[horizon - 1 :: -1])
            np.maximum.accumulate(upper[::-1], out=v_suffix[horizon - 1 :: -1])

        started = (generated >= 1) & np.isfinite(first)
        stall = np.asarray(perf.prefill.chunk_work(np.where(started, 0, context).astype(float), 0), dtype=float)
        behind = np.zeros(n)
        if others:
            queued = len(decoding)
            behind[:queued] = stall.sum()
            behind[queued:] = stall[queued:].sum() - np.cumsum(stall[queued:])
        tokens_slo = (remaining + np.where(started, generated - 1, 0)) * slo
        with np.errstate(divide="ignore"):
            inv = np.where(np.isfinite(tokens_slo), 1.0 / tokens_slo, 0.0)
        forecast = Forecast()
        forecast.origin = self.step
        forecast.context = context
        forecast.remaining = remaining
        forecast.horizon = horizon
        forecast.cum_time = cum_time
        forecast.u_sparse = sparse_max(held + k)
        forecast.v_sparse = sparse_max(upper + k)
        forecast.u_suffix = u_suffix
        forecast.v_suffix = v_suffix
        forecast.atgt_base = np.where(inv > 0, (cum_time[remaining] + behind - np.where(started, first, 0.0)) * inv, -math.inf)
        forecast.atgt_clock = np.where(started, inv, 0.0)
        forecast.inv_tokens_slo = inv
        return forecast


class WorkerPool:
    """The workers a scheduler places on, with their forecasts stacked one row per worker.

    Rows are rewritten only for workers whose forecast was rebuilt, and the arrays grow
    geometrically, so a decision touches O(workers) scalars plus the candidates' rows.
    """

    SCALARS = (
        "origin", "horizon", "requests", "outstanding", "decoding", "decoding_context_base", "unprefilled",
        "prefill_work_ahead", "kv_held", "capacity", "block_size", "max_num_seqs", "max_batched_tokens",
        "dec_a", "dec_b", "dec_c", "pre_a", "pre_q", "pre_pass", "frontend",
    )

    def __init__(self, workers: Sequence[tuple[str, PerfModel]]):
        if not workers:
            raise AladdinError("a scheduler needs at least one worker")
        ids = [worker_id for worker_id, _ in workers]
        if len(set(ids)) != len(ids):
            raise AladdinError(f"worker ids must be unique, got {ids}")
        self.touched: set[int] = set()  # rows whose counters changed since the last decision
        self.step = np.zeros(len(ids))  # each worker's clock, written by WorkerState.advance
        self.observed = np.zeros(len(ids))
        self.workers = [WorkerState(worker_id, perf, i, self) for i, (worker_id, perf) in enumerate(workers)]
        self.by_id = {w.id: w for w in self.workers}
        self.ids = ids
        order = np.argsort(np.array(ids, dtype=object))
        self.id_rank = np.empty(len(ids), dtype=np.int64)  # position of each worker in id order
        self.id_rank[order] = np.arange(len(ids))
        self.scalars = np.zeros((len(self.SCALARS), len(ids)))
        self._static(self.workers)
        self._stamp: list[Forecast | None] = [None] * len(ids)
        self._allocate(steps=1, requests=1, levels=1)

    def __len__(self) -> int:
        return len(self.workers)

    def _static(self, workers: Iterable[WorkerState]) -> None:
        column = {name: i for i, name in enumerate(self.SCALARS)}
        for w in workers:
            perf = w.perf
            for name, value in (
                ("capacity", perf.kv.capacity_tokens), ("block_size", perf.kv.block_size),
                ("max_num_seqs", perf.max_num_seqs), ("max_batched_tokens", perf.max_batched_tokens),
                ("dec_a", perf.decode.a), ("dec_b", perf.decode.b), ("dec_c", perf.decode.c),
                ("pre_a", perf.prefill.a), ("pre_q", perf.prefill.q), ("pre_pass", perf.prefill_pass_s),
                ("frontend", perf.frontend_s),
            ):
                self.scalars[column[name], w.index] = value

    def scalar(self, name: str) -> np.ndarray:
        return self.scalars[self.SCALARS.index(name)]

    def _allocate(self, steps: int, requests: int, levels: int) -> None:
        w = len(self.workers)
        self.step_width, self.request_width, self.levels = steps, requests, levels
        self.cum_time = np.zeros((w, steps + 1))
        self.u_sparse = np.full((levels, w, steps + 1), -math.inf)
        self.v_sparse = np.full((levels, w, steps + 1), -math.inf)
        self.u_suffix = np.full((w, steps + 1), -math.inf)
        self.v_suffix = np.full((w, steps + 1), -math.inf)
        self.atgt_base = np.full((w, requests), -math.inf)
        self.atgt_clock = np.zeros((w, requests))
        self.inv_tokens_slo = np.zeros((w, requests))
        self.remaining = np.zeros((w, requests), dtype=np.int64)
        for worker in self.workers:
            forecast = self._stamp[worker.index]
            if forecast is not None:
                self._write(worker.index, forecast)

    def sync(self, forecasts: bool = True) -> None:
        """Refresh the rows of the workers that changed since the last decision; rebuild their
        forecasts where requests or predictions changed (unless the policy reads none)."""
        if not self.touched:
            return
        columns = [self.scalar(name) for name in (
            "outstanding", "decoding", "decoding_context_base", "unprefilled", "prefill_work_ahead", "kv_held")]
        for index in sorted(self.touched):
            w = self.workers[index]
            for column, value in zip(columns, (
                len(w.requests), w.num_decoding, w.decoding_context_base, w.unprefilled_tokens,
                w.prefill_work_ahead, w.kv_tokens_held(),
            )):
                column[index] = value
            if not forecasts:
                continue
            forecast = w.current_forecast()
            if forecast is self._stamp[w.index]:
                continue
            self._stamp[w.index] = forecast
            self.scalar("origin")[w.index] = forecast.origin
            self.scalar("horizon")[w.index] = forecast.horizon
            self.scalar("requests")[w.index] = forecast.remaining.size
            levels = forecast.u_sparse.shape[0]
            if forecast.horizon > self.step_width or forecast.remaining.size > self.request_width or levels > self.levels:
                grow = lambda need, width: width if need <= width else max(need, width * 3 // 2)  # noqa: E731
                steps = grow(forecast.horizon, self.step_width)
                self._allocate(steps, grow(forecast.remaining.size, self.request_width), max(1, (steps + 1).bit_length()))
            else:
                self._write(w.index, forecast)
        if forecasts:
            self.touched.clear()

    def _write(self, row: int, forecast: Forecast) -> None:
        end = forecast.horizon + 1
        self.cum_time[row, :end] = forecast.cum_time
        self.cum_time[row, end:] = forecast.cum_time[-1]
        levels = forecast.u_sparse.shape[0]
        self.u_sparse[:levels, row, :end] = forecast.u_sparse
        self.v_sparse[:levels, row, :end] = forecast.v_sparse
        self.u_sparse[:levels, row, end:] = -math.inf
        self.v_sparse[:levels, row, end:] = -math.inf
        self.u_sparse[levels:, row, :] = -math.inf
        self.v_sparse[levels:, row, :] = -math.inf
        self.u_suffix[row, :end] = forecast.u_suffix
        self.v_suffix[row, :end] = forecast.v_suffix
        self.u_suffix[row, end:] = -math.inf
        self.v_suffix[row, end:] = -math.inf
        n = forecast.remaining.size
        self.atgt_base[row, :n] = forecast.atgt_base
        self.atgt_base[row, n:] = -math.inf
        self.atgt_clock[row, :n] = forecast.atgt_clock
        self.atgt_clock[row, n:] = 0.0
        self.inv_tokens_slo[row, :n] = forecast.inv_tokens_slo
        self.inv_tokens_slo[row, n:] = 0.0
        self.remaining[row, :n] = forecast.remaining
        self.remaining[row, n:] = 0

    def steps_since_forecast(self) -> np.ndarray:
        """Per worker: decode steps since its forecast's origin, within its horizon."""
        return np.minimum(self.step - self.scalar("origin"), self.scalar("horizon")).astype(np.int64)

