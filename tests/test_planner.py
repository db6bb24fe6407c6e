"""The GPU planner: rate and size searches, rounding, heartbeat re-planning, the plan command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from aladdin.errors import AladdinError
from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel
from aladdin.plugin.plan.cli import plan
from aladdin.plugin.plan.planner import (
    HeartbeatConfig,
    Plan,
    PlanConfig,
    Planner,
    SizeCheck,
    Variant,
    WorkerConfig,
    Workload,
    binned_rates,
    cluster_size,
    heartbeat_plan,
    search_rate,
    search_size,
    step_rates,
    variants_for,
)
from aladdin.plugin.profile.io import ProfileMeta, save_profile
from aladdin.plugin.sim.simulator import SimConfig, simulate

# A small worker: 8 sequences at a time, fixed cost 8 ms per iteration.
PERF = PerfModel(PrefillModel(2e-5, 0.0, 0.01), DecodeModel(2e-4, 5e-8, 0.008), KVModel(16, 16 * 512),
                 max_num_seqs=8, max_batched_tokens=512)
PROMPT, OUTPUT = 16, 50


def fixed_workload() -> Workload:
    return Workload([PROMPT] * 50, [OUTPUT] * 50, seed=1)


def saturation_rate() -> float:
    """Requests/s of a worker that always decodes a full batch: the throughput ceiling."""
    batch = PERF.max_num_seqs
    step = float(PERF.decode.time(batch, batch * (PROMPT + OUTPUT / 2)))
    return batch / (OUTPUT * step)


# ------------------------------------------------------------------ searches


@pytest.mark.parametrize("guess", [0.1, 3.7, 100.0])
def test_rate_search_brackets_the_knee_from_any_guess(guess):
    calls = []

    def meets(rate):
        calls.append(rate)
        return rate <= 3.7

    found = search_rate(meets, guess, tolerance=0.02)
    assert 3.7 / 1.02 <= found <= 3.7
    assert len(calls) < 25


def test_rate_search_fails_when_nothing_meets():
    with pytest.raises(AladdinError, match="not met even at"):
        search_rate(lambda rate: False, 1.0, tolerance=0.02)


@pytest.mark.parametrize("estimate", [1, 3, 7, 20, 60])
def test_size_search_finds_the_smallest_size_from_any_estimate(estimate):
    tried = []

    def meets(n):
        tried.append(n)
        return n >= 7

    assert search_size(meets, estimate, limit=2 * estimate + 10) == 7
    assert len(tried) == len(set(tried))  # no size is simulated twice


def test_size_search_gives_up_at_its_limit():
    assert search_size(lambda n: n >= 50, 4, limit=10) is None


def test_cluster_size_rounds_up_but_not_float_noise():
    assert cluster_size(10.0, 5.0) == 2
    assert cluster_size(10.001, 5.0) == 3
    assert cluster_size(0.6, 0.2) == 3  # 0.6 / 0.2 == 2.9999999999999996
    assert cluster_size(0.7, 0.1) == 7  # 6.999999999999999
    assert cluster_size(0.001, 5.0) == 1


# ------------------------------------------------------------------ with the simulator


def test_worker_rate_finds_the_simulated_knee():
    """The knee of a worker serving fixed-size requests lies near its saturation throughput
    (a little above is possible: 400 requests end before a 2 s TTFT budget's queue fills),
    the search's answer meets the target, and a rate 2% higher does not."""
    config = PlanConfig(ttft_slo=2.0, atgt_slo=1.0, attainment=0.99, num_requests=400)
    planner = Planner([WorkerConfig("small", PERF, 1)], [Variant("jsq")], config, fixed_workload())
    search = planner.worker_rate(planner.configs[0], Variant("jsq"))
    ceiling = saturation_rate()
    assert 0.7 * ceiling < search.rate < 1.05 * ceiling
    met = {p.rate: p.attainment >= 0.99 for p in search.probes}
    assert met[search.rate]
    assert min(r for r, ok in met.items() if not ok) <= search.rate * 1.02 * (1 + 1e-9)
    # the probes are the simulation itself: replaying one gives the same attainment
    again = simulate(fixed_workload().schedule(search.rate, 400), PERF, SimConfig(1, "jsq", 2.0, 1.0))
    assert again.attainment(2.0, 1.0) == search.probes[list(met).index(search.rate)].attainment
    assert search.horizon_s == pytest.approx(400 / search.rate)
    # every baseline is FCFS on one worker: they share the search
    assert planner.worker_rate(planner.configs[0], Variant("rr")) is search


def test_size_check_steps_up_when_the_estimate_fails():
    config = PlanConfig(ttft_slo=2.0, atgt_slo=1.0, num_requests=300, check_requests=150)
    planner = Planner([WorkerConfig("small", PERF, 1)], [Variant("jsq")], config, fixed_workload())
    worker = planner.configs[0]
    knee = planner.worker_rate(worker, Variant("jsq")).rate
    check = planner.size(worker, Variant("jsq"), 3 * knee, start=1)
    assert check.estimate == 3 and check.start == 1
    assert check.workers is not None and check.workers >= 2
    by_size = {p.workers: p.attainment for p in check.probes}
    assert by_size[1] < 0.99 and by_size[check.workers] >= 0.99
    assert all(by_size[n] < 0.99 for n in by_size if n < check.workers)
    assert check.gpus == check.workers
    # the same rate replays the same requests, whatever the policy or size
    assert {p.requests for p in check.probes} == {round(3 * knee * planner.horizon(worker))}


def test_split_phase_sizes_the_prefill_pool_for_ttft_and_the_decode_pool_for_the_rest():
    config = PlanConfig(ttft_slo=0.5, atgt_slo=1.0, num_requests=300, check_requests=150, split_phase=True)
    planner = Planner([WorkerConfig("small", PERF, 2)], [Variant("jsq")], config, fixed_workload())
    worker = planner.configs[0]
    rate = 3 * planner.worker_rate(worker, Variant("jsq")).rate
    check = planner.size_split(worker, Variant("jsq"), rate)
    assert check.prefill_workers >= 1 and check.workers is not None
    assert check.gpus == 2 * (check.prefill_workers + check.workers)
    assert check.shape == f"{check.prefill_workers} prefill + {check.workers} decode x G2"
    met = [p for p in check.probes if p.prefill_workers == check.prefill_workers and p.workers == check.workers]
    assert met and met[0].attainment >= 0.99 and met[0].ttft_attainment >= 0.99
    # one decode worker fewer misses the target
    fewer = [p for p in check.probes if p.prefill_workers == check.prefill_workers and p.workers == check.workers - 1]
    assert all(p.attainment < 0.99 for p in fewer)


def test_plan_keeps_the_fewest_gpus_per_policy():
    config = PlanConfig(ttft_slo=1.0, atgt_slo=0.1)
    one, two = Variant("aladdin", 0.0), Variant("aladdin", 0.1)

    def check(name, gpus_per_worker, variant, workers):
        return SizeCheck(name, gpus_per_worker, variant, 10.0, 1.0, 4, 4, workers,
                         None if workers is None else 0.995, [])

    result = Plan(config, [], [
        check("g1", 1, one, None), check("g1", 1, two, 5), check("g2", 2, two, 2), check("g1", 1, Variant("jsq"), None),
    ], 0.0)
    best = result.best(10.0)
    assert best["aladdin"].config == "g2" and best["aladdin"].gpus == 4
    assert best["jsq"] is None
    document = result.to_dict()
    assert {row["policy"]: row["gpus"] for row in document["best"]} == {"aladdin": 4, "jsq": None}


def test_variants_and_their_errors():
    labels = [v.label for v in variants_for(["jsq", "aladdin"], [0.0, 0.05], oracle=True)]
    assert labels == ["jsq", "aladdin(h=0)", "aladdin(h=0.05)", "aladdin-oracle(h=0)", "aladdin-oracle(h=0.05)"]
    with pytest.raises(AladdinError, match="unknown placement policy"):
        Variant("best-fit")
    with pytest.raises(AladdinError, match="SLO-aware policies only"):
        Variant("jsq", headroom=0.1)
    with pytest.raises(AladdinError, match="attainment"):
        Planner([WorkerConfig("small", PERF, 1)], [Variant("jsq")], PlanConfig(1.0, 0.1, attainment=1.5),
                fixed_workload())


def test_workload_runs_are_prefixes_of_one_sequence():
    workload = Workload([10, 20, 30], [5, 6, 7], seed=3)
    short, long = workload.schedule(2.0, 5), workload.schedule(4.0, 50)
    assert [r.spec.prompt_tokens for r in long[:3]] == [10, 20, 30]  # the sample first, in order
    assert [r.spec.prompt_tokens for r in short] == [r.spec.prompt_tokens for r in long[:5]]
    assert [2 * r.offset for r in short] == pytest.approx([4 * r.offset for r in long[:5]])
    assert {r.spec.prompt_tokens for r in long} == {10, 20, 30}  # then resampled with replacement


# ------------------------------------------------------------------ heartbeats


def test_heartbeat_follows_a_step_up_at_once_and_a_step_down_after_hysteresis():
    times, rates = step_rates([0, 90, 300, 420], [10, 40, 10, 10], 60.0)
    assert times.tolist() == [0, 60, 120, 180, 240, 300, 360, 420]
    assert rates.tolist() == [10, 40, 40, 40, 40, 10, 10, 10]  # the step at 90 is provisioned at 60
    beats = heartbeat_plan(times, rates, 5.0, 2, HeartbeatConfig(60.0, headroom=0.0, scale_down_after=3))
    assert [b.wanted for b in beats] == [2, 8, 8, 8, 8, 2, 2, 2]
    assert [b.workers for b in beats] == [2, 8, 8, 8, 8, 8, 8, 2]
    assert [b.gpus for b in beats] == [4, 16, 16, 16, 16, 16, 16, 4]
    at_once = heartbeat_plan(times, rates, 5.0, 1, HeartbeatConfig(60.0, headroom=0.2, scale_down_after=1))
    assert [b.workers for b in at_once] == [3, 10, 10, 10, 10, 3, 3, 3]  # ceil(rate / (5 * 0.8))


def test_heartbeat_bins_trace_arrivals_and_keeps_a_minimum():
    times, rates = binned_rates([0.0, 0.5, 1.2, 59.0, 61.0, 179.9], 60.0)
    assert times.tolist() == [0, 60, 120]
    assert rates.tolist() == pytest.approx([4 / 60, 1 / 60, 1 / 60])
    beats = heartbeat_plan([0, 60], [0.0, 0.0], 1.0, 1, HeartbeatConfig(min_workers=2))
    assert [b.workers for b in beats] == [2, 2]
    with pytest.raises(AladdinError, match="strictly increasing"):
        step_rates([0, 0], [1, 2], 60.0)
    with pytest.raises(AladdinError, match="scale-down-after"):
        heartbeat_plan([0], [1.0], 1.0, 1, HeartbeatConfig(scale_down_after=0))


# ------------------------------------------------------------------ the command


@pytest.fixture()
def profile(tmp_path):
    return save_profile(tmp_path / "small.json", PERF, ProfileMeta("tiny", "test", 1, "none", "test"))


@pytest.fixture()
def sharegpt(tmp_path):
    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over a lazy dog while seven tired owls watch".split()
    conversations = [
        {"id": f"c{i}", "conversations": [
            {"from": "human", "value": " ".join(rng.choice(words, int(rng.integers(5, 40))))},
            {"from": "gpt", "value": " ".join(rng.choice(words, int(rng.integers(10, 80))))},
        ]}
        for i in range(40)
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(conversations))
    return path


def test_plan_command_end_to_end(profile, sharegpt, tmp_path):
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(plan, [
        "--profile", str(profile), "--rates", "3,12", "--ttft-slo", "0.5", "--atgt-slo", "0.05",
        "--policy", "jsq,aladdin", "--headroom", "0.1", "-n", "200", "--sample", "40",
        "--dataset-path", str(sharegpt), "--json", str(out), "-q",
    ])
    assert result.exit_code == 0, result.output
    assert "rate 12 req/s" in result.output and "fewest GPUs per policy" in result.output
    document = json.loads(out.read_text())
    assert {c["label"] for c in document["checks"]} == {"jsq", "aladdin(h=0.1)"}
    assert {row["rate"] for row in document["best"]} == {3.0, 12.0}
    jsq = [c for c in document["checks"] if c["label"] == "jsq"]
    assert all(c["workers"] >= 1 and c["attainment"] >= 0.99 for c in jsq)
    split = CliRunner().invoke(plan, [
        "--profile", str(profile), "--rate", "12", "--ttft-slo", "0.5", "--atgt-slo", "0.05", "--policy", "jsq",
        "-n", "200", "--sample", "40", "--dataset-path", str(sharegpt), "--split-phase", "-q",
    ])
    assert split.exit_code == 0, split.output
    assert "split-phase" in split.output and "prefill +" in split.output


def test_heartbeat_command_writes_worker_counts(profile, tmp_path):
    rates = tmp_path / "rates.csv"
    rates.write_text("time_s,rate\n0,5\n90,30\n300,8\n600,8\n")
    out = tmp_path / "beats.csv"
    result = CliRunner().invoke(plan, ["--profile", str(profile), "--heartbeat", str(rates), "--worker-rate", "5",
                                       "--interval", "60", "--csv", str(out), "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0] == "time_s,rate,workers,gpus"
    workers = [int(line.split(",")[2]) for line in lines[1:]]
    assert workers == [2, 7, 7, 7, 7, 7, 7, 2, 2, 2, 2]  # ceil(30 / 4.5) = 7; down after 3 beats
    assert json.loads((tmp_path / "b.json").read_text())["heartbeats"][1]["wanted"] == 7


@pytest.mark.parametrize("args, message", [
    (["--rate", "0"], "arrival rate must be > 0"),
    (["--rates", "1,-2"], "arrival rate must be > 0"),
    (["--rates", "1,x"], "comma-separated numbers"),
    (["--rate", "1", "--attainment", "0"], "--attainment must be in (0, 1]"),
    (["--rate", "1", "--attainment", "1.5"], "--attainment must be in (0, 1]"),
    (["--rate", "1", "--policy", "jsq,fastest"], "unknown policy fastest"),
    ([], "give --rate/--rates, or --heartbeat FILE"),
    (["--rate", "1", "--worker-rate", "2"], "--worker-rate applies to --heartbeat only"),
])
def test_bad_input_is_one_line(profile, args, message):
    result = CliRunner().invoke(plan, ["--profile", str(profile), "--ttft-slo", "1", "--atgt-slo", "0.1", *args])
    assert result.exit_code == 1
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_missing_profile_is_one_line(tmp_path):
    result = CliRunner().invoke(plan, ["--profile", str(tmp_path / "nope.json"), "--rate", "1",
                                       "--ttft-slo", "1", "--atgt-slo", "0.1"])
    assert result.exit_code == 1
    assert "nope.json" in result.output and len(result.output.strip().splitlines()) == 1
