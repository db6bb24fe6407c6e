"""Request placement: which worker gets a new request, or none yet (the central queue).

One small protocol serves the simulator, a live router and an in-engine plugin alike, so it
holds no simulator types: a policy sees plain views of the request and of every worker
(columnar request sets that a router fills from live metrics and the simulator from its
state) and answers a worker id or None. Policies:

- ``aladdin``: best-fit bin packing on the performance models. A worker is feasible when,
  with the new request added and every request growing to its predicted length, the peak
  KV stays within capacity, every request's predicted ATGT stays within its SLO and the new
  request's predicted TTFT holds; the tightest feasible worker wins, none -> central queue.
- ``jsq`` (fewest outstanding requests), ``po2`` (power of two random choices), ``rr``
  (round robin) and ``least-kv`` (fewest KV tokens held): the baselines.

Rebalancing (no migration) lives here too: ``Rebalancer`` re-predicts requests that outgrow
their prediction and tracks each worker's prediction error, and ``CentralQueue`` re-places
queued requests whenever capacity may have freed. Definitions: docs/placement.md.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from aladdin.errors import AladdinError
from aladdin.plugin.core.perfmodel import PerfModel
from aladdin.plugin.core.predictor import LengthPredictor

# ---------------------------------------------------------------------------------------
# Views


@dataclass(frozen=True)
class RequestView:
    """One request as a policy sees it; for a new request ``generated_tokens`` is 0."""

    id: str
    prompt_tokens: int
    predicted_output_tokens: int  # total output length, including what is already generated
    generated_tokens: int = 0
    arrival_time: float = 0.0  # on the same clock as ``now``
    ttft_slo: float = math.inf
    atgt_slo: float = math.inf
    first_token_time: float = math.nan  # NaN until the first token streamed

    @property
    def context_tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens

    @property
    def remaining_tokens(self) -> int:
        """Predicted tokens still to come, at least 1 (an overrun counts as one more)."""
        return max(self.predicted_output_tokens - self.generated_tokens, 1)


@dataclass(frozen=True)
class RequestSet:
    """Many requests of one worker queue, column by column (equal-length 1-D arrays)."""

    prompt_tokens: np.ndarray
    generated_tokens: np.ndarray
    predicted_output_tokens: np.ndarray
    atgt_slo: np.ndarray  # seconds per token; inf = no ATGT SLO
    first_token_time: np.ndarray  # NaN until the first token streamed

    @classmethod
    def of(cls, requests: Sequence[RequestView]) -> RequestSet:
        """Columns of a list of request views (what a router builds from its bookkeeping)."""
        return cls(
            prompt_tokens=np.array([r.prompt_tokens for r in requests], dtype=np.int64),
            generated_tokens=np.array([r.generated_tokens for r in requests], dtype=np.int64),
            predicted_output_tokens=np.array([r.predicted_output_tokens for r in requests], dtype=np.int64),
            atgt_slo=np.array([r.atgt_slo for r in requests], dtype=float),
            first_token_time=np.array([r.first_token_time for r in requests], dtype=float),
        )

    def __len__(self) -> int:
        return len(self.prompt_tokens)

    @property
    def context_tokens(self) -> np.ndarray:
        return self.prompt_tokens + self.generated_tokens


EMPTY = RequestSet.of(())
_COLUMNS = ("prompt_tokens", "generated_tokens", "predicted_output_tokens", "atgt_slo", "first_token_time")


@dataclass(frozen=True)
class WorkerView:
    """One worker's state as the placement sees it.

    ``running``: admitted requests (holding KV), oldest first. ``waiting``: queued on the
    worker, next to be admitted first. ``kv_tokens_held``: KV in use now, block-rounded
    (None: estimated from the running contexts). ``unprefilled_tokens``: prompt tokens the
    worker must still prefill, queued prompts and unfinished chunks (None: the waiting
    contexts). ``observed_at``: when the request columns were true (None: now); a running
    request's time since its first token is counted up to then. ``version`` changes whenever
    the worker's requests or ``observed_at`` change; a policy may cache per-worker work under
    (id, version). None disables caching.
    """

    id: str
    perf: PerfModel
    running: RequestSet = EMPTY
    waiting: RequestSet = EMPTY
    kv_tokens_held: int | None = None
    unprefilled_tokens: int | None = None
    observed_at: float | None = None
    version: int | None = None

    @property
    def num_outstanding(self) -> int:
        return len(self.running) + len(self.waiting)

    def kv_in_use(self) -> int:
        if self.kv_tokens_held is not None:
            return self.kv_tokens_held
        return self.perf.kv.tokens_held(self.running.context_tokens)


class PlacementPolicy(Protocol):
    """Chooses a worker id for ``request``, or None to keep it in the central queue.

    A policy may set ``uses_predictions = True`` when predicted output lengths change its
    choices; the caller then keeps predictions current (re-predicting overruns).
    """

    name: str

    def choose(self, request: RequestView, workers: Sequence[WorkerView], now: float) -> str | None: ...


# ---------------------------------------------------------------------------------------
# Baselines


class JoinShortestQueue:
    """Fewest outstanding (running + waiting) requests; ties go to the smallest id."""

    name = "jsq"
    uses_predictions = False

    def choose(self, request: RequestView, workers: Sequence[WorkerView], now: float) -> str | None:
        return min(workers, key=lambda w: (w.num_outstanding, w.id)).id


class PowerOfTwoChoices:
    """Two distinct workers drawn at random (seeded); the one with fewer outstanding wins."""

    name = "po2"
    uses_predictions = False

    def __init__(self, seed: int = 0):
        self._random = random.Random(seed)

    def choose(self, request: RequestView, workers: Sequence[WorkerView], now: float) -> str | None:
        if len(workers) == 1:
            return workers[0].id
        first, second = self._random.sample(range(len(workers)), 2)
        return min(workers[first], workers[second], key=lambda w: (w.num_outstanding, w.id)).id


class RoundRobin:
    """Workers in turn, in the order they are listed."""

    name = "rr"
    uses_predictions = False

    def __init__(self) -> None:
        self._next = 0

    def choose(self, request: RequestView, workers: Sequence[WorkerView], now: float) -> str | None:
        worker = workers[self._next % len(workers)]
        self._next += 1
        return worker.id


class LeastKV:
    """Fewest KV tokens held now; ties go to the smallest id."""

    name = "least-kv"
    uses_predictions = False

    def choose(self, request: RequestView, workers: Sequence[WorkerView], now: float) -> str | None:
        return min(workers, key=lambda w: (w.kv_in_use(), w.id)).id


# ---------------------------------------------------------------------------------------
# Aladdin: best fit on the performance models


@dataclass(frozen=True)
class Fit:
    """How a request would fit on one worker (AladdinPolicy.evaluate).

    ``kv_fill``: predicted peak KV tokens with the request (not block-rounded) / capacity.
    ``atgt_fill``: the largest predicted ATGT / ATGT SLO over the worker's requests and the
    new one. ``fill`` = max of the two, ``slack`` = 1 - fill: the headroom left in the
    binding dimension. ``violates`` names the failed constraints ("" when feasible).
    """

    worker: str
    kv_fill: float
    atgt_fill: float
    ttft: float  # predicted TTFT of the new request, counted from its arrival
    violates: str

    @property
    def feasible(self) -> bool:
        return not self.violates

    @property
    def fill(self) -> float:
        return max(self.kv_fill, self.atgt_fill)

    @property
    def slack(self) -> float:
        return 1.0 - self.fill


@dataclass
class Forecast:
    """A worker's predicted future without the new request (docs/placement.md).

    Every request (running or waiting) holds ``context`` tokens at step 0 and one more per
    step until its ``remaining`` steps are done; k = 0..K-1 with K = the largest remaining.
    U[k] = tokens held (unrounded), V[k] = U[k] + (block_size - 1) * alive[k] (an upper
    bound on the block-rounded use), T[k] = the decode iteration time. ``table`` rows, each
    indexed by j = 0..K (see TABLE_ROWS):

    - cum_time[j] = sum of T[k] for k < j
    - u_prefix[j] = max over k < j of U[k] + k (-inf for j = 0), v_prefix likewise with V
    - u_suffix[j] = max over k >= j of U[k] (-inf for j = K), v_suffix likewise with V
    """

    context: np.ndarray
    remaining: np.ndarray
    horizon: int  # K
    table: np.ndarray  # shape (5, K + 1)
    atgt_ratio: np.ndarray  # each request's predicted ATGT / its SLO (see build_forecast)
    inv_tokens_slo: np.ndarray  # 1 / (ATGT tokens * SLO): turns time added to a request into ratio
    running: int
    running_context: float
    waiting_tokens: int
    waiting_prefill_work: float


TABLE_ROWS = ("cum_time", "u_prefix", "v_prefix", "u_suffix", "v_suffix")
CUM_TIME, U_PREFIX, V_PREFIX, U_SUFFIX, V_SUFFIX = range(5)


def build_forecast(worker: WorkerView, now: float) -> Forecast:
    """The worker's future as the models see it: everyone decodes together from now on.

    A request's predicted ATGT covers its whole life, as the metric does: the time since its
    first token (up to ``observed_at``, else ``now``) plus its predicted future decode time
    and the stalls of prefills queued behind it, over its tokens after the first
    (generated - 1 + remaining; just remaining before the first token).
    """
    perf = worker.perf
    dec = perf.decode
    running, waiting = worker.running, worker.waiting
    requests = running if not len(waiting) else RequestSet(
        *(np.concatenate([getattr(running, name), getattr(waiting, name)]) for name in _COLUMNS)
    )
    generated = requests.generated_tokens
    context = (requests.prompt_tokens + generated).astype(float)
    remaining = np.maximum(requests.predicted_output_tokens - generated, 1)
    n = context.size
    horizon = int(remaining.max()) if n else 0
    k = np.arange(horizon)
    alive = n - np.cumsum(np.bincount(remaining, minlength=horizon + 1)[:horizon])  # remaining > k
    held = context.sum() - np.cumsum(np.bincount(remaining, weights=context, minlength=horizon + 1)[:horizon])
    held += k * alive
    table = np.empty((5, horizon + 1))
    table[CUM_TIME, 0] = 0.0
    np.cumsum(dec.a * alive + dec.b * held + dec.c, out=table[CUM_TIME, 1:])
    upper = held + (perf.kv.block_size - 1) * alive
    table[[U_PREFIX, V_PREFIX], 0] = -math.inf
    np.maximum.accumulate(held + k, out=table[U_PREFIX, 1:])
    np.maximum.accumulate(upper + k, out=table[V_PREFIX, 1:])
    table[[U_SUFFIX, V_SUFFIX], horizon] = -math.inf
    np.maximum.accumulate(held[::-1], out=table[U_SUFFIX, horizon - 1 :: -1] if horizon else table[U_SUFFIX, :0])
    np.maximum.accumulate(upper[::-1], out=table[V_SUFFIX, horizon - 1 :: -1] if horizon else table[V_SUFFIX, :0])

    # Prefills still to run stall the decodes they share: those of running requests without a
    # first token yet (their prefill is in flight at ``observed_at``) stall every other running
    # request, queued ones every running request and the queued requests ahead of them.
    behind = np.zeros(n)
    unstarted = running.generated_tokens == 0
    if unstarted.any():
        own = np.where(unstarted, prefill_stall(perf, running.prompt_tokens), 0.0)
        behind[: len(running)] = own.sum() - own
    if len(waiting):
        waiting_context = waiting.context_tokens
        stalls = prefill_stall(perf, waiting_context)
        behind[: len(running)] += stalls.sum()
        behind[len(running):] = stalls.sum() - np.cumsum(stalls)
        waiting_work = float(np.sum(perf.prefill.chunk_work(waiting_context, 0)))
        waiting_tokens = int(waiting_context.sum())
    else:
        waiting_work, waiting_tokens = 0.0, 0
    started = (generated >= 1) & np.isfinite(requests.first_token_time)
    observed = worker.observed_at if worker.observed_at is not None else now
    past = np.where(started, observed - requests.first_token_time, 0.0)
    tokens_slo = (remaining + np.where(started, generated - 1, 0)) * requests.atgt_slo
    return Forecast(
        context=context,
        remaining=remaining,
        horizon=horizon,
        table=table,
        atgt_ratio=(past + table[CUM_TIME, remaining] + behind) / tokens_slo,
        inv_tokens_slo=1.0 / tokens_slo,
        running=len(running),
        running_context=float(context[: len(running)].sum()),
        waiting_tokens=waiting_tokens,
        waiting_prefill_work=waiting_work,
    )


def prefill_stall(perf: PerfModel, tokens) -> np.ndarray:
    """Element-wise extra time a prefill of ``tokens`` adds to the decode iterations it shares:
    its chunks' variable work (the pass's fixed cost is the decode's own; docs/perfmodel.md,
    "Mixed iterations")."""
    return np.asarray(perf.prefill.chunk_work(np.asarray(tokens, dtype=float), 0), dtype=float)


class _Stack:
    """The forecasts of a list of workers, padded into arrays with one row per worker.

    One placement then evaluates every worker with a few vectorized operations; a row is
    rewritten only when its worker's version changes.
    """

    SCALARS = (
        "horizon", "requests", "has_atgt_slo", "running", "running_context", "waiting_tokens",
        "waiting_prefill_work", "outstanding", "unprefilled", "capacity", "block_size", "max_num_seqs",
        "max_batched_tokens", "dec_a", "dec_b", "dec_c", "pre_a", "pre_q", "pre_pass", "frontend",
    )

    def __init__(self, ids: tuple[str, ...]):
        self.ids = ids
        self.versions: list[int | None] = [None] * len(ids)
        self.forecasts: list[Forecast | None] = [None] * len(ids)
        self.rows = np.arange(len(ids))
        order = np.argsort(np.array(ids, dtype=object))
        self.id_rank = np.empty(len(ids), dtype=np.int64)  # position of each worker in id order
        self.id_rank[order] = np.arange(len(ids))
        self.scalars = np.zeros((len(self.SCALARS), len(ids)))
        for i, name in enumerate(self.SCALARS):
            setattr(self, name, self.scalars[i])  # a view: one column write updates them all
        self._allocate(steps=1, requests=1)

    def _allocate(self, steps: int, requests: int) -> None:
        w = len(self.ids)
        self.step_width, self.request_width = steps, requests
        self.table = np.full((5, w, steps + 1), -math.inf)
        for i, name in enumerate(TABLE_ROWS):
            setattr(self, name, self.table[i])
        self.atgt_ratio = np.full((w, requests), -math.inf)
        self.inv_tokens_slo = np.zeros((w, requests))
        self.remaining = np.ones((w, requests), dtype=np.int64)
        for slot, forecast in enumerate(self.forecasts):
            if forecast is not None:
                self._write_rows(slot, forecast)

    def set(self, slot: int, worker: WorkerView, forecast: Forecast) -> None:
        self.versions[slot] = worker.version
        self.forecasts[slot] = forecast
        perf = worker.perf
        unprefilled = worker.unprefilled_tokens if worker.unprefilled_tokens is not None else forecast.waiting_tokens
        self.scalars[:, slot] = (
            forecast.horizon, forecast.remaining.size, forecast.inv_tokens_slo.any(), forecast.running,
            forecast.running_context, forecast.waiting_tokens, forecast.waiting_prefill_work,
            worker.num_outstanding, unprefilled, perf.kv.capacity_tokens, perf.kv.block_size, perf.max_num_seqs,
            perf.max_batched_tokens, perf.decode.a, perf.decode.b, perf.decode.c,
            perf.prefill.a, perf.prefill.q, perf.prefill_pass_s, perf.frontend_s,
        )
        if forecast.horizon > self.step_width or forecast.remaining.size > self.request_width:
            grow = lambda need, width: width if need <= width else max(need, width * 3 // 2)  # noqa: E731
            self._allocate(grow(forecast.horizon, self.step_width), grow(forecast.remaining.size, self.request_width))
        else:
            self._write_rows(slot, forecast)

    def _write_rows(self, slot: int, forecast: Forecast) -> None:
        end = forecast.horizon + 1
        self.table[:, slot, :end] = forecast.table
        self.table[:V_PREFIX + 1, slot, end:] = forecast.table[:V_PREFIX + 1, -1:]  # running totals stay
        self.table[U_SUFFIX:, slot, end:] = -math.inf
        n = forecast.remaining.size
        self.atgt_ratio[slot, :n] = forecast.atgt_ratio
        self.atgt_ratio[slot, n:] = -math.inf
        self.inv_tokens_slo[slot, :n] = forecast.inv_tokens_slo
        self.inv_tokens_slo[slot, n:] = 0.0
        self.remaining[slot, :n] = forecast.remaining
        self.remaining[slot, n:] = 1


class AladdinPolicy:
    """Best-fit placement under KV, ATGT and TTFT constraints predicted by the models.

    Constraints that the request would fail even alone on an idle worker (a prompt that
    already waited past its TTFT SLO, an ATGT SLO below the model's single-request pace, a
    request bigger than the KV cache) are dropped for that request: no later moment can
    satisfy them, so holding it back would only starve it.
    """

    name = "aladdin"
    uses_predictions = True

    def __init__(self, headroom: float = 0.0) -> None:
        if not 0.0 <= headroom < 1.0:
            raise AladdinError(f"aladdin headroom must be in [0, 1), got {headroom}")
        self.headroom = headroom  # share of the KV and ATGT budgets kept free, against model error
        self._cache: dict[str, tuple[int, Forecast]] = {}  # per worker id: (version, forecast)
        self._stack = _Stack(())

    def choose(self, request: RequestView, workers: Sequence[WorkerView], now: float) -> str | None:
        fits = self._evaluate(request, workers, now, prune=True)
        feasible = np.flatnonzero(fits["feasible"])
        if feasible.size == 0:
            return None
        fill = fits["fill"][feasible]
        tight = feasible[fill == fill.max()]
        return workers[int(tight[np.argmin(self._stack.id_rank[tight])])].id

    def evaluate(self, request: RequestView, workers: Sequence[WorkerView], now: float) -> list[Fit]:
        """Each worker's fit for ``request`` (what ``choose`` ranks), for tests and diagnostics."""
        fits = self._evaluate(request, workers, now)
        names = ("seqs", "kv", "atgt", "ttft")
        return [
            Fit(
                worker=worker.id,
                kv_fill=float(fits["kv_fill"][i]),
                atgt_fill=float(fits["atgt_fill"][i]),
                ttft=float(fits["ttft_s"][i]),
                violates="+".join(name for name in names if fits[name][i]),
            )
            for i, worker in enumerate(workers)
        ]

    def _sync(self, workers: Sequence[WorkerView], now: float) -> _Stack:
        ids = tuple(worker.id for worker in workers)
        if ids != self._stack.ids:
            self._stack = _Stack(ids)
        stack = self._stack
        for slot, worker in enumerate(workers):
            if worker.version is not None and stack.versions[slot] == worker.version:
                continue
            cached = self._cache.get(worker.id)
            if worker.version is not None and cached is not None and cached[0] == worker.version:
                forecast = cached[1]
            else:
                forecast = build_forecast(worker, now)
                if worker.version is not None:
                    self._cache[worker.id] = (worker.version, forecast)
            stack.set(slot, worker, forecast)
        return stack

    def _evaluate(
        self, request: RequestView, workers: Sequence[WorkerView], now: float, prune: bool = False
    ) -> dict[str, np.ndarray]:
        """The constraints and fills of ``request`` on every worker, vectorized over workers.

        ``prune`` skips the per-request ATGT work on workers already infeasible otherwise
        (their ``atgt_fill`` then only counts the new request), which is all ``choose`` needs.
        """
        s = self._sync(workers, now)
        context = request.context_tokens
        steps = request.remaining_tokens
        rows = s.rows
        horizon = s.horizon.astype(np.int64)
        shared = np.minimum(steps, horizon)
        capacity = s.capacity

        # KV: peak of the unrounded forecast; block rounding is checked exactly only where
        # the cheap bounds disagree.
        tail = context + steps - 1.0  # the new request's own peak
        beyond = np.where(steps > horizon, tail, -math.inf)
        after = np.minimum(steps, s.step_width)
        lower = np.maximum(np.maximum(s.u_prefix[rows, shared] + context, s.u_suffix[rows, after]), beyond)
        upper = np.maximum(
            np.maximum(s.v_prefix[rows, shared] + context + s.block_size - 1, s.v_suffix[rows, after]),
            beyond + s.block_size - 1,
        )
        limit = (1.0 - self.headroom) * capacity
        kv_alone = np.ceil(tail / s.block_size) * s.block_size <= limit
        kv = kv_alone & (upper > limit)
        for i in np.flatnonzero(kv & (lower <= limit)).tolist():
            forecast = s.forecasts[i]
            peak = workers[i].perf.kv.peak_tokens_held(
                np.append(forecast.context, context), np.append(forecast.remaining, steps)
            )
            kv[i] = peak > limit[i]

        # TTFT: the front end (unless already behind it), then the prefills queued ahead, in
        # iterations that also carry the running decodes.
        budget = np.maximum(s.max_batched_tokens - s.running, 1.0)
        per_iteration = np.where(
            s.running > 0, s.dec_a * s.running + s.dec_b * s.running_context + s.dec_c, s.pre_pass
        )
        waited = np.maximum(max(now - request.arrival_time, 0.0), s.frontend)
        extra = np.maximum(s.unprefilled - s.waiting_tokens, 0.0)
        own_work = s.pre_a * context + s.pre_q * context * context
        ttft = (
            waited
            + np.ceil((s.unprefilled + context) / budget) * per_iteration
            + s.waiting_prefill_work
            + s.pre_a * extra
            + own_work
        )
        ttft_alone = waited + np.ceil(context / s.max_batched_tokens) * s.pre_pass + own_work
        late = (ttft > request.ttft_slo) & (ttft_alone <= request.ttft_slo)
        seqs = s.outstanding + 1 > s.max_num_seqs

        # ATGT: the new request adds a + b * (context + k) to every step k it shares, and its
        # prefill stalls the others once.
        per_step = s.dec_a + s.dec_b * context
        own_added = steps * per_step + s.dec_b * steps * (steps - 1) / 2.0
        own_atgt = (s.cum_time[rows, shared] + own_added + s.dec_c * np.maximum(steps - horizon, 0)) / steps
        alone_atgt = (own_added + s.dec_c * steps) / steps
        atgt_fill = np.where(alone_atgt <= (1.0 - self.headroom) * request.atgt_slo, own_atgt / request.atgt_slo, 0.0)
        others = (s.has_atgt_slo > 0) & ~(seqs | kv | late) if prune else s.has_atgt_slo > 0
        slots = np.flatnonzero(others)
        if slots.size:
            width = int(s.requests[slots].max())
            stall = np.zeros(slots.size) if request.generated_tokens else own_work[slots]
            share = np.minimum(s.remaining[slots, :width], steps)
            added = share * per_step[slots, None] + s.dec_b[slots, None] * share * (share - 1) / 2.0 + stall[:, None]
            worst = (s.atgt_ratio[slots, :width] + added * s.inv_tokens_slo[slots, :width]).max(axis=1)
            atgt_fill[slots] = np.maximum(atgt_fill[slots], worst)
        atgt = atgt_fill > 1.0 - self.headroom

        kv_fill = np.maximum(lower, 0.0) / capacity
        return {
            "seqs": seqs,
            "kv": kv,
            "atgt": atgt,
            "ttft": late,
            "feasible": ~(seqs | kv | atgt | late),
            "kv_fill": kv_fill,
            "atgt_fill": atgt_fill,
            "fill": np.maximum(kv_fill, atgt_fill),
            "ttft_s": ttft,
        }


# ---------------------------------------------------------------------------------------
# Registry

POLICIES: dict[str, Callable[..., PlacementPolicy]] = {
    "aladdin": AladdinPolicy,
    "jsq": JoinShortestQueue,
    "po2": PowerOfTwoChoices,
    "rr": RoundRobin,
    "least-kv": LeastKV,
}


def make_policy(name: str, **options: Any) -> PlacementPolicy:
    """A new policy by registry name; ``options`` go to its constructor (po2 takes ``seed``)."""
    if name not in POLICIES:
        raise AladdinError(f"unknown placement policy {name!r}; choose one of {', '.join(POLICIES)}")
    try:
        return POLICIES[name](**options)
    except TypeError:
        raise AladdinError(f"policy {name!r} does not take options {sorted(options)}") from None


# ---------------------------------------------------------------------------------------
# Rebalancing without migration


@dataclass
class WorkerPredictionError:
    """Prediction error of the requests one worker finished (first prediction vs actual)."""

    finished: int = 0
    error_sum: float = 0.0  # sum of actual - predicted: > 0 means the worker ran longer than planned
    abs_error_sum: float = 0.0
    repredictions: int = 0

    def to_dict(self) -> dict[str, Any]:
        mean = self.error_sum / self.finished if self.finished else None
        mean_abs = self.abs_error_sum / self.finished if self.finished else None
        return {**asdict(self), "mean_error": mean, "mean_abs_error": mean_abs}


@dataclass
class Rebalancer:
    """Keeps predictions honest once placed: nothing running moves, later placements adapt.

    When a running request reaches its predicted length unfinished, ``overrun`` gives its new
    predicted total (generated + the predictor's conditional remaining length), so the
    worker's forecast, and with it every later placement, sees the corrected load.
    ``finished`` teaches the predictor and records each worker's error.
    """

    predictor: LengthPredictor
    errors: dict[str, WorkerPredictionError] = field(default_factory=dict)

    def _worker(self, worker_id: str) -> WorkerPredictionError:
        stats = self.errors.get(worker_id)
        if stats is None:
            stats = self.errors[worker_id] = WorkerPredictionError()
        return stats

    def overrun(self, worker_id: str, prompt_tokens: int, generated: int) -> int:
        self._worker(worker_id).repredictions += 1
        return generated + self.predictor.repredict(prompt_tokens, generated)

    def finished(self, worker_id: str, prompt_tokens: int, output_tokens: int, first_prediction: int) -> None:
        self.predictor.observe(prompt_tokens, output_tokens)
        stats = self._worker(worker_id)
        stats.finished += 1
        stats.error_sum += output_tokens - first_prediction
        stats.abs_error_sum += abs(output_tokens - first_prediction)

    def summary(self) -> dict[str, dict[str, Any]]:
        return {worker: stats.to_dict() for worker, stats in sorted(self.errors.items())}


class CentralQueue:
    """Requests no worker could take yet, re-placed in arrival order when capacity may free.

    ``retry`` stops at the first request that still fits nowhere (FCFS, like an engine's
    waiting queue), so a retry costs one policy call per placed request plus one.
    """

    def __init__(self, policy: PlacementPolicy):
        self.policy = policy
        self.queue: deque[RequestView] = deque()
        self.peak = 0

    def __len__(self) -> int:
        return len(self.queue)

    def push(self, request: RequestView) -> None:
        self.queue.append(request)
        self.peak = max(self.peak, len(self.queue))

    def retry(
        self,
        views: Callable[[], Sequence[WorkerView]],
        place: Callable[[RequestView, str], None],
        now: float,
        refresh: Callable[[RequestView], RequestView] | None = None,
    ) -> int:
        """Place queued requests while the policy accepts them; returns how many were placed.

        ``views`` is called before each choice (the previous placement changed a worker);
        ``refresh`` may update a request first, e.g. with the predictor's latest estimate.
        """
        placed = 0
        while self.queue:
            request = self.queue[0] if refresh is None else refresh(self.queue[0])
            worker = self.policy.choose(request, views(), now)
            if worker is None:
                self.queue[0] = request
                break
            self.queue.popleft()
            place(request, worker)
            placed += 1
        return placed
