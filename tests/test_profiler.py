"""The live profiler: sample extraction on known timelines, and a real quick profile + validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aladdin.loadgen.records import RequestRecord
from aladdin.plugin.profile.profiler import (
    admission_samples,
    decode_samples,
    drop_bursts,
    parse_cache_info,
    parse_kv_usage,
    prediction_errors,
)


def record(i: int, prompt: int, times: list[float]) -> RequestRecord:
    return RequestRecord(id=f"p{i}", scheduled=0.0, requested_output_tokens=len(times), dispatched=0.0, sent=0.0,
                         chunk_times=times, chunk_tokens=[1] * len(times), prompt_tokens=prompt)


def test_decode_samples_recover_iteration_times_despite_bursts():
    # Two requests decode in lockstep at 10 ms per iteration; request 1 then runs alone at 6 ms.
    # One of request 0's tokens reaches the client in a late burst: the median over requests ignores it.
    both = [0.1 + 0.010 * k for k in range(20)]
    alone = [both[-1] + 0.006 * k for k in range(1, 21)]
    r0 = list(both)
    r0[5] = r0[7] = r0[6]
    samples = decode_samples([record(0, 100, r0), record(1, 50, both + alone)], min_iterations=8)
    sizes, contexts, times = samples
    assert set(sizes) == {1.0, 2.0}
    assert np.allclose(times[sizes == 2], 0.010, rtol=0.03)
    assert np.allclose(times[sizes == 1], 0.006, rtol=0.03)
    assert (contexts[sizes == 2] > 150).all() and (contexts[sizes == 1] < 100).all()


def test_admission_samples_find_what_each_join_added_beyond_its_prefill():
    # Four requests decode in 10 ms steps. A one-token join prefilled in step 40 makes it 3 ms
    # longer and the next 0.5 ms (its release); its prefill work is 1 ms, so 2.5 ms is its cost.
    # Another joins in step 60 (+2 ms) and leaves in step 80 (+1 ms): 2 ms.
    steps = np.full(120, 0.010)
    steps[40] += 0.003
    steps[41] += 0.0005
    steps[60] += 0.002
    steps[81] += 0.001
    ends = 0.2 + np.cumsum(steps)
    batch = [record(i, 64, list(ends + 1e-4 * i)) for i in range(4)]  # delivered one after another
    once = record(9, 128, [ends[40] + 5e-5])
    stays = record(10, 128, list(ends[60:81] + 5e-5))
    early = record(11, 128, [ends[2]])  # before the batch is steady enough to compare: skipped
    samples = admission_samples(batch, [once, stays, early], lambda n: 1e-3 * n / 128)
    assert samples["prompt_tokens"].tolist() == [128.0, 128.0]
    assert samples["join_excess_s"] == pytest.approx([3.5e-3, 2e-3])
    assert samples["leave_excess_s"] == pytest.approx([0.0, 1e-3])
    assert samples["cost_s"] == pytest.approx([2.5e-3, 2e-3])


def test_metrics_parsing():
    text = (
        'vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25\n'
        'vllm:cache_config_info{block_size="32",engine="0",num_gpu_blocks="512"} 1.0\n'
    )
    assert parse_cache_info(text) == (512, 32)
    assert parse_kv_usage(text) == 0.25
    with pytest.raises(ValueError, match="cache_config_info"):
        parse_cache_info("# nothing here\n")


def aladdin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aladdin", *args], capture_output=True, text=True, timeout=600)


def test_malformed_profile_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "aladdin-profile", "version": 1, "prefill": ')
    proc = aladdin("profile", "validate", str(bad), "--host", "http://127.0.0.1:9")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "bad.json" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.vllm
@pytest.mark.slow
def test_quick_profile_and_validation_on_real_vllm(vllm_server, tmp_path):
    profile = tmp_path / "cpu.json"
    proc = aladdin("profile", "--host", vllm_server.url, "--quick", "--output", str(profile))
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(profile.read_text())
    assert doc["kv"] == {"block_size": 32, "num_blocks": 511, "capacity_tokens": 511 * 32}  # block 0 is vLLM's null block
    assert doc["prefill"]["fit"]["n_samples"] == 5 and doc["decode"]["fit"]["n_samples"] >= 6
    assert doc["vllm_version"].startswith("0.")
    assert doc["admission"]["cost_s"] >= 0 and doc["admission"]["n_samples"] >= 3
    assert "admission:" in proc.stdout

    report = tmp_path / "validation.json"
    proc = aladdin("profile", "validate", str(profile), "--host", vllm_server.url, "-n", "48", "--max-output-tokens", "128",
                   "--json", str(report))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("prefill", "decode", "kv"):
        assert name in proc.stdout
    models = json.loads(report.read_text())["models"]
    assert models["prefill"]["n"] == 24 and models["decode"]["n"] > 0 and models["kv"]["n"] > 0
    assert models["prefill"]["noise_floor_pct"] is not None

    # the admission cost measured again on the finished profile: every other field is kept
    remeasured = tmp_path / "remeasured.json"
    proc = aladdin("profile", "admission", str(profile), "--host", vllm_server.url, "--quick", "-o", str(remeasured))
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(remeasured.read_text())
    assert {k: again[k] for k in ("prefill", "decode", "kv", "created")} == {k: doc[k] for k in ("prefill", "decode", "kv", "created")}
    assert again["admission"]["command"].startswith("aladdin profile admission")
    assert len(again["samples"]["admission"]["cost_s"]) == again["admission"]["n_samples"]


def test_the_admission_cost_of_a_derived_profile_is_refused_in_one_line(tmp_path):
    derived = tmp_path / "tp2.json"
    measured = Path(__file__).resolve().parents[1] / "profiles" / "h200-llama2-7b.json"
    proc = aladdin("profile", "derive", str(measured), "--gpus", "2", "--shape", "llama2-7b",
                   "-o", str(derived))
    assert proc.returncode == 0, proc.stderr
    proc = aladdin("profile", "admission", str(derived), "--host", "http://127.0.0.1:9")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "is derived, not measured" in proc.stderr


def test_drop_bursts_removes_segments_faster_than_a_lone_request_could_decode():
    sizes = np.array([1, 1, 1, 64, 64, 64, 128])
    contexts = np.array([100, 101, 102, 6400, 6464, 6528, 12800])
    gaps = np.array([0.006, 0.0061, 0.0059, 0.012, 0.0012, 0.0125, 0.02])  # one 1.2 ms burst at batch 64
    kept = drop_bursts(sizes, contexts, gaps)
    assert kept[2].tolist() == [0.006, 0.0061, 0.0059, 0.012, 0.0125, 0.02]
    assert kept[0].tolist() == [1, 1, 1, 64, 64, 128]
    # without a reference batch of 3+ samples nothing is dropped
    assert drop_bursts(sizes[4:], contexts[4:], gaps[4:])[2].size == 3


def test_prediction_errors_skip_zero_measurements_and_carry_the_noise_floor():
    entry = prediction_errors(np.array([1.1, 0.9, 5.0]), np.array([1.0, 1.0, 0.0]), 2.5)
    assert entry["n"] == 2 and entry["median_pct"] == pytest.approx(10.0) and entry["noise_floor_pct"] == 2.5
    assert prediction_errors(np.array([1.0]), np.array([0.0]), None) == {
        "n": 0, "median_pct": None, "p90_pct": None, "max_pct": None, "noise_floor_pct": None}
