"""Placement policies on hand-built cluster states, the rebalancer and the central queue."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from aladdin.errors import AladdinError
from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel
from aladdin.plugin.core.placement import (
    EMPTY,
    POLICIES,
    AladdinPolicy,
    CentralQueue,
    Rebalancer,
    RequestSet,
    RequestView,
    WorkerView,
    make_policy,
)
from aladdin.plugin.core.predictor import LengthPredictor, PredictorConfig

DECODE = DecodeModel(a=1e-4, b=1e-6, c=0.01)
PERF = PerfModel(PrefillModel(1e-4, 0.0, 0.01), DECODE, KVModel(16, 1600), max_num_seqs=8, max_batched_tokens=512)
NEW = RequestView("new", prompt_tokens=100, predicted_output_tokens=100, arrival_time=5.0)


def requests(*rows: tuple[int, int, int], slo: float = math.inf, first_token: float = math.nan) -> RequestSet:
    """(prompt, generated, predicted output) rows as a request set."""
    return RequestSet.of([
        RequestView(f"q{i}", p, pred, g, atgt_slo=slo, first_token_time=first_token if g else math.nan)
        for i, (p, g, pred) in enumerate(rows)
    ])


def worker(worker_id: str, running: RequestSet = EMPTY, waiting: RequestSet = EMPTY, perf=PERF, **kw):
    return WorkerView(worker_id, perf, running, waiting, **kw)


def fits(policy: AladdinPolicy, request: RequestView, workers: list[WorkerView], now: float = 5.0) -> dict:
    return {fit.worker: fit for fit in policy.evaluate(request, workers, now)}


# --- baselines --------------------------------------------------------------------------


def test_jsq_picks_the_fewest_outstanding_and_breaks_ties_by_id():
    cluster = [
        worker("w2", requests((10, 0, 5))),
        worker("w0", requests((10, 0, 5), (10, 0, 5))),
        worker("w1", waiting=requests((10, 0, 5))),
    ]
    assert make_policy("jsq").choose(NEW, cluster, 0.0) == "w1"


def test_po2_samples_two_workers_with_its_seed_and_keeps_the_less_loaded():
    cluster = [worker(f"w{i}", requests(*[(10, 0, 5)] * i)) for i in range(6)]
    policy, draws = make_policy("po2", seed=7), random.Random(7)
    for _ in range(20):
        first, second = draws.sample(range(6), 2)
        assert policy.choose(NEW, cluster, 0.0) == f"w{min(first, second)}"  # w<i> holds i requests
    assert make_policy("po2").choose(NEW, cluster[:1], 0.0) == "w0"


def test_rr_cycles_through_the_workers():
    cluster = [worker("a"), worker("b"), worker("c")]
    policy = make_policy("rr")
    assert [policy.choose(NEW, cluster, 0.0) for _ in range(5)] == ["a", "b", "c", "a", "b"]


def test_least_kv_uses_reported_kv_or_the_running_contexts():
    cluster = [
        worker("w0", requests((300, 10, 50)), kv_tokens_held=320),
        worker("w1", requests((10, 0, 50)), kv_tokens_held=400),
        worker("w2", requests((100, 20, 50))),  # 120 tokens -> 128 block-rounded
    ]
    assert make_policy("least-kv").choose(NEW, cluster, 0.0) == "w2"
    assert make_policy("least-kv").choose(NEW, cluster[:2], 0.0) == "w0"


def test_registry_names_errors_and_cli_choices():
    from aladdin.plugin.sim.cli import POLICY_NAMES

    assert tuple(POLICIES) == POLICY_NAMES
    assert {make_policy(name).name for name in POLICIES} == set(POLICIES)
    with pytest.raises(AladdinError, match="unknown placement policy 'fifo'"):
        make_policy("fifo")
    with pytest.raises(AladdinError, match="does not take options"):
        make_policy("jsq", seed=1)
    with pytest.raises(AladdinError, match="headroom"):
        make_policy("aladdin", headroom=1.5)


# --- aladdin ----------------------------------------------------------------------------


def test_aladdin_picks_the_tightest_feasible_worker():
    cluster = [
        worker("w0"),
        worker("w1", requests((200, 0, 100), (200, 0, 100))),
        worker("w2", requests((200, 0, 100), (200, 0, 100), (200, 0, 100))),
    ]
    policy = AladdinPolicy()
    by_id = fits(policy, NEW, cluster)
    assert all(fit.feasible for fit in by_id.values())
    assert by_id["w2"].fill > by_id["w1"].fill > by_id["w0"].fill
    assert policy.choose(NEW, cluster, 5.0) == "w2"
    # equal fills go to the smallest id, whatever the order
    assert policy.choose(NEW, [worker("b"), worker("a")], 5.0) == "a"


def test_aladdin_kv_fill_is_the_models_peak_and_rejects_overflow():
    running = requests((200, 0, 50), (300, 10, 60), (150, 0, 120))
    exact = KVModel(1, 10**6).peak_tokens_held([200, 310, 150, 100], [50, 50, 120, 100])
    fit = fits(AladdinPolicy(), NEW, [worker("w0", running)])["w0"]
    assert fit.kv_fill * PERF.kv.capacity_tokens == pytest.approx(exact)
    # Unrounded the peak just fits (6 * 242 + 146 = 1598 tokens); in 16-token blocks it does not.
    crowded = requests(*[(193, 0, 50)] * 6)
    small = RequestView("small", 97, 50)
    assert PERF.kv.peak_tokens_held([193] * 6 + [97], [50] * 7) > PERF.kv.capacity_tokens
    cluster = [worker("w0"), worker("w1", crowded)]
    by_id = fits(AladdinPolicy(), small, cluster)
    assert by_id["w1"].violates == "kv" and by_id["w1"].kv_fill == pytest.approx(1598 / 1600)
    assert AladdinPolicy().choose(small, cluster, 5.0) == "w0"


def test_aladdin_predicted_atgt_matches_the_decode_model():
    no_stall = PerfModel(PrefillModel(0.0, 0.0, 0.005), DECODE, KVModel(16, 16000), max_num_seqs=64, max_batched_tokens=512)
    running = requests((200, 0, 50), (300, 0, 60), (150, 0, 120), slo=0.02)
    request = RequestView("new", 100, 80, atgt_slo=0.02)
    fit = fits(AladdinPolicy(), request, [worker("w0", running, perf=no_stall)])["w0"]
    atgt = DECODE.predicted_atgt([200, 300, 150, 100], [50, 60, 120, 80])
    assert fit.atgt_fill * 0.02 == pytest.approx(atgt.max(), rel=1e-12)


def test_forecast_charges_prefills_in_flight_to_the_other_running_requests():
    from aladdin.plugin.core.placement import build_forecast, prefill_stall

    # q0 decodes (10 tokens out, first at t=4.9); q1 was admitted and its prefill is in flight.
    running = RequestSet.of([
        RequestView("q0", 200, 50, 10, atgt_slo=0.02, first_token_time=4.9),
        RequestView("q1", 300, 60, 0, atgt_slo=0.02),
    ])
    forecast = build_forecast(worker("w0", running, observed_at=5.0), now=5.0)
    stall = float(prefill_stall(PERF, [300])[0])
    assert stall > 0
    decode_time = forecast.table[0, 40]  # q0's 40 remaining steps, q1 decoding beside it
    assert forecast.atgt_ratio[0] * (49 * 0.02) == pytest.approx(0.1 + decode_time + stall, rel=1e-12)
    # q1's own prefill is before its first token: not part of its ATGT
    assert forecast.atgt_ratio[1] * (60 * 0.02) == pytest.approx(forecast.table[0, 60], rel=1e-12)


def test_aladdin_rejects_atgt_and_ttft_violations_and_counts_the_past():
    roomy = PerfModel(PERF.prefill, DECODE, KVModel(16, 16000), max_num_seqs=8, max_batched_tokens=512)
    cluster = [
        worker("w0", perf=roomy),
        worker("w1", requests(*[(200, 0, 100)] * 6, slo=0.0122), perf=roomy),  # ATGT 12.1 ms; 12.45 with one more
        worker("w2", waiting=requests((500, 0, 50), (500, 0, 50), (500, 0, 50)), perf=roomy),  # 1500 tokens queued
    ]
    request = RequestView("new", 100, 100, arrival_time=5.0, ttft_slo=0.1, atgt_slo=0.0122)
    by_id = fits(AladdinPolicy(), request, cluster)
    assert by_id["w1"].violates == "atgt" and by_id["w2"].violates == "ttft" and by_id["w0"].feasible
    assert by_id["w2"].ttft > 0.1 > by_id["w0"].ttft
    assert AladdinPolicy().choose(request, cluster, 5.0) == "w0"
    # A request that already streamed slowly has less ATGT budget left.
    fresh = worker("w3", requests((200, 11, 100), slo=0.02, first_token=4.9))
    slow = worker("w3", requests((200, 11, 100), slo=0.02, first_token=3.0))  # 10 tokens in 2 s already
    assert fits(AladdinPolicy(), request, [fresh])["w3"].feasible
    assert fits(AladdinPolicy(), request, [slow])["w3"].violates == "atgt"


def test_aladdin_returns_none_when_nothing_fits_and_respects_max_num_seqs():
    full = worker("w0", requests(*[(10, 0, 10)] * 8))
    assert fits(AladdinPolicy(), NEW, [full])["w0"].violates == "seqs"
    crowded = worker("w1", requests(*[(200, 0, 50)] * 6))
    assert fits(AladdinPolicy(), NEW, [crowded])["w1"].violates == "kv"
    assert AladdinPolicy().choose(NEW, [full, crowded], 5.0) is None


def test_aladdin_drops_constraints_no_worker_could_ever_meet():
    late = RequestView("late", 100, 100, arrival_time=0.0, ttft_slo=1.0, atgt_slo=0.001)
    busy = worker("w0", requests((200, 0, 100)))
    fit = fits(AladdinPolicy(), late, [busy], now=5.0)["w0"]  # waited 5 s > TTFT SLO; ATGT below one request's pace
    assert fit.feasible and fit.ttft > 5.0
    huge = RequestView("huge", 1000, 1000)  # 1999 tokens never fit 1600
    assert AladdinPolicy().choose(huge, [worker("w0")], 0.0) == "w0"


def test_aladdin_headroom_keeps_budget_free():
    cluster = [worker("w0", requests(*[(200, 0, 50)] * 4))]  # peak with the new one: 1145 / 1600 tokens
    assert AladdinPolicy().choose(NEW, cluster, 5.0) == "w0"
    assert AladdinPolicy(headroom=0.25).choose(NEW, cluster, 5.0) == "w0"
    assert AladdinPolicy(headroom=0.3).choose(NEW, cluster, 5.0) is None
    # a request that alone exceeds the kept budget still gets an idle worker (never starves)
    big = RequestView("big", 700, 500, atgt_slo=0.012)  # 1199 tokens > 0.7 * 1600; ATGT 11.05 ms > 0.7 * 12
    assert AladdinPolicy(headroom=0.3).choose(big, [worker("w0")], 0.0) == "w0"


def test_aladdin_caches_by_version_and_recomputes_unversioned_views():
    policy = AladdinPolicy()
    empty = worker("w0", version=1)
    loaded = worker("w0", requests(*[(200, 0, 50)] * 4), version=1)  # same version: treated as unchanged
    first = fits(policy, NEW, [empty])["w0"].kv_fill
    assert fits(policy, NEW, [loaded])["w0"].kv_fill == first
    assert fits(policy, NEW, [worker("w0", requests(*[(200, 0, 50)] * 4), version=2)])["w0"].kv_fill > first
    assert fits(policy, NEW, [worker("w0")])["w0"].kv_fill == first  # version None: computed afresh


def test_aladdin_evaluates_many_workers_like_one_at_a_time():
    rng = np.random.default_rng(5)
    cluster = []
    for i in range(12):
        n = int(rng.integers(0, 7))
        rows = [(int(rng.integers(10, 300)), int(rng.integers(0, 40)), int(rng.integers(41, 200))) for _ in range(n)]
        waiting = requests(*rows[:1]) if i % 3 == 0 else requests()
        cluster.append(worker(f"w{i:02d}", requests(*rows[1:], slo=0.02, first_token=4.5), waiting, version=i))
    request = RequestView("new", 120, 90, arrival_time=4.8, ttft_slo=0.5, atgt_slo=0.02)
    together = AladdinPolicy().evaluate(request, cluster, 5.0)
    for view, fit in zip(cluster, together):
        alone = AladdinPolicy().evaluate(request, [view], 5.0)[0]
        assert (alone.kv_fill, alone.atgt_fill, alone.ttft) == pytest.approx((fit.kv_fill, fit.atgt_fill, fit.ttft))
        assert alone.violates == fit.violates
    feasible = [fit for fit in together if fit.feasible]
    assert feasible, "the scenario should leave some worker feasible"
    best = max(feasible, key=lambda fit: (fit.fill, [-ord(c) for c in fit.worker]))
    assert AladdinPolicy().choose(request, cluster, 5.0) == best.worker


# --- rebalancing ------------------------------------------------------------------------


def test_rebalancer_repredicts_overruns_and_tracks_each_workers_error():
    predictor = LengthPredictor(PredictorConfig(min_samples=2))
    for output in (50, 100, 150, 400):
        predictor.observe(64, output)
    rebalancer = Rebalancer(predictor)
    # 120 generated: the past lengths above 120 are 150 and 400, mean 275 -> 155 more
    assert rebalancer.overrun("w1", 64, 120) == 275
    rebalancer.finished("w1", 64, 300, 175)
    rebalancer.finished("w1", 64, 100, 175)
    stats = rebalancer.summary()["w1"]
    assert stats["repredictions"] == 1 and stats["finished"] == 2
    assert stats["mean_error"] == pytest.approx((125 - 75) / 2) and stats["mean_abs_error"] == pytest.approx(100)
    assert predictor.observed == 6


class _AcceptFirst:
    name = "stub"

    def __init__(self, accept: int):
        self.accept = accept
        self.seen: list[str] = []

    def choose(self, request, workers, now):
        self.seen.append(request.id)
        if len(self.seen) > self.accept:
            return None
        return workers[0].id


def test_central_queue_retries_in_arrival_order_and_stops_at_the_first_refusal():
    policy = _AcceptFirst(accept=2)
    queue = CentralQueue(policy)
    for i in range(4):
        queue.push(RequestView(f"r{i}", 10, 10))
    placed = []
    refreshed = queue.retry(lambda: [worker("w0")], lambda r, w: placed.append((r.id, w)), 1.0,
                            refresh=lambda r: RequestView(r.id, r.prompt_tokens, 99))
    assert refreshed == 2 and placed == [("r0", "w0"), ("r1", "w0")]
    assert policy.seen == ["r0", "r1", "r2"] and len(queue) == 2 and queue.peak == 4
    assert queue.queue[0].predicted_output_tokens == 99  # the refreshed request stays queued
