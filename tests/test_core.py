"""The scheduler core: worker state by events, the pipeline's filters/scorers/picker, the queue
and the lifecycle, with the bugs of the old placement code each pinned by a test."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from aladdin.errors import AladdinError
from aladdin.plugin.core.lifecycle import Placement, Scheduler, SchedulerConfig, Shed
from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel
from aladdin.plugin.core.pipeline import Evaluation
from aladdin.plugin.core.policies import NAMED, POLICY_NAMES, named_policy, parse_policy
from aladdin.plugin.core.predictor import LengthPredictor, PredictorConfig
from aladdin.plugin.core.request import Request

PERF = PerfModel(
    prefill=PrefillModel(a=1e-4, q=0.0, c=0.01),
    decode=DecodeModel(a=1e-3, b=1e-6, c=0.01),
    kv=KVModel(block_size=16, capacity_tokens=16 * 64),
    max_num_seqs=4,
    max_batched_tokens=512,
)


def scheduler(policy: str = "aladdin", workers: int = 2, perf: PerfModel = PERF, headroom: float = 0.0,
              **config) -> Scheduler:
    return Scheduler([(f"w{i}", perf) for i in range(workers)], named_policy(policy, headroom).build(),
                     LengthPredictor(PredictorConfig(default_output_tokens=20)), SchedulerConfig(**config))


def decoding(s: Scheduler, worker: str, rid: str, prompt: int, predicted: int, generated: int = 1,
             now: float = 0.0, atgt_slo: float = math.inf, first_token: float | None = None) -> Request:
    """A request placed on ``worker`` and decoding, with ``generated`` tokens out."""
    request = Request(rid, prompt, now, atgt_slo=atgt_slo, predicted_output_tokens=predicted)
    request.first_prediction = predicted
    state = s.worker(worker)
    state.place(request)
    s.requests[rid] = request
    state.start_decoding(request, generated, now if first_token is None else first_token)
    return request


def test_core_imports_no_cli_web_dataframe_or_engine_modules():
    code = (
        "import sys\n"
        "import aladdin.plugin.core.lifecycle, aladdin.plugin.core.policies, aladdin.plugin.core.worker\n"
        "print(sorted(m for m in ('click', 'pandas', 'aiohttp', 'vllm', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_one_registry_of_policy_names_and_spec_parsing(tmp_path):
    assert POLICY_NAMES == tuple(NAMED) and {"aladdin", "aladdin-spread", "jsq", "po2", "rr", "least-kv"} <= set(NAMED)
    spec = parse_policy("filters=seqs,kv,atgt;score=fill:1,outstanding:0.5;pick=min;tie=random", seed=3)
    assert spec.filters == ("seqs", "kv", "atgt") and dict(spec.scores) == {"fill": 1.0, "outstanding": 0.5}
    assert spec.pick == "min" and spec.tie == "random" and spec.seed == 3 and spec.uses_predictions
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"name": "mine", "filters": ["seqs"], "score": {"outstanding": 1}}))
    assert parse_policy(str(path)).name == "mine" and not parse_policy(str(path)).uses_predictions
    for bad, message in (("nope", "unknown placement policy"), ("filters=zz;score=fill", "unknown filter"),
                         ("score=fill;pick=up", "pick must be")):
        with pytest.raises(AladdinError, match=message):
            parse_policy(bad)
    with pytest.raises(AladdinError, match="does not apply"):
        named_policy("jsq", headroom=0.5)  # used to be ignored silently


def test_baselines_pick_like_their_definitions():
    s = scheduler("jsq", workers=3)
    for rid, worker in (("a", "w1"), ("b", "w1"), ("c", "w2")):
        decoding(s, worker, rid, 10, 5)
    assert s.arrive(Request("n", 10, 0.0), 0.0) == [Placement(s.requests["n"], "w0")]
    assert s.arrive(Request("m", 10, 0.0), 0.0)[0].worker == "w0"  # tie w0/w2 -> smallest id
    rr = scheduler("rr", workers=3)
    assert [rr.arrive(Request(f"r{i}", 10, 0.0), 0.0)[0].worker for i in range(4)] == ["w0", "w1", "w2", "w0"]
    kv = scheduler("least-kv")
    kv.report_kv("w0", 512)
    kv.report_kv("w1", 256)
    assert kv.arrive(Request("k", 10, 0.0), 0.0)[0].worker == "w1"


def test_pack_takes_the_fullest_feasible_worker_and_spread_the_emptiest():
    for policy, expected in (("aladdin", "w1"), ("aladdin-spread", "w0")):
        s = scheduler(policy)
        decoding(s, "w1", "a", 200, 100)
        assert s.arrive(Request("n", 50, 0.0, predicted_output_tokens=20), 0.0)[0].worker == expected


def test_kv_filter_uses_peak_with_growth_and_queues_when_nothing_fits():
    s = scheduler(workers=1)
    decoding(s, "w0", "a", 600, 300)  # holds 601 tokens now, 899 at its end
    fit = s.evaluate(Request("n", 300, 0.0, predicted_output_tokens=100), 0.0)[0]
    assert "kv" in fit.violates and fit.kv_fill == pytest.approx((700 + 399) / 1024)  # both at step 99
    assert not s.evaluate(Request("m", 200, 0.0, predicted_output_tokens=100), 0.0)[0].violates
    assert s.arrive(Request("n", 300, 0.0, predicted_output_tokens=100), 0.0) == []
    assert len(s.queue) == 1
    # a finish is a capacity change: the queue is retried
    placed = s.finish("a", 300, 1.0)
    assert [d.request.id for d in placed] == ["n"]


def test_the_chance_constrained_kv_filter_keeps_a_margin_that_grows_with_the_root_of_the_residents():
    mean_only = scheduler(workers=1)
    chance = Scheduler([("w0", PERF)], replace(NAMED["aladdin-chance"], length_cv=1.0).build(), LengthPredictor())
    tight = Scheduler([("w0", PERF)], replace(NAMED["aladdin-chance"], length_cv=0.1).build(), LengthPredictor())
    for s in (mean_only, chance, tight):
        decoding(s, "w0", "a", 600, 300)  # 601 tokens now, 899 at its end: the peak with the new one too
    new = Request("n", 100, 0.0, predicted_output_tokens=50)
    assert not mean_only.evaluate(new, 0.0)[0].violates
    # margin: z(0.95) x cv x sqrt(299^2 + 50^2) tokens = 499 (cv 1): over; 50 (cv 0.1): 899 + 50 fits
    assert "kv-chance" in chance.evaluate(new, 0.0)[0].violates
    assert not tight.evaluate(new, 0.0)[0].violates
    ev = Evaluation(tight.pool, new, 0.0, True)
    assert ev.remaining_spread(np.array([0]))[0] == pytest.approx(math.hypot(299, 50))
    with pytest.raises(AladdinError, match="violation"):
        replace(NAMED["aladdin-chance"], violation=0.6)
    spec = parse_policy("filters=seqs,kv-chance;score=fill;pick=max;violation=0.01;length_cv=0.5")
    assert (spec.violation, spec.length_cv) == (0.01, 0.5) and spec.uses_predictions
    assert not spec.takes_headroom and NAMED["aladdin-chance"].takes_headroom  # its ATGT filters take one


def test_each_admission_stalls_the_decodes_it_joins_and_delays_the_ttfts_behind_it():
    base_perf = replace(PERF, prefill=PrefillModel(a=1e-4, q=0.0, c=0.02))  # front end 10 ms
    base, costly = scheduler(workers=1, perf=base_perf), scheduler(workers=1, perf=replace(base_perf, admit_s=2e-3))
    for s in (base, costly):
        decoding(s, "w0", "a", 100, 50, atgt_slo=1.0)
        queued = Request("q", 200, 0.0, predicted_output_tokens=10)
        s.worker("w0").place(queued)  # placed, not yet admitted by the engine
        s.requests["q"] = queued
    new = Request("n", 100, 0.0, predicted_output_tokens=10)
    (ttft, alone), (ttft_costly, alone_costly) = (Evaluation(s.pool, new, 0.0, True).ttft() for s in (base, costly))
    # 2 ms less front end, then q's admission and its own: 2 ms more; alone, as a lone prompt measured
    assert ttft_costly[0] - ttft[0] == pytest.approx(2e-3) and alone_costly[0] == pytest.approx(alone[0])
    work, work_costly = (Evaluation(s.pool, new, 0.0, True).own_prefill_work[0] for s in (base, costly))
    assert work_costly - work == pytest.approx(2e-3)  # what it stalls the residents by


def test_a_resident_already_missing_its_atgt_does_not_close_its_worker():
    # Old bug (c): one resident predicted at 1.4x its ATGT budget refused every new ATGT request.
    s = scheduler(workers=1)
    decoding(s, "w0", "late", 10, 1000, generated=2, atgt_slo=0.011, first_token=-20.0)
    s.worker("w0").advance(0, 0.0)
    request = Request("n", 10, 0.0, atgt_slo=1.0, predicted_output_tokens=10)
    assert s.evaluate(request, 0.0)[0].feasible
    assert s.arrive(request, 0.0)[0].worker == "w0"


def test_atgt_counts_the_time_since_observed_not_a_frozen_past():
    # Old bug (d): with a cached (id, version) forecast the past stayed frozen at its first value.
    s = scheduler(workers=1)
    decoding(s, "w0", "a", 10, 100, generated=2, atgt_slo=0.1, first_token=0.0)
    state = s.worker("w0")
    request = Request("n", 10, 0.0, atgt_slo=10.0, predicted_output_tokens=5)
    state.refresh_forecast()
    state.advance(0, 5.0)
    early = s.evaluate(request, 5.0)[0].atgt_fill
    state.advance(0, 8.0)
    late = s.evaluate(request, 8.0)[0].atgt_fill
    assert late == pytest.approx(early + 3.0 / (99 * 0.1))  # 3 s more over its 99 tokens after the first


def test_a_measured_decode_scale_stretches_the_predicted_atgt_and_closes_the_worker():
    s = scheduler(workers=1)
    decoding(s, "w0", "a", 10, 100, generated=1, atgt_slo=0.1, first_token=0.0)
    request = Request("n", 10, 0.0, atgt_slo=10.0, predicted_output_tokens=50)
    profiled = s.evaluate(request, 0.0)[0]
    s.scale_decode("w0", 3.0)
    slower = s.evaluate(request, 0.0)[0]
    assert slower.atgt_fill == pytest.approx(3 * profiled.atgt_fill, rel=0.05)
    s.scale_decode("w0", 1.0)
    assert s.evaluate(request, 0.0)[0].atgt_fill == pytest.approx(profiled.atgt_fill)
    with pytest.raises(ValueError):
        s.scale_decode("w0", 0.0)


def test_split_phase_request_counts_the_time_it_already_streamed():
    # Old bug (f): after the hand-off, the new request's own ATGT ignored its past.
    s = scheduler(workers=1)
    fresh = Request("n", 10, 0.0, atgt_slo=0.1, predicted_output_tokens=10, generated_tokens=1,
                    computed_tokens=10, first_token_time=0.0)
    quick = s.evaluate(fresh, 0.01)[0].atgt_fill
    stale = s.evaluate(replace(fresh), 0.5)[0].atgt_fill  # 0.5 s since its first token, 9 tokens to go
    assert stale == pytest.approx(quick + 0.49 / 9 / 0.1)


def test_exact_kv_check_runs_only_on_workers_still_in_the_running(monkeypatch):
    # Old bug (g): the O(n^2) exact peak ran even on workers already ruled out.
    calls = []
    original = Evaluation.exact_peak
    monkeypatch.setattr(Evaluation, "exact_peak", lambda self, row: calls.append(row) or original(self, row))
    s = scheduler(workers=2)
    for i in range(4):
        decoding(s, "w0", f"full{i}", 200, 30)  # max_num_seqs reached: ruled out by the seqs filter
    decoding(s, "w1", "half", 400, 100)
    s.arrive(Request("n", 300, 0.0, predicted_output_tokens=190), 0.0)
    assert 0 not in calls


def test_advancing_the_clock_reads_the_same_forecast_as_rebuilding_it():
    """The O(1) step shift must equal a forecast rebuilt from the advanced state."""
    shifted, rebuilt = scheduler(workers=1), scheduler(workers=1)
    lengths = [(30, 40, 3), (100, 25, 1), (50, 90, 10), (10, 12, 2)]
    for i, (prompt, predicted, generated) in enumerate(lengths):
        decoding(shifted, "w0", f"r{i}", prompt, predicted, generated, atgt_slo=0.05, first_token=0.0)
        decoding(rebuilt, "w0", f"r{i}", prompt, predicted, generated + 7, atgt_slo=0.05, first_token=0.0)
    shifted.worker("w0").refresh_forecast()  # built at step 0, then read 7 steps on
    shifted.worker("w0").advance(7, 0.3)
    rebuilt.worker("w0").advance(0, 0.3)
    request = Request("n", 40, 0.0, ttft_slo=1.0, atgt_slo=0.05, predicted_output_tokens=20)
    a, b = shifted.evaluate(request, 0.3)[0], rebuilt.evaluate(request, 0.3)[0]
    assert a.kv_fill == pytest.approx(b.kv_fill)
    assert a.atgt_fill == pytest.approx(b.atgt_fill)
    assert a.ttft == pytest.approx(b.ttft)


def test_ttft_only_violations_never_queue_and_edf_serves_the_earliest_deadline_first():
    s = scheduler(workers=1, queue="edf")
    for i in range(4):
        decoding(s, "w0", f"r{i}", 10, 50)
    loose = Request("loose", 10, 0.0, ttft_slo=100.0)
    tight = Request("tight", 10, 0.5, ttft_slo=1.0)
    assert s.arrive(loose, 0.0) == [] and s.arrive(tight, 0.5) == []  # max_num_seqs: both queue
    assert [r.id for r in s.queue] == ["tight", "loose"]
    placed = s.finish("r0", 50, 0.6)
    assert [d.request.id for d in placed] == ["tight"]
    # a TTFT SLO no worker can meet now does not hold a request back when it is the only problem
    t = scheduler(workers=1)
    hurried = Request("h", 300, 0.0, ttft_slo=0.06, predicted_output_tokens=5)
    decoding(t, "w0", "busy", 100, 100)
    t.worker("w0").place(Request("queued-prompt", 300, 0.0, predicted_output_tokens=1))
    assert t.evaluate(hurried, 0.0)[0].violates == {"ttft"}
    assert t.arrive(hurried, 0.0)[0].worker == "w0"


def test_a_request_whose_ttft_is_lost_is_placed_best_effort_or_shed():
    for rule in ("best-effort", "shed"):
        s = scheduler(workers=1, lost_ttft=rule)
        decoding(s, "w0", "big", 600, 300)
        request = Request("n", 400, 0.0, ttft_slo=0.5, atgt_slo=1.0, predicted_output_tokens=100)
        assert s.arrive(request, 0.0) == []  # KV: queued
        decisions = s.started("big", 2, 5.0)  # a capacity change after its TTFT is gone
        if rule == "shed":
            assert decisions == [Shed(request)] and not len(s.queue)
        else:
            assert decisions == [] and len(s.queue) == 1  # still no KV room: waits at the head
            assert [d.request.id for d in s.finish("big", 300, 6.0)] == ["n"]


def test_overruns_are_repredicted_and_worker_error_inflates_its_forecast():
    s = scheduler(workers=1)
    request = decoding(s, "w0", "a", 10, 5, generated=1)
    assert s.worker("w0").next_overrun() == 4
    s.advance("w0", 4, 1.0)
    assert request.predicted_output_tokens > 5 and request.repredictions == 1
    s.finish("a", 9, 1.1)
    errors = s.error_summary()["w0"]
    assert errors["finished"] == 1 and errors["repredictions"] == 1 and errors["error_sum"] == 4
    for i in range(20):  # this worker's requests keep running 1.5x longer than predicted
        r = decoding(s, "w0", f"x{i}", 10, 20, first_token=1.0)
        r.first_prediction = 20
        s.finish(f"x{i}", 30, 2.0)
    assert s.worker("w0").length_inflation > 1.3


def test_bad_requests_and_workers_are_one_line_errors():
    for kwargs, message in (({"prompt_tokens": 0}, "prompt_tokens"), ({"atgt_slo": 0.0}, "atgt_slo"),
                            ({"ttft_slo": float("nan")}, "ttft_slo")):
        with pytest.raises(AladdinError, match=message):
            Request(**{"id": "x", "prompt_tokens": 5, "arrival_time": 0.0, **kwargs})
    with pytest.raises(AladdinError, match="unique"):
        Scheduler([("w", PERF), ("w", PERF)], NAMED["jsq"].build())
    with pytest.raises(AladdinError, match="queue order"):
        SchedulerConfig(queue="lifo")


def test_profile_with_negative_coefficients_is_refused(tmp_path):
    from aladdin.plugin.profile.io import ProfileMeta, load_profile, save_profile

    path = save_profile(tmp_path / "p.json", PERF, ProfileMeta("m", "h", 1, "0.32.0", "test"))
    doc = json.loads(path.read_text())
    for value, message in ((-0.05, r"decode\.c must be >= 0"), (float("nan"), r"decode\.c must be a finite number")):
        doc["decode"]["c"] = value
        path.write_text(json.dumps(doc))
        with pytest.raises(AladdinError, match=message):
            load_profile(path)


def test_many_workers_evaluate_like_each_alone():
    rng = np.random.default_rng(1)
    cluster = scheduler(workers=4)
    alone = [scheduler(workers=1) for _ in range(4)]
    for w in range(4):
        for j in range(3):
            prompt, predicted = int(rng.integers(5, 200)), int(rng.integers(5, 100))
            decoding(cluster, f"w{w}", f"r{w}{j}", prompt, predicted, atgt_slo=0.05, first_token=0.0)
            decoding(alone[w], "w0", f"r{w}{j}", prompt, predicted, atgt_slo=0.05, first_token=0.0)
    request = Request("n", 60, 0.0, ttft_slo=1.0, atgt_slo=0.05, predicted_output_tokens=30)
    together = cluster.evaluate(request, 0.1)
    for w in range(4):
        single = alone[w].evaluate(request, 0.1)[0]
        assert together[w].kv_fill == pytest.approx(single.kv_fill)
        assert together[w].atgt_fill == pytest.approx(single.atgt_fill)
        assert together[w].violates == single.violates


def test_router_token_reports_move_the_workers_clock_and_re_anchor_a_lagging_stream():
    s = scheduler(workers=1)
    a = decoding(s, "w0", "a", 10, 50, generated=1)
    b = decoding(s, "w0", "b", 10, 50, generated=1)
    state = s.worker("w0")
    s.tokens("a", 2, 0.1)  # a stream ahead of the clock: the engine stepped
    assert state.step == 1 and state.generated(b) == 2  # the batch follows
    s.tokens("b", 2, 0.1)  # consistent: nothing changes
    assert state.step == 1
    s.tokens("a", 6, 0.2)
    s.tokens("b", 2, 0.2)  # four steps behind (stalled or preempted): re-anchored
    assert state.generated(a) == 6 and state.generated(b) == 2


def test_abort_frees_the_worker_or_the_queue_without_teaching_the_predictor():
    s = scheduler(workers=1)
    for i in range(4):
        decoding(s, "w0", f"r{i}", 10, 50)
    queued = Request("q", 10, 0.0)
    assert s.arrive(queued, 0.0) == []
    assert s.abort("q", 0.1) == [] and not len(s.queue)
    waiting = Request("w", 10, 0.0)
    s.arrive(waiting, 0.0)
    assert [d.request.id for d in s.abort("r0", 0.2)] == ["w"]  # room freed: the queue is retried
    assert s.predictor.observed == 0


def test_reconcile_replaces_the_event_picture_with_the_engines_report():
    from aladdin.plugin.core.worker import RequestReport

    s = scheduler(workers=1)
    a = decoding(s, "w0", "a", 100, 200, generated=5)
    queued = Request("p", 300, 0.0, predicted_output_tokens=10)
    s.worker("w0").place(queued)
    s.requests["p"] = queued
    state = s.worker("w0")
    assert state.unprefilled_tokens == 300
    s.reconcile("w0", [RequestReport("a", 40, 140, True), RequestReport("p", 0, 250, False)], 512, 1.0)
    assert state.generated(a) == 40 and state.unprefilled_tokens == 50 and state.kv_tokens_held() == 512
    fit = s.evaluate(Request("n", 10, 1.0, predicted_output_tokens=5), 1.0)[0]
    assert fit.kv_fill == pytest.approx((144 + 304 + 14) / 1024)  # a, p and n four steps on (n's last)


def test_a_callers_prediction_is_kept_through_queue_retries():
    s = scheduler(workers=1)
    for i in range(4):
        decoding(s, "w0", f"r{i}", 10, 50)
    given = Request("g", 10, 0.0, predicted_output_tokens=77)  # e.g. sent by the router
    s.arrive(given, 0.0)
    s.finish("r0", 50, 0.1)
    assert given.worker == "w0" and given.predicted_output_tokens == 77 and not given.predicted_here


def test_growing_the_pools_arrays_keeps_every_workers_forecast():
    big = replace(PERF, kv=KVModel(block_size=16, capacity_tokens=16 * 4096), max_num_seqs=64)
    s = scheduler(workers=2, perf=big)
    decoding(s, "w1", "small", 50, 30, atgt_slo=0.05, first_token=0.0)
    request = Request("n", 40, 0.0, ttft_slo=1.0, atgt_slo=0.05, predicted_output_tokens=20)
    before = s.evaluate(request, 0.1)[1]
    for i in range(20):  # more slots than the pool starts with, and a horizon past its step arrays
        decoding(s, "w0", f"long{i}", 10, 3000, atgt_slo=0.05, first_token=0.0)
    fits = s.evaluate(request, 0.1)
    assert fits[1] == before
    assert s.pool.slot_width >= 20 and s.pool.step_width >= 2999
    assert fits[0].kv_fill == pytest.approx(20 * (11 + 2998) / big.kv.capacity_tokens)  # their last step


def test_a_router_token_report_that_passes_a_prediction_repredicts_it():
    """Scheduler.tokens used to move the clock and drop the requests it took past their
    prediction, so a router's streams were never re-predicted."""
    s = scheduler(workers=1)
    request = decoding(s, "w0", "a", 10, 3, generated=1)
    s.tokens("a", 10, 0.5)
    assert request.repredictions == 1 and request.predicted_output_tokens > 10


def test_max_output_tokens_caps_the_prediction_queue_retries_and_repredictions():
    s = scheduler(workers=1)  # the predictor's cold start says 20
    for i in range(4):  # max_num_seqs: the new request queues
        decoding(s, "w0", f"r{i}", 10, 50)
    capped = Request("c", 10, 0.0, max_output_tokens=8)
    s.arrive(capped, 0.0)
    assert capped.predicted_output_tokens == 8 and capped.predicted_here
    s.finish("r0", 50, 0.1)  # the queue is retried, the predictor asked again
    assert capped.worker == "w0" and capped.predicted_output_tokens == 8
    s.started("c", 1, 0.2)
    s.tokens("c", 8, 0.3)  # at its cap and not finished: one more token at most
    assert capped.predicted_output_tokens == 9


def test_decode_calibration_averages_then_smooths_and_clips_outliers():
    from aladdin.plugin.core.calibration import CalibrationConfig, DecodeCalibration

    decode = DecodeModel(a=0.001, b=0.0, c=0.01)  # 11 ms for one request
    calibration = DecodeCalibration(decode, CalibrationConfig(min_steps=4, smoothing=0.5, bounds=(0.5, 4.0)))
    for seconds in (0.022, 0.022, 0.022):
        calibration.observe(1, 100, seconds)
    assert calibration.scale == 1.0 and calibration.update() is None  # not trusted yet
    calibration.observe(1, 100, 10.0)  # a stall: clipped to 4x
    assert calibration.scale == pytest.approx((2 + 2 + 2 + 4) / 4)
    assert calibration.update() == pytest.approx(2.5) and calibration.update() is None
    calibration.observe(1, 100, 0.011)
    assert calibration.scale == pytest.approx(2.5 + 0.5 * (1.0 - 2.5))
    calibration.observe(0, 0, 1.0)  # an empty batch tells nothing
    assert calibration.steps == 5
