"""The cluster simulator: known answers, an independent per-iteration reference, records, CLI."""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import asdict

import numpy as np
import pytest
from click.testing import CliRunner

from aladdin.errors import AladdinError
from aladdin.loadgen.datasets import RequestSpec
from aladdin.loadgen.records import RequestRecord
from aladdin.loadgen.schedule import ScheduledRequest
from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel
from aladdin.plugin.core.predictor import PredictorConfig
from aladdin.plugin.profile.io import ProfileMeta, save_profile
from aladdin.plugin.sim.simulator import ClusterSimulator, SimConfig, simulate

PREFILL = PrefillModel(a=5e-5, q=1e-9, c=0.015)
DECODE = DecodeModel(a=1.5e-4, b=3.4e-7, c=0.012)
PERF = PerfModel(PREFILL, DECODE, KVModel(16, 16 * 4000), max_num_seqs=64, max_batched_tokens=2048)


def schedule(requests: list[tuple[float, int, int]]) -> list[ScheduledRequest]:
    """(arrival, prompt tokens, output tokens) -> a schedule, ids r0, r1, ..."""
    return [
        ScheduledRequest(f"r{i}", arrival, RequestSpec("x", prompt, output, None, None, f"s{i}"))
        for i, (arrival, prompt, output) in enumerate(requests)
    ]


def reference(perf: PerfModel, requests: list[tuple[float, int, int]]) -> list[list[float]]:
    """One worker, stepped one iteration at a time with plain objects: the vLLM-V1 rules of
    docs/placement.md written the obvious way (synchronous scheduling, no prefix caching).
    Returns each request's token times."""
    requests = [(arrival + perf.frontend_s, p, o) for arrival, p, o in requests]  # when the engine sees each
    bs, blocks_total = perf.kv.block_size, perf.kv.num_blocks
    pending = deque(sorted(range(len(requests)), key=lambda i: requests[i][0]))
    state = {i: {"tok": p, "comp": 0, "gen": 0, "out": o, "alloc": 0} for i, (_, p, o) in enumerate(requests)}
    times: list[list[float]] = [[] for _ in requests]
    running: list[int] = []
    waiting: deque[int] = deque()
    used, now = 0, 0.0
    while pending or running or waiting:
        while pending and requests[pending[0]][0] < now:
            waiting.append(pending.popleft())
        if not running and not waiting:
            now = requests[pending[0]][0]
            waiting.append(pending.popleft())
        decoding = [i for i in running if state[i]["tok"] - state[i]["comp"] == 1 and state[i]["gen"] >= 1]
        preempted = False
        while sum(state[i]["comp"] % bs == 0 for i in decoding) > blocks_total - used:
            victim = running.pop()
            used -= state[victim]["alloc"]
            state[victim].update(comp=0, alloc=0)
            waiting.appendleft(victim)
            decoding = [i for i in decoding if i != victim]
            preempted = True
        for i in decoding:
            if state[i]["comp"] % bs == 0:
                state[i]["alloc"] += 1
                used += 1
        budget = perf.max_batched_tokens - len(decoding)
        chunks = []
        for i in list(running):
            if i not in decoding and budget > 0 and i in running:
                take = min(state[i]["tok"] - state[i]["comp"], budget)
                need = math.ceil((state[i]["comp"] + take) / bs) - state[i]["alloc"]  # blocks grow chunk by chunk
                while need > blocks_total - used and i in running:
                    victim = running.pop()
                    used -= state[victim]["alloc"]
                    state[victim].update(comp=0, alloc=0)
                    waiting.appendleft(victim)
                    preempted = True
                if i not in running:
                    break
                state[i]["alloc"], used = state[i]["alloc"] + need, used + need
                chunks.append((i, take, state[i]["comp"]))
                budget -= take
        admitted = 0
        if not preempted:
            while waiting and budget > 0 and len(running) < perf.max_num_seqs:
                i = waiting[0]
                if math.ceil(state[i]["tok"] / bs) > blocks_total - used:  # the whole prompt must fit
                    break
                waiting.popleft()
                running.append(i)
                take = min(state[i]["tok"], budget)
                need = math.ceil(take / bs)
                state[i]["alloc"], used = need, used + need
                chunks.append((i, take, 0))
                budget -= take
                admitted += 1
        now += perf.iteration_time(
            len(decoding), sum(state[i]["tok"] for i in decoding), [c[1] for c in chunks], [c[2] for c in chunks],
            admitted,
        )
        for i in decoding:
            state[i]["tok"] += 1
            state[i]["comp"] += 1
            state[i]["gen"] += 1
            times[i].append(now)
        for i, take, _ in chunks:
            state[i]["comp"] += take
            if state[i]["comp"] == state[i]["tok"]:
                state[i]["gen"] += 1
                state[i]["tok"] += 1
                times[i].append(now)
        for i in [i for i in running if state[i]["gen"] == state[i]["out"]]:
            running.remove(i)
            used -= state[i]["alloc"]
    return times


def run_one_worker(perf: PerfModel, requests: list[tuple[float, int, int]], **config):
    """One worker scheduling as ``reference`` does (synchronously, no prefix caching) unless told."""
    config = {"async_scheduling": False, "prefix_caching": False, **config}
    return simulate(schedule(requests), perf, SimConfig(num_workers=1, policy="jsq", **config))


# --- known answers ---------------------------------------------------------------------


def test_single_request_ttft_is_its_prefill_and_each_token_one_decode_iteration():
    result = run_one_worker(PERF, [(1.0, 100, 5)])
    times = result.times_of(0)
    assert times[0] - 1.0 == pytest.approx(PREFILL.time_single(100), rel=1e-12)
    gaps = [DECODE.time(1, 100 + g) for g in range(1, 5)]  # context = prompt + generated
    assert np.diff(times) == pytest.approx(gaps, rel=1e-9)
    assert result.ttft[0] == pytest.approx(PREFILL.time_single(100), rel=1e-12)
    assert result.atgt[0] == pytest.approx(np.mean(gaps), rel=1e-9)


def test_two_requests_batching_changes_iteration_times_as_the_model_says():
    prefill_0 = PREFILL.time_single(100)
    arrival_1 = prefill_0 + DECODE.time(1, 101) + 0.001  # during r0's second decode iteration
    result = run_one_worker(PERF, [(0.0, 100, 6), (arrival_1, 50, 3)])
    t = [prefill_0]
    t.append(t[-1] + DECODE.time(1, 101))
    t.append(t[-1] + DECODE.time(1, 102))  # r1 arrived during this one; it joins after it
    t.append(t[-1] + PERF.iteration_time(1, 103, [50], [0]))  # r0 decodes while r1 prefills
    t.append(t[-1] + DECODE.time(2, 104 + 51))  # both decode
    t.append(t[-1] + DECODE.time(2, 105 + 52))  # r1's third token ends it; r0's sixth ends it
    assert result.times_of(0) == pytest.approx(t, rel=1e-12)
    assert result.times_of(1) == pytest.approx(t[3:], rel=1e-12)


def test_an_admission_slows_the_iteration_that_admits_and_leaves_a_lone_ttft_unchanged():
    admitting = PerfModel(PREFILL, DECODE, PERF.kv, PERF.max_num_seqs, PERF.max_batched_tokens, admit_s=2e-3)
    arrival_1 = PREFILL.time_single(100) + 0.001  # during r0's first decode iteration
    before = run_one_worker(PERF, [(0.0, 100, 6), (arrival_1, 50, 3)])
    after = run_one_worker(admitting, [(0.0, 100, 6), (arrival_1, 50, 3)])
    assert after.ttft[0] == pytest.approx(before.ttft[0], rel=1e-12)  # the cost came out of the front end
    # r0's iteration that admits r1 takes 2 ms longer, and r1 reaches the engine 2 ms sooner
    assert np.diff(after.times_of(0)) - np.diff(before.times_of(0)) == pytest.approx([0, 2e-3, 0, 0, 0], abs=1e-12)


def test_kv_overflow_preempts_the_newest_request_and_it_recomputes():
    perf = PerfModel(PREFILL, DECODE, KVModel(4, 4 * 12), max_num_seqs=8, max_batched_tokens=64)
    # r0 grows to 35 tokens (9 blocks), r1 to 25 (7 blocks): together they overflow 12 blocks.
    requests = [(0.0, 16, 20), (0.03, 16, 10)]
    result = run_one_worker(perf, requests)
    assert result.preemptions.tolist() == [0, 1]
    assert result.times_of(0) == pytest.approx(reference(perf, requests)[0], rel=1e-12)
    assert result.times_of(1) == pytest.approx(reference(perf, requests)[1], rel=1e-12)
    # r1 waits for r0 to finish, then re-prefills its prompt and the tokens it had made.
    r0_done = result.times_of(0)[-1]
    r1 = result.times_of(1)
    resumed = int(np.searchsorted(r1, r0_done))
    assert r1[resumed] - r0_done == pytest.approx(PREFILL.time_single(16 + resumed) - perf.frontend_s, rel=1e-12)
    assert np.isin(r1[:resumed], result.times_of(0)).all()  # before the preemption they shared iterations


# --- split-phase: a prefill pool beside the decode pool ---------------------------------


def test_split_phase_first_token_from_the_prefill_pool_then_decode_after_the_kv_transfer():
    transfer = 1e-4  # seconds per prompt token
    result = simulate(schedule([(1.0, 100, 5)]), PERF,
                      SimConfig(num_workers=1, policy="jsq", prefill_workers=1, kv_transfer_s_per_token=transfer))
    times = result.times_of(0)
    assert times[0] - 1.0 == pytest.approx(PREFILL.time_single(100), rel=1e-12)
    # the decode worker computes only the first token's KV (a decode step), streaming token 2
    assert times[1] - times[0] == pytest.approx(100 * transfer + DECODE.time(1, 101), rel=1e-12)
    assert np.diff(times[1:]) == pytest.approx([DECODE.time(1, 100 + g) for g in range(2, 5)], rel=1e-9)
    assert result.worker_ids[result.worker[0]] == "w0"  # records name the decode worker


def test_split_phase_prefill_pool_takes_the_least_loaded_and_one_token_replies_stay_there():
    config = SimConfig(num_workers=1, policy="jsq", prefill_workers=2)
    result = simulate(schedule([(0.0, 1000, 1), (0.0, 100, 3), (0.0, 100, 3)]), PERF, config)
    # r0 and r1 go to different prefill workers; r2 joins r1's (fewer tokens left), and as all
    # three arrive at the same instant, r1 and r2 share that worker's first iteration
    assert result.ttft[0] == pytest.approx(PREFILL.time_single(1000), rel=1e-12)
    assert result.ttft[1] == pytest.approx(PREFILL.time([100, 100]), rel=1e-12)
    assert result.ttft[2] == result.ttft[1]
    assert [result.worker_ids[w] for w in result.worker] == ["p0", "w0", "w0"]
    assert result.output_tokens.tolist() == [1, 3, 3]


def test_split_phase_decode_pool_placement_sees_only_decode_workers():
    config = SimConfig(num_workers=3, policy="aladdin", prefill_workers=1, ttft_slo=10.0, atgt_slo=1.0)
    requests = [(0.01 * i, 50 + 7 * i, 20 + i) for i in range(30)]
    result = simulate(schedule(requests), PERF, config)
    assert {result.worker_ids[w] for w in result.worker} <= {"w0", "w1", "w2"}
    assert result.output_tokens.tolist() == [o for _, _, o in requests]
    assert (np.diff(result.times_of(7)) > 0).all()



@pytest.mark.parametrize("budget,admit_s", [(2048, 0.0), (64, 0.0), (64, 2e-3)])
def test_matches_the_per_iteration_reference(budget, admit_s):
    """Decode runs jump in closed form and arrivals cut them; the token times must still be
    exactly those of stepping every iteration (chunked prefill, preemption and each
    admission's cost included)."""
    perf = PerfModel(PREFILL, DECODE, KVModel(8, 8 * 60), max_num_seqs=6, max_batched_tokens=budget, admit_s=admit_s)
    rng = np.random.default_rng(3)
    arrivals = np.cumsum(rng.exponential(0.08, 25))
    requests = [(float(a), int(p), int(o)) for a, p, o in zip(arrivals, rng.integers(1, 150, 25), rng.integers(1, 120, 25))]
    result = run_one_worker(perf, requests)
    expected = reference(perf, requests)
    for i in range(len(requests)):
        assert result.times_of(i) == pytest.approx(expected[i], rel=1e-9), f"request {i}"
    assert result.preemptions.sum() > 0  # the cache is small enough to force some


def test_every_policy_streams_every_token_in_order():
    rng = np.random.default_rng(0)
    requests = [(float(a), int(p), int(o)) for a, p, o in
                zip(np.cumsum(rng.exponential(0.02, 300)), rng.integers(5, 400, 300), rng.integers(2, 300, 300))]
    for policy in ("jsq", "rr", "po2", "least-kv", "aladdin"):
        result = simulate(schedule(requests), PERF, SimConfig(num_workers=4, policy=policy, atgt_slo=0.05, ttft_slo=1.0))
        assert result.output_tokens.sum() == result.token_times.size
        assert (np.diff(result.token_times)[np.diff(np.repeat(np.arange(300), result.output_tokens)) == 0] > 0).all()
        assert (result.first_token > result.arrival).all()
        assert set(np.unique(result.worker)) <= {0, 1, 2, 3}


def test_rebalancing_repredicts_overrunning_requests():
    config = SimConfig(num_workers=2, predictor=PredictorConfig(default_output_tokens=10, min_samples=1000))
    simulator = ClusterSimulator(PERF, config)
    result = simulator.run(schedule([(0.0, 50, 100), (0.01, 50, 5)]))
    assert result.first_prediction.tolist() == [10, 10]
    worker = result.worker_ids[result.worker[0]]
    # 10 -> 15 -> 23 -> 35 -> 53 -> 80 -> 120: each overrun re-predicts half as much again
    assert result.prediction_error_by_worker[worker]["repredictions"] == 6
    assert result.prediction_error_by_worker[worker]["finished"] >= 1
    assert simulator.scheduler.predictor.observed == 2


def test_oracle_lengths_predict_exactly_and_never_repredict():
    requests = [(0.01 * i, 20 + i, 30 + 3 * i) for i in range(20)]
    result = simulate(schedule(requests), PERF, SimConfig(num_workers=2, oracle_lengths=True))
    assert result.first_prediction.tolist() == result.output_tokens.tolist()
    assert result.prediction_error_by_worker == {}


def test_central_queue_holds_requests_until_capacity_frees():
    perf = PerfModel(PREFILL, DECODE, KVModel(16, 16 * 20), max_num_seqs=64, max_batched_tokens=2048)
    requests = [(0.0, 100, 150), (0.001, 100, 150)]  # each peaks at 249 tokens; two do not fit 320
    result = simulate(schedule(requests), perf, SimConfig(num_workers=1, oracle_lengths=True))
    assert result.central_queue_peak == 1 and result.central_queued == 1
    assert result.first_token[1] > result.last_token[0]  # placed when the first finished
    assert result.preemptions.sum() == 0


# --- validation, records, CLI ----------------------------------------------------------


def test_requests_larger_than_the_cache_are_refused():
    perf = PerfModel(PREFILL, DECODE, KVModel(16, 160), max_num_seqs=8, max_batched_tokens=2048)
    with pytest.raises(AladdinError, match="needs 199 KV tokens"):
        run_one_worker(perf, [(0.0, 100, 100)])
    with pytest.raises(AladdinError, match="--workers"):
        SimConfig(num_workers=0).validate()


def test_written_records_match_the_replay_schema_and_load_in_analysis(tmp_path):
    from aladdin.analysis.load import load_run_dir

    requests = [(0.05 * i, 10 + i, 3 + i % 4) for i in range(12)]
    result = simulate(schedule(requests), PERF, SimConfig(num_workers=2, policy="rr"))
    result.write(tmp_path / "run", label="sim", params={"policy": "rr", "ttft_slo": math.inf})
    lines = (tmp_path / "run" / "requests.jsonl").read_text().splitlines()
    assert len(lines) == 12
    records = list(result.records())
    for line, record in zip(lines, records):
        decoded = json.loads(line)
        expected = json.loads(json.dumps(asdict(record)))
        assert decoded.keys() == expected.keys()
        assert decoded["chunk_times"] == pytest.approx(expected["chunk_times"], abs=1e-6)
        for key in set(expected) - {"chunk_times", "first_byte", "done"}:
            assert decoded[key] == expected[key], key
    assert json.loads(lines[0]) == json.loads(json.dumps(asdict(RequestRecord(**json.loads(lines[0])))))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["simulated"] is True and run["status"] == "finished" and run["start_epoch"] == 0
    assert run["summary"]["requests"] == run["summary"]["ok"] == 12
    assert run["params"]["ttft_slo"] is None  # no SLO
    loaded = load_run_dir(tmp_path / "run")
    assert loaded.label == "sim" and len(loaded.requests) == 12
    assert int(loaded.requests["n_chunks"].sum()) == int(result.output_tokens.sum())
    with pytest.raises(AladdinError, match="already holds a run"):
        result.write(tmp_path / "run")


def test_simulate_command_end_to_end(tmp_path, tiny_model_dir):
    from aladdin.plugin.sim.cli import simulate as simulate_command

    profile = save_profile(tmp_path / "p.json", PERF, ProfileMeta("tiny", "sim", 2, "0.26.0", "test"))
    args = ["--profile", str(profile), "--dataset", "synthetic", "--prompt-tokens", "20:200", "--output-tokens", "5:80",
            "--rate", "20", "--num-requests", "200", "--workers", "3", "--policy", "aladdin",
            "--ttft-slo", "1", "--atgt-slo", "0.05", "--tokenizer", str(tiny_model_dir), "--output", str(tmp_path / "out")]
    runner = CliRunner()
    wrong = runner.invoke(simulate_command, args + ["--gpus-per-worker", "1"])
    assert wrong.exit_code != 0 and "gpus_per_worker" in wrong.output
    result = runner.invoke(simulate_command, args + ["--gpus-per-worker", "2"])
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["params"]["gpus_per_worker"] == 2 and run["params"]["policy"] == "aladdin"
    assert run["summary"]["requests"] == 200
    assert len((tmp_path / "out" / "requests.jsonl").read_text().splitlines()) == 200
    assert "SLO attainment" in result.output
    split = runner.invoke(simulate_command, args[:-1] + [str(tmp_path / "split"), "--gpus-per-worker", "2",
                                                          "--prefill-workers", "1", "--kv-transfer-us-per-token", "5"])
    assert split.exit_code == 0, split.output
    run = json.loads((tmp_path / "split" / "run.json").read_text())
    assert run["params"]["prefill_workers"] == 1 and run["params"]["kv_transfer_s_per_token"] == pytest.approx(5e-6)
    workers = {json.loads(line)["worker"] for line in (tmp_path / "split" / "requests.jsonl").read_text().splitlines()}
    assert workers <= {"w0", "w1", "w2"}  # every reply here has more than one token: decoded in the decode pool


# --- the simulate command as a user expects it (issue 13 item 4) --------------------------


@pytest.fixture
def profile_file(tmp_path):
    return save_profile(tmp_path / "p.json", PERF, ProfileMeta("tiny", "sim", 1, "0.26.0", "test"))


@pytest.fixture
def no_tokenizer(monkeypatch):
    """Loading a tokenizer fails the test: a workload of token counts must not need one."""
    def refuse(path):
        raise AssertionError(f"a tokenizer was loaded from {path}")

    monkeypatch.setattr("aladdin.loadgen.datasets.load_tokenizer", refuse)


def write_trace(path, count: int):
    """A generic trace of ``count`` requests, 0.25 s apart from t = 10 s."""
    rows = [f"{10 + 0.25 * i:.2f},{20 + i % 50},{3 + i % 7}" for i in range(count)]
    path.write_text("timestamp,prompt_tokens,output_tokens\n" + "\n".join(rows) + "\n")
    return path


def run_simulate(*args):
    from aladdin.plugin.sim.cli import simulate as simulate_command

    return CliRunner().invoke(simulate_command, [str(a) for a in args])


def scheduled_times(folder) -> list[float]:
    lines = (folder / "requests.jsonl").read_text().splitlines()
    return sorted(json.loads(line)["scheduled"] for line in lines)


def test_simulate_kv_tokens_overrides_the_profile_capacity(tmp_path, profile_file):
    args = ["--profile", profile_file, "--workers", "1", "--policy", "jsq", "--dataset", "synthetic",
            "--prompt-tokens", "200", "--output-tokens", "100", "--rate", "50", "-n", "40"]
    plain = run_simulate(*args, "-o", tmp_path / "plain")
    assert plain.exit_code == 0, plain.output
    small = run_simulate(*args, "--kv-tokens", "1000", "-o", tmp_path / "small")  # 62 blocks of 16: 992 tokens
    assert small.exit_code == 0, small.output
    plain_run = json.loads((tmp_path / "plain" / "run.json").read_text())
    small_run = json.loads((tmp_path / "small" / "run.json").read_text())
    assert plain_run["params"]["kv_tokens"] == PERF.kv.capacity_tokens
    assert small_run["params"]["kv_tokens"] == 992
    assert plain_run["summary"]["preemptions"] == 0 < small_run["summary"]["preemptions"]
    too_small = run_simulate(*args, "--kv-tokens", "256", "-o", tmp_path / "too-small")
    assert too_small.exit_code != 0 and "more than a worker's 256" in too_small.output
    below_a_block = run_simulate(*args, "--kv-tokens", "15", "-o", tmp_path / "tiny")
    assert below_a_block.output.strip().splitlines() == ["Error: --kv-tokens 15 is less than one KV block (16 tokens)"]


def test_simulate_trace_uses_the_whole_trace_and_its_timestamps(tmp_path, profile_file):
    from aladdin.loadgen.workload import WorkloadConfig

    trace = write_trace(tmp_path / "trace.csv", 150)  # more than the 100 requests other datasets default to
    config = WorkloadConfig(dataset="trace", dataset_path=str(trace))
    assert (config.num_requests, config.arrival, config.rate) == (None, "trace", None)
    assert (WorkloadConfig().num_requests, WorkloadConfig().arrival, WorkloadConfig().rate) == (100, "poisson", 1.0)
    args = ["--profile", profile_file, "--workers", "2", "--dataset", "trace", "--dataset-path", trace]
    whole = run_simulate(*args, "-o", tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    assert scheduled_times(tmp_path / "whole") == pytest.approx([0.25 * i for i in range(150)])
    cut = run_simulate(*args, "-n", "20", "-o", tmp_path / "cut")  # an explicit -n still applies
    assert cut.exit_code == 0, cut.output
    assert scheduled_times(tmp_path / "cut") == pytest.approx([0.25 * i for i in range(20)])
    poisson = run_simulate(*args, "--arrival", "poisson", "--rate", "2", "-o", tmp_path / "poisson")
    assert poisson.exit_code == 0, poisson.output
    times = scheduled_times(tmp_path / "poisson")
    assert len(times) == 150 and times != pytest.approx([0.25 * i for i in range(150)])
    rate_alone = run_simulate(*args, "--rate", "2", "-o", tmp_path / "rate")
    assert rate_alone.exit_code != 0 and len(rate_alone.output.strip().splitlines()) == 1
    assert "--rate does not apply to a trace's own timestamps" in rate_alone.output


def test_simulate_loads_no_tokenizer_for_token_counts(tmp_path, profile_file, no_tokenizer):
    trace = write_trace(tmp_path / "trace.csv", 30)
    for name, workload in (("synthetic", ["--dataset", "synthetic", "--prompt-tokens", "10:90", "-n", "30"]),
                           ("trace", ["--dataset", "trace", "--dataset-path", trace])):
        result = run_simulate("--profile", profile_file, "--workers", "1", *workload, "-o", tmp_path / name)
        assert result.exit_code == 0, result.output
        assert len((tmp_path / name / "requests.jsonl").read_text().splitlines()) == 30
    missing = run_simulate("--profile", profile_file, "--workers", "1", "--dataset", "synthetic",
                           "--tokenizer", tmp_path / "nope", "-o", tmp_path / "missing")
    assert missing.exit_code != 0 and f"tokenizer folder {tmp_path / 'nope'} does not exist" in missing.output


def test_counts_only_specs_match_the_synthesized_lengths(tiny_model_dir):
    from aladdin.loadgen.datasets import load_tokenizer, synthetic

    counts = synthetic(None, 20, (5, 50), (2, 9), seed=3)
    texts = synthetic(load_tokenizer(tiny_model_dir), 20, (5, 50), (2, 9), seed=3)
    assert [(s.prompt_tokens, s.output_tokens) for s in counts] == [(s.prompt_tokens, s.output_tokens) for s in texts]
    assert all(s.prompt == "" and s.prompt_token_ids is None for s in counts)


def test_simulate_without_an_slo_reports_no_attainment(tmp_path, profile_file):
    args = ["--profile", profile_file, "--workers", "1", "--dataset", "synthetic", "--rate", "200", "-n", "60"]
    none = run_simulate(*args, "-o", tmp_path / "none")
    assert none.exit_code == 0, none.output
    assert "SLO attainment" not in none.output and "no SLO was given" in none.output
    assert json.loads((tmp_path / "none" / "run.json").read_text())["summary"]["slo_attainment"] is None
    tiers = run_simulate(*args, "--slo-tiers", "tight:0.5:ttft=0.0001,atgt=1;loose:0.5:ttft=100,atgt=1",
                         "-o", tmp_path / "tiers")  # no run-wide SLO, but every request has its own
    assert tiers.exit_code == 0, tiers.output
    attained = json.loads((tmp_path / "tiers" / "run.json").read_text())["summary"]["slo_attainment"]
    assert 0.2 < attained < 0.8  # the tight tier misses, the loose one meets
    assert f"SLO attainment {100 * attained:.1f}%" in tiers.output
