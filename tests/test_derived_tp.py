"""benchmarks/derived_vs_measured_tp.py: a derived TP profile scored on its measured twin's samples."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel
from aladdin.plugin.profile.fit import TensorParallelAssumptions, scale_tensor_parallel
from aladdin.plugin.profile.io import ProfileMeta, load_profile, save_profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
ONE_GPU = PerfModel(PrefillModel(2e-5, 7e-10, 0.015), DecodeModel(2.4e-5, 1.2e-7, 0.0045), KVModel(16, 16 * 14000),
                    256, 8192, meta={"gpus_per_worker": 1})


def write_pair(folder: Path) -> PerfModel:
    """A derived 2-GPU profile (default assumptions) and a 'measured' one that splits less of the
    fixed cost, with samples that its own model gives exactly."""
    shape = dict(num_layers=32, weight_bytes=13_000_000_000, kv_bytes_per_token=524_288)
    derived = scale_tensor_parallel(ONE_GPU, 2, **shape)
    measured = scale_tensor_parallel(ONE_GPU, 2, **shape, assumptions=TensorParallelAssumptions(parallel_share=0.5))
    prompts = np.array([16.0, 128, 512, 2048])
    batch, context = np.array([1.0, 16, 64, 256]), np.array([300.0, 5000, 20000, 80000])
    samples = {"prefill": {"prompt_tokens": prompts, "time": measured.prefill.time_single(prompts)},
               "decode": {"batch_size": batch, "total_context": context, "time": measured.decode.time(batch, context)}}
    meta = ProfileMeta("llama2-7b", "NVIDIA H200", 2, "0.26.0", "test")
    save_profile(folder / "h200-llama2-7b-tp2-derived.json", derived, meta)
    save_profile(folder / "h200-llama2-7b-tp2.json", measured, meta, samples=samples)
    return derived


def test_a_derived_profile_is_scored_on_the_measured_workers_samples(tmp_path):
    derived = write_pair(tmp_path)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "derived_vs_measured_tp.py"),
                           "--profiles", str(tmp_path), "--results", str(tmp_path)],
                          capture_output=True, text=True, check=True)
    report = json.loads((tmp_path / "derived_tp_error_h200.json").read_text())
    pair = report["pairs"]["llama2-7b-tp2"]
    assert pair["status"] == "compared" and "own profiling samples" in pair["samples"]
    assert pair["errors"]["measured"]["decode"]["median_pct"] == pytest.approx(0.0, abs=1e-9)
    assert pair["errors"]["derived"]["decode"]["median_pct"] > 1.0  # its fixed cost splits more than measured
    assert pair["kv_capacity_tokens"] == {"derived": derived.kv.capacity_tokens, "measured": derived.kv.capacity_tokens,
                                          "error_pct": 0.0}
    assert report["pairs"]["llama2-7b-tp4"] == {"status": "no derived profile"}
    assert "llama2-7b-tp2" in proc.stdout


def test_held_out_validation_samples_win_over_the_profiles_own(tmp_path):
    driver = importlib.import_module("derived_vs_measured_tp")
    derived = write_pair(tmp_path)
    validation = tmp_path / "profile_validation_h200_7b_tp2.json"
    validation.write_text(json.dumps({"raw": {"prefill": {"prompt_tokens": [100], "time": [derived.prefill.time_single(100)]},
                                              "decode": {"batch_size": [8], "total_context": [2000],
                                                         "time": [float(derived.decode.time(8, 2000))]}}}))
    entry = driver.compare(derived, load_profile(tmp_path / "h200-llama2-7b-tp2.json"), validation)
    assert entry["samples"] == str(validation)
    assert entry["errors"]["derived"]["prefill"]["median_pct"] == pytest.approx(0.0, abs=1e-9)
