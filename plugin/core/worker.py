"""Worker state updated by events, and its forecast: what one engine will do with its requests.

A :class:`WorkerState` follows one vLLM engine through the events its driver reports
(placed, prefill progress, first token, ``advance`` by k decode steps, finished, aborted,
preempted, re-predicted, reconciled). The forecast is the models' picture of the worker's
future (docs/placement.md): every request grows one token per decode step until its
predicted length, so the KV held, the step times and each request's predicted ATGT follow.

Why it is cheap live: the forecast is built in the worker's own step frame. A decode step
moves every decoding request one token along the same picture, so ``advance`` only moves the
worker's clock and the forecast is read ``delta`` steps further on (cumulative times by
difference, KV maxima over the steps the new request shares): tokens streaming on every
worker cost O(1) each.
The forecast is rebuilt, lazily at the next decision, only when the set of requests or a
prediction changed (placed, first token, finished, preempted, re-predicted, reconciled).
Prompts not yet started are read as if they had advanced too until the next rebuild; their
first token, a rebuild trigger, corrects that.

:class:`WorkerPool` holds every worker's request columns and forecast in padded arrays, one
row per worker, which the compiled loops of core.kernels rebuild (one row) and read (every
candidate row, core.pipeline).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from aladdin.errors import AladdinError
from aladdin.plugin.core import kernels
from aladdin.plugin.core.perfmodel import KVModel, PerfModel
from aladdin.plugin.core.request import Request, RequestStatus


@dataclass(frozen=True)
class RequestReport:
    """One request as its engine reports it (the in-engine plugin's exact state)."""

    id: str
    generated_tokens: int
    computed_tokens: int
    decoding: bool


class WorkerState:
    """One worker as the scheduler core knows it; see the module docstring."""

    def __init__(self, worker_id: str, perf: PerfModel, index: int, pool: WorkerPool):
        self.id = worker_id
        self._pool = pool  # holds this worker's columns (row ``index``) and hears of every change
        self.perf = perf
        self.index = index  # row in its pool
        self.requests: dict[str, Request] = {}  # placement order
        self.step = 0  # decode steps so far (the worker's clock)
        self._base: dict[str, int] = {}  # decoding requests: generated = step - base
        self.decoding_context_base = 0  # sum over decoding requests of prompt - base
        self.unprefilled_tokens = 0  # prompt tokens still to compute (queued prompts, unfinished chunks)
        self.prefill_work_ahead = 0.0  # their prefill work (PrefillModel.chunk_work)
        self.kv_tokens_reported: int | None = None  # KV in use as last reported (block-rounded)
        self.length_inflation = 1.0  # from this worker's prediction error (lifecycle's feedback)
        self.decode_scale = 1.0  # measured / profiled decode iteration time (set_decode_scale)
        self._overruns: list[tuple[int, str]] = []  # heap: (step a decoding request reaches its prediction, id)
        self.track_overruns = True
        self._slot: dict[str, int] = {}  # request -> its column in the pool's row
        self._free_slots: list[int] = []
        self._placed = 0  # placement sequence, for the order of queued prompts
        self._changed()

    # ------------------------------------------------------------------ reading

    @property
    def num_decoding(self) -> int:
        return len(self._base)

    def generated(self, request: Request) -> int:
        base = self._base.get(request.id)
        return request.generated_tokens if base is None else self.step - base

    def kv_tokens_held(self) -> int:
        """KV in use now: as reported (block-rounded), else the decoding requests' contexts."""
        if self.kv_tokens_reported is not None:
            return self.kv_tokens_reported
        return self.decoding_context_base + len(self._base) * self.step

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
        self._pool.touched.add(self.index)

    def _changed(self) -> None:
        """Requests or predictions changed: the forecast is rebuilt before it is next read."""
        self._pool.stale.add(self.index)
        self._touch()

    def place(self, request: Request) -> None:
        request.worker = self.id
        request.status = RequestStatus.PLACED
        self.requests[request.id] = request
        slot = self._free_slots.pop() if self._free_slots else len(self._slot)
        if slot >= self._pool.slot_width:
            self._pool.grow_slots(slot + 1)
        self._slot[request.id] = slot
        pool, row = self._pool, self.index
        pool.slots_used[row] = max(pool.slots_used[row], slot + 1)
        ints = pool.ints
        ints[kernels.PROMPT, row, slot] = request.prompt_tokens
        ints[kernels.PREDICTED, row, slot] = request.predicted_output_tokens
        ints[kernels.SEQ, row, slot] = self._placed
        ints[kernels.LIVE, row, slot] = True
        pool.floats[kernels.SLO, row, slot] = request.atgt_slo
        self._placed += 1
        self._write_progress(request)
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
        request.computed_tokens = request.prompt_tokens + generated_tokens
        request.status = RequestStatus.DECODING
        self._anchor(request, generated_tokens)
        self._changed()

    def advance(self, steps: int, now: float) -> list[Request]:
        """Every decoding request generated ``steps`` more tokens; returns those that reached
        their prediction (the lifecycle re-predicts them)."""
        self.step += steps
        self._pool.step[self.index] = self.step
        self._pool.observed[self.index] = now
        overrun = []
        heap = self._overruns
        while heap and heap[0][0] <= self.step:
            key, request_id = heapq.heappop(heap)
            if self._is_overrun_entry(key, request_id):
                overrun.append(self.requests[request_id])
        return overrun

    def tokens(self, request: Request, generated_tokens: int, now: float) -> list[Request]:
        """A report of one request's total generated tokens (a router sees streams one by one).

        A request ahead of the worker's clock moves the clock (the engine stepped; the rest
        of the batch follows), and the requests that reached their prediction on the way are
        returned, as ``advance`` does; one more than a step behind (preempted, stalled) is
        re-anchored.
        """
        base = self._base.get(request.id)
        if base is None:
            request.generated_tokens = generated_tokens
            return []
        expected = self.step - base
        if generated_tokens > expected:
            return self.advance(generated_tokens - expected, now)
        if expected - generated_tokens > 1:
            self._stop_decoding(request)
            self._anchor(request, generated_tokens)
            self._changed()
        return []

    def remove(self, request: Request) -> None:
        """It finished or was aborted: its KV and its share of every forecast are gone."""
        if request.id in self._base:
            request.generated_tokens = self.generated(request)
            self._stop_decoding(request)
        else:
            self._remove_prefill(request)
        del self.requests[request.id]
        slot = self._slot.pop(request.id)
        self._pool.ints[kernels.LIVE, self.index, slot] = False
        self._free_slots.append(slot)
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
        self._write_progress(request)
        self._add_prefill(request)
        self._changed()

    def set_length_inflation(self, factor: float) -> None:
        """Stretch the residents' predicted remaining lengths by ``factor`` in the forecast."""
        if factor != self.length_inflation:
            self.length_inflation = factor
            self._changed()

    def set_decode_scale(self, factor: float) -> None:
        """Scale the profile's decode iteration time by ``factor``: the ratio the engine measures
        between its real decode steps and the profile's, which drifts from 1 when the worker is
        slower or faster than where it was profiled (shared cores, another GPU, clocks)."""
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"decode scale must be a positive number, got {factor}")
        if factor != self.decode_scale:
            self.decode_scale = factor
            decode = self.perf.decode
            for name, base in (("dec_a", decode.a), ("dec_b", decode.b), ("dec_c", decode.c)):
                self._pool.scalar(name)[self.index] = base * factor
            self._changed()

    def set_kv(self, kv: KVModel) -> None:
        """The worker's real KV cache, once it reports one (it may differ from the profile's)."""
        if kv != self.perf.kv:
            self.perf = replace(self.perf, kv=kv)
            self._pool.scalar("capacity")[self.index] = kv.capacity_tokens
            self._pool.scalar("block_size")[self.index] = kv.block_size
            self._changed()

    def report_kv(self, kv_tokens_held: int) -> None:
        """KV in use now, block-rounded, as the engine (or the simulator's block ledger) counts it."""
        self.kv_tokens_reported = kv_tokens_held
        self._touch()

    def repredict(self, request: Request, predicted_output_tokens: int) -> None:
        request.predicted_output_tokens = predicted_output_tokens
        request.repredictions += 1
        self._pool.ints[kernels.PREDICTED, self.index, self._slot[request.id]] = predicted_output_tokens
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
            request.computed_tokens = report.computed_tokens
            if report.decoding:
                request.status = RequestStatus.DECODING
                self._anchor(request, report.generated_tokens)
            else:
                request.generated_tokens = report.generated_tokens
                request.status = RequestStatus.PLACED
                self._add_prefill(request)
                self._write_progress(request)
        self.kv_tokens_reported = kv_tokens_held
        self._pool.observed[self.index] = now
        self._changed()

    # ------------------------------------------------------------------ bookkeeping

    def _prefill_left(self, request: Request) -> tuple[int, int]:
        context = request.prompt_tokens + request.generated_tokens
        done = min(request.computed_tokens, context)
        return context - done, done

    def _chunk_work(self, left: int, done: int) -> float:
        """PrefillModel.chunk_work for one chunk, in scalar arithmetic (a hot path), plus the
        admission (PerfModel.admit_s) of a request not yet admitted (nothing computed)."""
        prefill = self.perf.prefill
        work = prefill.a * left + prefill.q * left * (2.0 * done + left)
        return work if done else work + self.perf.admit_s

    def _add_prefill(self, request: Request) -> None:
        left, done = self._prefill_left(request)
        self.unprefilled_tokens += left
        self.prefill_work_ahead += self._chunk_work(left, done)

    def _remove_prefill(self, request: Request) -> None:
        left, done = self._prefill_left(request)
        self.unprefilled_tokens -= left
        self.prefill_work_ahead -= self._chunk_work(left, done)
        if not self.unprefilled_tokens:
            self.prefill_work_ahead = 0.0  # no float drift when nothing is left

    def _write_progress(self, request: Request) -> None:
        """The request's generated tokens (or, decoding, its anchor) and first token, in its column."""
        pool, row, slot = self._pool, self.index, self._slot[request.id]
        base = self._base.get(request.id)
        pool.ints[kernels.DECODING, row, slot] = base is not None
        pool.ints[kernels.ANCHOR, row, slot] = request.generated_tokens if base is None else base
        pool.floats[kernels.FIRST, row, slot] = request.first_token_time

    def _anchor(self, request: Request, generated_tokens: int) -> None:
        """It decodes from here with ``generated_tokens`` out: from now on its count follows the clock."""
        request.generated_tokens = generated_tokens
        base = self.step - generated_tokens
        self._base[request.id] = base
        self.decoding_context_base += request.prompt_tokens - base
        self._write_progress(request)
        self._push_overrun(request)

    def _stop_decoding(self, request: Request) -> None:
        base = self._base.pop(request.id)
        self.decoding_context_base -= request.prompt_tokens - base

    def _push_overrun(self, request: Request) -> None:
        if self.track_overruns:
            heapq.heappush(self._overruns, (self._base[request.id] + request.predicted_output_tokens, request.id))

    # ------------------------------------------------------------------ forecast

    def refresh_forecast(self) -> None:
        """Rebuild this worker's forecast row now if its requests or predictions changed."""
        if self.index in self._pool.stale:
            self._pool.rebuild(self)
            self._pool.stale.discard(self.index)


class WorkerPool:
    """The workers a scheduler places on; their request columns and forecasts, one row each.

    Request columns (one slot per request, reused after it leaves), ``ints``: PROMPT, ANCHOR
    (generated tokens, or while DECODING the step at which it had none), PREDICTED, SEQ
    (placement order), LIVE; ``floats``: SLO (ATGT), FIRST (first-token time). Forecast, from
    ORIGIN on: per slot CONTEXT, REMAINING and the ATGT terms (ratio = ATGT_BASE + ATGT_CLOCK
    * observed - cum_time[delta] * INV_TOKENS_SLO); per step (``steps``) CUM_TIME and the
    suffix maxima of the KV tokens held (unrounded) and of its bound ``upper`` (a partly full
    block per request more), and sparse tables of held[k] + k and upper[k] + k (``tables``).
    The field names are core.kernels' constants. Rows are rebuilt only for workers whose
    requests changed, and the arrays grow geometrically.
    """

    SLOT_FILL_INTS = {"predicted": 1}  # defaults of a slot that never held a request (else 0)
    SLOT_FILL_FLOATS = {"slo": math.inf, "first": math.nan, "atgt_base": -math.inf}

    def __init__(self, workers: Sequence[tuple[str, PerfModel]]):
        if not workers:
            raise AladdinError("a scheduler needs at least one worker")
        ids = [worker_id for worker_id, _ in workers]
        if len(set(ids)) != len(ids):
            raise AladdinError(f"worker ids must be unique, got {ids}")
        self.ids = ids
        self.touched: set[int] = set()  # rows whose counters changed since the last decision
        self.stale: set[int] = set()  # rows whose forecast must be rebuilt before it is read
        self.step = np.zeros(len(ids), dtype=np.int64)  # each worker's clock, written by WorkerState.advance
        self.observed = np.zeros(len(ids))
        self.slots_used = np.zeros(len(ids), dtype=np.int64)  # per row: one past its highest slot ever used
        self.scalars = np.zeros((len(kernels.SCALARS), len(ids)))
        self._views = {name: self.scalars[i] for i, name in enumerate(kernels.SCALARS)}
        self.slot_width = 0
        self.grow_slots(8)
        self.step_width = 0
        self._grow_steps(512)
        self.workers = [WorkerState(worker_id, perf, i, self) for i, (worker_id, perf) in enumerate(workers)]
        self.by_id = {w.id: w for w in self.workers}
        order = np.argsort(np.array(ids, dtype=object))
        self.id_rank = np.empty(len(ids), dtype=np.int64)  # position of each worker in id order
        self.id_rank[order] = np.arange(len(ids))
        for w in self.workers:
            perf = w.perf
            for name, value in (
                ("capacity", perf.kv.capacity_tokens), ("block_size", perf.kv.block_size),
                ("max_num_seqs", perf.max_num_seqs), ("max_batched_tokens", perf.max_batched_tokens),
                ("dec_a", perf.decode.a), ("dec_b", perf.decode.b), ("dec_c", perf.decode.c),
                ("pre_a", perf.prefill.a), ("pre_q", perf.prefill.q), ("pre_pass", perf.prefill_pass_s),
                ("frontend", perf.frontend_s), ("admit", perf.admit_s),
            ):
                self._views[name][w.index] = value

    def __len__(self) -> int:
        return len(self.ids)

    def scalar(self, name: str) -> np.ndarray:
        """One scalar per worker (a row of ``scalars``; the same view every call)."""
        return self._views[name]

    def grow_slots(self, need: int) -> None:
        width = max(need, self.slot_width * 2)
        rows = len(self.ids)
        ints = np.zeros((len(kernels.SLOT_INTS), rows, width), dtype=np.int64)
        floats = np.zeros((len(kernels.SLOT_FLOATS), rows, width))
        for i, name in enumerate(kernels.SLOT_INTS):
            ints[i] = self.SLOT_FILL_INTS.get(name, 0)
        for i, name in enumerate(kernels.SLOT_FLOATS):
            floats[i] = self.SLOT_FILL_FLOATS.get(name, 0.0)
        if self.slot_width:
            ints[:, :, : self.slot_width] = self.ints
            floats[:, :, : self.slot_width] = self.floats
        self.ints, self.floats, self.slot_width = ints, floats, width

    def _grow_steps(self, need: int) -> None:
        """Room for ``need`` steps (doubling). The old rows are not copied: every row is rebuilt
        before it is read again (a rebuild writes all a decision reads, up to its horizon)."""
        width = max(need, self.step_width * 2)
        rows = len(self.ids)
        self.steps = np.empty((len(kernels.STEP_ROWS), rows, width + 1))
        self.tables = np.empty((len(kernels.TABLES), (width + 1).bit_length(), rows, width + 1))
        self.step_width = width
        self.stale.update(range(rows))

    def rebuild(self, worker: WorkerState) -> None:
        """Worker ``worker``'s forecast from its columns at its current step (core.kernels)."""
        row = worker.index
        while True:
            horizon = kernels.rebuild(row, worker.step, worker.length_inflation, self.scalars, self.ints, self.floats,
                                      self.steps, self.tables)
            if horizon <= self.step_width:
                break
            self._grow_steps(horizon)
        self.scalars[kernels.ORIGIN, row] = worker.step
        self.scalars[kernels.HORIZON, row] = horizon

    def sync(self, forecasts: bool = True) -> None:
        """Refresh the rows of the workers that changed since the last decision; rebuild their
        forecasts where requests or predictions changed (unless the policy reads none)."""
        if self.touched:
            scalars = self.scalars
            for index in self.touched:
                w = self.workers[index]
                scalars[kernels.OUTSTANDING, index] = len(w.requests)
                scalars[kernels.N_DECODING, index] = w.num_decoding
                scalars[kernels.DECODING_CONTEXT_BASE, index] = w.decoding_context_base
                scalars[kernels.UNPREFILLED, index] = w.unprefilled_tokens
                scalars[kernels.PREFILL_WORK_AHEAD, index] = w.prefill_work_ahead
                scalars[kernels.KV_HELD, index] = w.kv_tokens_held()
            self.touched.clear()
        while forecasts and self.stale:  # a rebuild that grows the arrays marks every row stale
            self.rebuild(self.workers[self.stale.pop()])

    def predicted_peak_kv(self, row: int) -> float:
        """Worker ``row``'s predicted peak KV tokens from now on (unrounded; 0 when idle)."""
        self.sync()
        delta = int(self.steps_since_forecast()[row])
        return max(float(self.steps[kernels.HELD_SUFFIX, row, delta]), 0.0)

    def steps_since_forecast(self) -> np.ndarray:
        """Per worker: decode steps since its forecast's origin, within its horizon."""
        origin = self.scalars[kernels.ORIGIN].astype(np.int64)
        return np.minimum(self.step - origin, self.scalars[kernels.HORIZON].astype(np.int64))
