"""The placement policy as a pipeline: filters -> weighted scorers -> picker (as in llm-d).

A decision evaluates one request against every worker of a :class:`WorkerPool` at once:
:class:`Evaluation` computes, for the candidate workers at once (core.kernels) and only when a
filter or scorer first asks, what the models predict (TTFT, peak KV, each ATGT). Filters narrow the
candidates in order (cheap ones first, so the per-request ATGT pass only runs on workers that
passed the rest); scorers rank the survivors; the picker takes the highest or lowest score,
ties broken by worker id or a seeded random draw.

A filter that only protects the new request's own SLO is dropped for that request when even
an idle worker could not meet it (no later moment would). A *soft* filter (TTFT) never sends a
request to the central queue: when no candidate passes it, the candidates before it are
ranked by its own measure (least predicted TTFT), because waiting in the queue never makes
a first token earlier. Named configurations live in core.policies.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from aladdin.plugin.core import kernels
from aladdin.plugin.core.request import Request
from aladdin.plugin.core.worker import WorkerPool


@dataclass(frozen=True)
class Fit:
    """How a request would fit on one worker (diagnostics and tests; ``Pipeline.evaluate``).

    ``kv_fill``: predicted peak KV with the request (not block-rounded) / capacity;
    ``atgt_fill``: the largest predicted ATGT / SLO over the residents still on pace and the
    new request; ``ttft``: the new request's predicted TTFT from its arrival; ``violates``: the
    names of the filters it fails.
    """

    worker: str
    kv_fill: float
    atgt_fill: float
    ttft: float
    violates: frozenset[str]

    @property
    def feasible(self) -> bool:
        return not self.violates

    @property
    def fill(self) -> float:
        return max(self.kv_fill, self.atgt_fill)


class Evaluation:
    """What the models predict for one request on the pool's workers, computed on demand.

    Quantities are full-length arrays over workers, filled at the rows computed so far.
    ``frontend_paid``: the request already went through the engine's front end before the
    scheduler saw it (the simulator delays arrivals by it); a router's request has not, so
    its wait so far adds to the front-end time instead of covering it.
    """

    def __init__(self, pool: WorkerPool, request: Request, now: float, frontend_paid: bool, forecasts: bool = True):
        pool.sync(forecasts)
        self.pool = pool
        self.request = request
        self.now = now
        generated = request.generated_tokens
        self.context = request.prompt_tokens + generated
        self.steps = max(request.predicted_output_tokens - generated, 1)
        self.generated = generated
        self.delta = pool.steps_since_forecast()
        self.frontend_paid = frontend_paid
        w = len(pool)
        self.kv_fill = np.zeros(w)
        self.kv_done = np.zeros(w, dtype=bool)
        self.atgt_fill = np.zeros(w)
        self._ttft: np.ndarray | None = None
        self._ttft_alone: np.ndarray | None = None
        self._own_work: np.ndarray | None = None

    def s(self, name: str) -> np.ndarray:
        return self.pool.scalar(name)

    # ------------------------------------------------------------------ TTFT

    @property
    def own_prefill_work(self) -> np.ndarray:
        """Per worker, the engine time the request's prefill and admission add (kernels._prefill_stall)."""
        if self._own_work is None:
            c = float(self.context)
            self._own_work = self.s("pre_a") * c + self.s("pre_q") * c * c + self.s("admit")
        return self._own_work

    def ttft(self) -> tuple[np.ndarray, np.ndarray]:
        """(predicted TTFT, TTFT alone on an idle worker) on every worker, from the request's arrival."""
        if self._ttft is None:
            self._ttft, self._ttft_alone = kernels.ttft(
                self.pool.scalars, self.pool.step, max(self.now - self.request.arrival_time, 0.0), self.frontend_paid,
                float(self.context), float(self.context - min(self.request.computed_tokens, self.context)),
            )
        return self._ttft, self._ttft_alone

    # ------------------------------------------------------------------ KV

    def kv_check(self, rows: np.ndarray, share: float | np.ndarray) -> np.ndarray:
        """Per row, whether the predicted peak KV with the request stays within ``share`` of the
        cache (one for all rows, or one per row; kernels.KV_FITS / KV_OVER / KV_CLOSE: the
        bounds straddle, see ``exact_peak``)."""
        pool = self.pool
        shares = np.ascontiguousarray(np.broadcast_to(np.asarray(share, dtype=np.float64), rows.shape))
        fill, verdict = kernels.kv_check(rows, self.delta, pool.scalars, pool.steps, pool.tables, float(self.context),
                                         self.steps, shares)
        self.kv_fill[rows] = fill
        self.kv_done[rows] = True
        return verdict

    def remaining_spread(self, rows: np.ndarray) -> np.ndarray:
        """Per row: the root sum of squares of the predicted remaining tokens of the residents
        still growing and of the request, the spread of the worker's total remaining length
        when each length's error is proportional to it and independent (in tokens per unit CV)."""
        pool = self.pool
        d = self.delta[rows][:, None]
        remaining = pool.ints[kernels.REMAINING][rows] - d
        alive = pool.ints[kernels.LIVE][rows].astype(bool) & (remaining > 0)
        squares = np.where(alive, remaining.astype(np.float64) ** 2, 0.0).sum(axis=1)
        return np.sqrt(squares + float(self.steps) ** 2)

    def exact_peak(self, row: int) -> int:
        """Block-rounded peak KV of worker ``row`` with the request (where the bounds straddle)."""
        pool = self.pool
        d = int(self.delta[row])
        remaining = pool.ints[kernels.REMAINING, row]
        alive = pool.ints[kernels.LIVE, row].astype(bool) & (remaining > d)
        return pool.workers[row].perf.kv.peak_tokens_held(
            np.append(pool.ints[kernels.CONTEXT, row, alive] + d, self.context), np.append(remaining[alive] - d, self.steps)
        )

    # ------------------------------------------------------------------ ATGT

    def own_atgt(self, rows: np.ndarray, budget: float) -> np.ndarray:
        """Which ``rows`` keep the request's predicted ATGT within ``budget`` x its SLO (its fill
        is recorded); a request that already streamed (split-phase) counts that time too."""
        pool, p = self.pool, self.steps
        if self.request.started:
            past, tokens = max(self.now - self.request.first_token_time, 0.0), p + self.generated - 1
        else:
            past, tokens = 0.0, p
        fill, keep = kernels.own_atgt(rows, self.delta, pool.scalars, pool.steps, float(self.context), p, past,
                                      float(tokens), self.request.atgt_slo, budget)
        self.atgt_fill[rows] = np.maximum(self.atgt_fill[rows], fill)
        return keep

    def resident_atgt(self, rows: np.ndarray) -> np.ndarray:
        """Largest predicted ATGT / SLO, with the request added, over the residents of ``rows``
        predicted to meet their SLO without it.

        A resident already predicted to miss is left out: holding new requests back cannot save
        it, and counting it would close its worker to everyone until it leaves. One within the
        headroom but not over its SLO still counts: the headroom protects it. The request adds
        a + b * (context + k) to each step k it shares with a resident, and its prefill once.
        """
        pool = self.pool
        stall = np.zeros(rows.size) if self.request.started else self.own_prefill_work[rows]
        return kernels.resident_atgt(
            rows, self.delta, pool.observed, pool.slots_used, pool.scalars, pool.steps, pool.ints, pool.floats,
            float(self.context), self.steps, stall,
        )


# ---------------------------------------------------------------------------------------
# Filters: each keeps the rows (worker indices) that pass.


class Filter:
    """``own_slo``: it only protects the new request's own SLO (skipped once that is lost);
    ``soft``: see the module docstring (such a filter has a ``fallback``)."""

    name = ""
    own_slo = False
    soft = False

    def __call__(self, ev: Evaluation, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclass
class MaxSeqs(Filter):
    """Room for one more sequence (vLLM's ``max_num_seqs``)."""

    name = "seqs"

    def __call__(self, ev: Evaluation, rows: np.ndarray) -> np.ndarray:
        return rows[ev.s("outstanding")[rows] + 1 <= ev.s("max_num_seqs")[rows]]


@dataclass
class KVPeak(Filter):
    """Predicted peak KV, every request growing to its predicted length, within (1 - headroom)
    of the cache. Bounds first; the exact block-rounded peak only where they straddle."""

    headroom: float = 0.0
    name = "kv"

    def __call__(self, ev: Evaluation, rows: np.ndarray) -> np.ndarray:
        share = 1.0 - self.headroom
        verdict = ev.kv_check(rows, share)
        keep = verdict == kernels.KV_FITS
        for i in np.flatnonzero(verdict == kernels.KV_CLOSE).tolist():
            row = int(rows[i])
            keep[i] = ev.exact_peak(row) <= share * ev.pool.workers[row].perf.kv.capacity_tokens
        return rows[keep]


@dataclass
class KVChance(Filter):
    """Chance-constrained KV: the predicted peak plus z standard deviations of the worker's
    remaining length within the cache, z the normal quantile of 1 - ``violation``. Each
    resident's (and the request's) remaining length errs by ``cv`` times itself,
    independently, so the margin grows with the root of the residents' count, not with it as
    a fixed headroom does: a large cache packs closer, and the chance that a worker runs out of
    KV (and preempts) stays near ``violation`` instead of the ~50% of a mean reservation. The
    policy's headroom is left to its ATGT filters."""

    violation: float
    cv: float
    name = "kv-chance"

    def __post_init__(self) -> None:
        self.z = statistics.NormalDist().inv_cdf(1.0 - self.violation)

    def __call__(self, ev: Evaluation, rows: np.ndarray) -> np.ndarray:
        capacity = ev.s("capacity")[rows]
        limits = 1.0 - self.z * self.cv * ev.remaining_spread(rows) / capacity
        verdict = ev.kv_check(rows, limits)
        keep = verdict == kernels.KV_FITS
        for i in np.flatnonzero(verdict == kernels.KV_CLOSE).tolist():
            keep[i] = ev.exact_peak(int(rows[i])) <= limits[i] * capacity[i]
        return rows[keep]


@dataclass
class OwnATGT(Filter):
    """The new request's predicted ATGT within (1 - headroom) of its SLO."""

    headroom: float = 0.0
    name = "atgt-own"
    own_slo = True

    def __call__(self, ev: Evaluation, rows: np.ndarray) -> np.ndarray:
        if not math.isfinite(ev.request.atgt_slo):
            return rows
        return rows[ev.own_atgt(rows, 1.0 - self.headroom)]


@dataclass
class ResidentATGT(Filter):
    """Every resident on pace stays within (1 - headroom) of its ATGT SLO with the request added."""

    headroom: float = 0.0
    name = "atgt"

    def __call__(self, ev: Evaluation, rows: np.ndarray) -> np.ndarray:
        budget = 1.0 - self.headroom
        worst = ev.resident_atgt(rows)
        ev.atgt_fill[rows] = np.maximum(ev.atgt_fill[rows], worst)
        return rows[worst <= budget]


@dataclass
class TTFT(Filter):
    """The new request's predicted TTFT within its SLO (soft: see the module docstring)."""

    name = "ttft"
    own_slo = True
    soft = True

    def __call__(self, ev: Evaluation, rows: np.ndarray) -> np.ndarray:
        slo = ev.request.ttft_slo
        if not math.isfinite(slo):
            return rows
        ttft, alone = ev.ttft()
        return rows[(ttft[rows] <= slo) | (alone[rows] > slo)]

    def fallback(self, ev: Evaluation, rows: np.ndarray) -> np.ndarray:
        """The rows with the least predicted TTFT."""
        ttft = ev.ttft()[0][rows]
        return rows[ttft == ttft.min()]


class Available(Filter):
    """Workers in the pool (up: healthy, or in the simulator neither starting nor draining) and
    not excluded for this request (it was handed back or failed there): a driver's filter placed
    before the policy's own (the router's, the autoscaling simulator's)."""

    name = "available"

    def __init__(self, workers: int):
        self.up = np.ones(workers, dtype=bool)
        self.excluded: dict[str, list[int]] = {}

    def __call__(self, ev: Evaluation, rows: np.ndarray) -> np.ndarray:
        keep = self.up[rows]
        excluded = self.excluded.get(ev.request.id)
        if excluded:
            keep = keep & ~np.isin(rows, excluded)
        return rows[keep]


@dataclass
class RandomSubset(Filter):
    """``size`` distinct workers drawn at random (seeded): power-of-k choices."""

    size: int = 2
    seed: int = 0
    name = "random"
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def __call__(self, ev: Evaluation, rows: np.ndarray) -> np.ndarray:
        if rows.size <= self.size:
            return rows
        return rows[self._random.sample(range(rows.size), self.size)]


# ---------------------------------------------------------------------------------------
# Scorers: a value per candidate row (the picker takes the highest or lowest weighted sum).


class Fill:
    """Fill in the binding dimension: max(peak KV / capacity, worst ATGT / SLO)."""

    name = "fill"

    def __call__(self, ev: Evaluation, rows: np.ndarray) -> np.ndarray:
        missing = rows[~ev.kv_done[rows]]
        if missing.size:  # no KV filter ran on them
            ev.kv_check(missing, 1.0)
        return np.maximum(ev.kv_fill[rows], ev.atgt_fill[rows])


class Outstanding:
    """Requests on the worker, running or waiting (join the shortest queue)."""

    name = "outstanding"

    def __call__(self, ev: Evaluation, rows: np.ndarray) -> np.ndarray:
        return ev.s("outstanding")[rows]


class KVHeld:
    """KV tokens held now."""

    name = "kv-held"

    def __call__(self, ev: Evaluation, rows: np.ndarray) -> np.ndarray:
        return ev.s("kv_held")[rows]


class PredictedTTFT:
    """The new request's predicted TTFT."""

    name = "ttft"

    def __call__(self, ev: Evaluation, rows: np.ndarray) -> np.ndarray:
        return ev.ttft()[0][rows]


class Turn:
    """Round robin: distance from the worker whose turn it is (one turn per decision)."""

    name = "turn"

    def __init__(self) -> None:
        self._next = 0

    def __call__(self, ev: Evaluation, rows: np.ndarray) -> np.ndarray:
        turn = self._next % len(ev.pool)
        self._next += 1
        return (rows - turn) % len(ev.pool)


# ---------------------------------------------------------------------------------------
# Picker and pipeline


@dataclass
class Picker:
    """Highest (``pack``: best fit) or lowest score wins; ties by worker id or seeded random."""

    highest: bool = False
    tie: str = "id"  # or "random"
    seed: int = 0
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.tie not in ("id", "random"):
            raise ValueError(f"tie-break must be 'id' or 'random', got {self.tie!r}")
        self._random = random.Random(self.seed)

    def __call__(self, ev: Evaluation, rows: np.ndarray, scores: np.ndarray) -> int:
        best = scores.max() if self.highest else scores.min()
        tied = rows[scores == best]
        if tied.size == 1:
            return int(tied[0])
        if self.tie == "random":
            return int(tied[self._random.randrange(tied.size)])
        return int(tied[np.argmin(ev.pool.id_rank[tied])])


@dataclass
class Pipeline:
    """Filters, weighted scorers and a picker; ``choose`` answers a worker row or None (queue)."""

    name: str
    filters: Sequence = ()
    scorers: Sequence[tuple[object, float]] = ()
    picker: Picker = field(default_factory=Picker)
    uses_predictions: bool = True  # predicted lengths change its choices: keep them current

    def candidates(self, ev: Evaluation, best_effort: bool = False) -> np.ndarray:
        """Rows that pass the filters (with the soft-filter rule); ``best_effort`` skips the
        filters that only protect the request's own SLOs (its TTFT is already lost)."""
        rows = np.arange(len(ev.pool))
        for f in self.filters:
            if best_effort and f.own_slo:
                continue
            kept = f(ev, rows)
            if kept.size == 0 and f.soft and rows.size:
                return f.fallback(ev, rows)
            rows = kept
            if rows.size == 0:
                break
        return rows

    def choose(self, ev: Evaluation, best_effort: bool = False) -> int | None:
        rows = self.candidates(ev, best_effort)
        if rows.size == 0:
            return None
        if rows.size == 1 and not any(isinstance(s, Turn) for s, _ in self.scorers):
            return int(rows[0])
        scores = np.zeros(rows.size)
        for scorer, weight in self.scorers:
            scores = scores + weight * scorer(ev, rows)
        return self.picker(ev, rows, scores)

    def evaluate(self, ev: Evaluation) -> list[Fit]:
        """Every worker's fit, each filter run on every worker (no pruning)."""
        every = np.arange(len(ev.pool))
        failed = {i: set() for i in range(len(ev.pool))}
        for f in self.filters:
            if isinstance(f, RandomSubset):
                continue
            kept = set(f(ev, every).tolist())
            for i in range(len(ev.pool)):
                if i not in kept:
                    failed[i].add(f.name)
        ttft = ev.ttft()[0]
        if not ev.kv_done.all():
            ev.kv_check(every, 1.0)
        return [
            Fit(worker=w.id, kv_fill=float(ev.kv_fill[i]), atgt_fill=float(ev.atgt_fill[i]), ttft=float(ttft[i]),
                violates=frozenset(failed[i]))
            for i, w in enumerate(ev.pool.workers)
        ]
