"""Open-loop arrival schedules: when each request is sent, as offsets from the common start.

Every function returns a float64 array of ``n`` non-decreasing offsets in seconds with the
first request at 0.0. The dispatcher sleeps to ``start + offset`` (absolute targets), so
lateness never accumulates. The random processes are not rescaled to an exact total duration:
a Poisson schedule stays a true Poisson process.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from aladdin.errors import AladdinError
from aladdin.loadgen.workload import ARRIVAL_KINDS


def _check_count(n: int) -> None:
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
        raise AladdinError(f"the number of requests must be a positive integer, got {n!r}")


def _check_positive(name: str, value: float) -> None:
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise AladdinError(f"{name} must be a positive number, got {value!r}")


def _offsets(gaps: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(gaps)])


def poisson(rate: float, n: int, seed: int = 0) -> np.ndarray:
    """A Poisson process of ``rate`` requests/s: exponential gaps with mean 1/rate."""
    _check_positive("rate", rate)
    _check_count(n)
    return _offsets(np.random.default_rng(seed).exponential(1.0 / rate, size=n - 1))


def gamma(rate: float, cv: float, n: int, seed: int = 0) -> np.ndarray:
    """Gamma gaps of mean 1/rate and coefficient of variation ``cv`` (cv > 1 is burstier; 1 is Poisson).

    Shape k = 1/cv^2, scale = 1/(rate*k).
    """
    _check_positive("rate", rate)
    _check_positive("cv", cv)
    _check_count(n)
    shape = 1.0 / cv**2
    return _offsets(np.random.default_rng(seed).gamma(shape, 1.0 / (rate * shape), size=n - 1))


def constant(rate: float, n: int) -> np.ndarray:
    """Evenly spaced requests, 1/rate apart."""
    _check_positive("rate", rate)
    _check_count(n)
    return np.arange(n, dtype=np.float64) / rate


def from_trace(arrivals: Sequence[float | None]) -> np.ndarray:
    """The timestamps of a loaded trace (``RequestSpec.arrival``), shifted so the first is 0."""
    if len(arrivals) == 0:
        raise AladdinError("the trace has no requests")
    if any(a is None for a in arrivals):
        raise AladdinError("these requests have no timestamps; use poisson, gamma or constant arrivals")
    offsets = np.asarray(arrivals, dtype=np.float64)
    if not np.isfinite(offsets).all():
        raise AladdinError("trace timestamps must be finite numbers")
    if (np.diff(offsets) < 0).any():
        raise AladdinError("trace timestamps must be sorted by arrival")
    return offsets - offsets[0]


def make_offsets(
    kind: str,
    n: int,
    rate: float | None = None,
    cv: float | None = None,
    seed: int = 0,
    trace_arrivals: Sequence[float | None] | None = None,
) -> np.ndarray:
    """The schedule the CLI asked for: ``kind`` is one of ARRIVAL_KINDS.

    For ``trace``, the first ``n`` of ``trace_arrivals`` are used.
    """
    _check_count(n)
    if kind not in ARRIVAL_KINDS:
        raise AladdinError(f"unknown arrival kind {kind!r}; choose one of {', '.join(ARRIVAL_KINDS)}")
    if kind == "trace":
        if trace_arrivals is None:
            raise AladdinError("trace arrivals need a trace file")
        if len(trace_arrivals) < n:
            raise AladdinError(f"the trace has {len(trace_arrivals)} requests, fewer than the {n} asked for")
        return from_trace(list(trace_arrivals)[:n])
    if rate is None:
        raise AladdinError(f"{kind} arrivals need a rate (requests per second)")
    if kind == "poisson":
        return poisson(rate, n, seed)
    if kind == "constant":
        return constant(rate, n)
    if cv is None:
        raise AladdinError("gamma arrivals need a cv (coefficient of variation of the gaps)")
    return gamma(rate, cv, n, seed)
