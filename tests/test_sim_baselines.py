"""The scheduler-core refactor left the baseline policies' simulations unchanged: same seed,
same requests.jsonl, byte for byte, as the simulator before it (hashes in
tests/data/baseline_records.json, written by that simulator on this very workload). That
simulator scheduled synchronously without prefix caching, so these runs turn both off."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from aladdin.loadgen.datasets import RequestSpec
from aladdin.loadgen.schedule import ScheduledRequest
from aladdin.plugin.profile.io import load_profile
from aladdin.plugin.sim.simulator import ClusterSimulator, SimConfig

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((ROOT / "tests/data/baseline_records.json").read_text())


def workload() -> list[ScheduledRequest]:
    rng = np.random.default_rng(7)
    n = 400
    prompts, outputs = rng.integers(4, 700, n), rng.integers(1, 400, n)
    offsets = np.cumsum(rng.exponential(1 / 10.0, n))
    return [ScheduledRequest(f"r{i}", float(offsets[i]), RequestSpec("", int(prompts[i]), int(outputs[i]), None, None, str(i)))
            for i in range(n)]


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_baseline_records_are_unchanged(key, tmp_path):
    policy, kv, prefill = key.split("/")
    base = load_profile(ROOT / "profiles/cpu-tiny.json")
    perf = base if kv == "kv" else dataclasses.replace(base, kv=dataclasses.replace(base.kv, capacity_tokens=base.kv.block_size * 96))
    config = SimConfig(num_workers=4, policy=policy, ttft_slo=2.0, atgt_slo=0.1, seed=3,
                       prefill_workers=int(prefill.removeprefix("prefill")), kv_transfer_s_per_token=1e-5,
                       prefix_caching=False, async_scheduling=False)
    result = ClusterSimulator(perf, config).run(workload())
    result.write(tmp_path / "run")
    assert hashlib.sha256((tmp_path / "run/requests.jsonl").read_bytes()).hexdigest() == GOLDEN[key]
