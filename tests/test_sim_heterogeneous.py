"""The simulator with one PerfModel per decode worker (a heterogeneous pool)."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
from test_sim import PERF, reference, schedule

from aladdin.errors import AladdinError
from aladdin.plugin.core.perfmodel import DecodeModel, KVModel
from aladdin.plugin.sim.simulator import SimConfig, simulate

# Twice as fast per iteration, a larger KV cache, a faster front end, fewer seats.
FAST = replace(PERF, decode=DecodeModel(a=0.75e-4, b=1.7e-7, c=0.006), prefill=replace(PERF.prefill, a=2.5e-5, c=0.010),
               kv=KVModel(16, 16 * 8000), max_num_seqs=32, meta={"path": "fast.json", "gpus_per_worker": 2})
SLOW = replace(PERF, meta={"path": "slow.json", "gpus_per_worker": 1})


def workload(n: int, seed: int = 0, rate: float = 20.0) -> list[tuple[float, int, int]]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append((round(t, 6), rng.randint(10, 800), rng.randint(1, 300)))
    return out


def test_one_model_given_per_worker_is_the_single_model_run():
    requests = schedule(workload(300))
    config = SimConfig(num_workers=3, atgt_slo=0.05, ttft_slo=1.0)  # GPU defaults: prefix caching, async scheduling
    single = simulate(requests, PERF, config)
    pool = simulate(requests, [PERF] * 3, config)
    assert np.array_equal(single.token_times, pool.token_times)
    assert np.array_equal(single.worker, pool.worker)
    assert np.array_equal(single.preemptions, pool.preemptions)
    assert not pool.heterogeneous and "workers" not in pool.summary(1.0, 0.05)


def test_each_worker_runs_its_own_model_exactly_as_a_lone_worker_of_that_model():
    """Round robin sends r0, r2, ... to w0 (slow) and r1, r3, ... to w1 (fast); each worker's
    token times are the one-worker reference's for its own model and requests."""
    requests = workload(40, seed=1, rate=8.0)
    result = simulate(schedule(requests), [SLOW, FAST],
                      SimConfig(num_workers=2, policy="rr", prefix_caching=False, async_scheduling=False))
    assert result.worker.tolist() == [i % 2 for i in range(len(requests))]
    for index, perf in enumerate((SLOW, FAST)):
        expected = reference(perf, requests[index::2])
        for k, i in enumerate(range(index, len(requests), 2)):
            assert result.times_of(i).tolist() == pytest.approx(expected[k], rel=1e-9, abs=1e-9)


def test_the_fast_worker_finishes_its_requests_sooner():
    requests = workload(400, seed=2, rate=30.0)
    result = simulate(schedule(requests), [SLOW, FAST], SimConfig(num_workers=2, policy="rr"))
    latency = result.last_token - result.arrival
    assert latency[result.worker == 1].mean() < 0.7 * latency[result.worker == 0].mean()
    workers = result.summary(1.0, 0.05)["workers"]
    assert workers["w0"]["profile"] == "slow.json" and workers["w1"]["gpus_per_worker"] == 2
    assert workers["w0"]["requests"] + workers["w1"]["requests"] == len(requests)


def test_each_worker_has_its_own_kv_capacity():
    """Requests that overflow a 200-block worker and fit a 4000-block one: only the small one preempts."""
    small = replace(PERF, kv=KVModel(16, 16 * 200))
    requests = [(0.01 * i, 300, 400) for i in range(40)]
    result = simulate(schedule(requests), [small, PERF], SimConfig(num_workers=2, policy="rr", oracle_lengths=True))
    assert result.preemptions[result.worker == 0].sum() > 0
    assert result.preemptions[result.worker == 1].sum() == 0


def test_a_heterogeneous_pool_takes_one_model_per_worker_and_requests_every_worker_fits():
    with pytest.raises(AladdinError, match="2 worker models for 3 decode workers"):
        simulate(schedule([(0.0, 10, 5)]), [SLOW, FAST], SimConfig(num_workers=3))
    tiny = replace(PERF, kv=KVModel(16, 16 * 10))
    with pytest.raises(AladdinError, match="more than a worker's 160"):
        simulate(schedule([(0.0, 100, 100)]), [PERF, tiny], SimConfig(num_workers=2))
