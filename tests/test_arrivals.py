"""Arrival schedules: distributions, determinism, validation, and trace timestamps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from aladdin.errors import AladdinError
from aladdin.loadgen.arrivals import constant, from_trace, gamma, make_offsets, poisson


def check_schedule(offsets: np.ndarray, n: int) -> None:
    assert offsets.dtype == np.float64 and offsets.shape == (n,)
    assert offsets[0] == 0.0
    assert (np.diff(offsets) >= 0).all()


def test_poisson_gaps_are_exponential_with_the_rate():
    rate = 7.5
    offsets = poisson(rate, 5000, seed=11)
    check_schedule(offsets, 5000)
    result = stats.kstest(np.diff(offsets), "expon", args=(0, 1 / rate))
    assert result.pvalue > 0.01
    assert np.diff(offsets).mean() == pytest.approx(1 / rate, rel=0.05)


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0])
def test_gamma_matches_rate_and_cv(cv):
    offsets = gamma(10.0, cv, 20_000, seed=4)
    check_schedule(offsets, 20_000)
    gaps = np.diff(offsets)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)
    assert gaps.mean() == pytest.approx(0.1, rel=0.05 * cv)


def test_gamma_with_cv_one_is_poisson():
    gaps = np.diff(gamma(3.0, 1.0, 5000, seed=2))
    assert stats.kstest(gaps, "expon", args=(0, 1 / 3.0)).pvalue > 0.01


def test_constant_is_exact():
    offsets = constant(4.0, 5)
    check_schedule(offsets, 5)
    assert offsets.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert constant(2.0, 1).tolist() == [0.0]


def test_seeds_are_reproducible():
    assert (poisson(5.0, 100, seed=3) == poisson(5.0, 100, seed=3)).all()
    assert (poisson(5.0, 100, seed=3) != poisson(5.0, 100, seed=4)).any()
    assert (gamma(5.0, 2.0, 100, seed=3) == gamma(5.0, 2.0, 100, seed=3)).all()
    assert (make_offsets("gamma", 100, rate=5.0, cv=2.0, seed=3) == gamma(5.0, 2.0, 100, seed=3)).all()


def test_from_trace_shifts_and_validates():
    assert from_trace([2.0, 2.5, 4.0]).tolist() == [0.0, 0.5, 2.0]
    assert make_offsets("trace", 2, trace_arrivals=[0.0, 0.125, 1.25]).tolist() == [0.0, 0.125]
    with pytest.raises(AladdinError, match="no timestamps"):
        from_trace([None, None])  # ShareGPT / synthetic requests
    with pytest.raises(AladdinError, match="sorted"):
        from_trace([0.0, 2.0, 1.0])
    with pytest.raises(AladdinError, match="no requests"):
        from_trace([])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: poisson(0.0, 10, seed=0), "rate must be a positive number"),
        (lambda: poisson(-1.0, 10, seed=0), "rate must be a positive number"),
        (lambda: poisson(float("inf"), 10, seed=0), "rate must be a positive number"),
        (lambda: poisson(1.0, 0, seed=0), "positive integer"),
        (lambda: gamma(1.0, 0.0, 10, seed=0), "cv must be a positive number"),
        (lambda: gamma(1.0, -2.0, 10, seed=0), "cv must be a positive number"),
        (lambda: constant(0, 10), "rate must be a positive number"),
        (lambda: constant(1.0, -3), "positive integer"),
        (lambda: make_offsets("burst", 10, rate=1.0), "unknown arrival kind 'burst'"),
        (lambda: make_offsets("poisson", 10), "need a rate"),
        (lambda: make_offsets("gamma", 10, rate=1.0), "need a cv"),
        (lambda: make_offsets("trace", 10), "need a trace file"),
        (lambda: make_offsets("trace", 3, trace_arrivals=[0.0, 1.0]), "has 2 requests, fewer than the 3"),
        (lambda: make_offsets("constant", 0, rate=1.0), "positive integer"),
    ],
)
def test_bad_parameters_raise(call, message):
    with pytest.raises(AladdinError, match=message):
        call()


def test_make_offsets_dispatches():
    assert (make_offsets("poisson", 50, rate=2.0, seed=9) == poisson(2.0, 50, seed=9)).all()
    assert make_offsets("constant", 3, rate=2.0).tolist() == [0.0, 0.5, 1.0]
    assert poisson(3.0, 1, seed=0).tolist() == [0.0]
