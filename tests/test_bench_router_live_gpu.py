"""benchmarks/bench_router_live_gpu.py on stand-in runs: simulated run folders take the place of the
live GPU runs (this tests the analysis, not a cluster), with the files router_live_gpu.sh adds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILE = str(ROOT / "profiles" / "cpu-tiny.json")


def stand_in(folder: Path, policy: str, share_gpu: bool) -> None:
    subprocess.run([sys.executable, "-m", "aladdin", "simulate", "--profile", PROFILE, "--workers", "2", "--policy",
                    policy, "--dataset", "synthetic", "-n", "30", "--rate", "4", "--prompt-tokens", "32:64",
                    "--output-tokens", "8:16", "--output", str(folder), "--label", policy], check=True, capture_output=True)
    (folder / "counters.json").write_text('{"preemptions": 0}')
    (folder / "server.json").write_text(json.dumps({"workers": 2, "share_gpu": share_gpu, "num_gpu_blocks_override": None,
                                                    "prefix_caching": False, "kv_tokens_each": [16352, 16352],
                                                    "engine_plugin": True, "gpu": "stand-in"}))


def test_each_run_is_analysed_beside_its_simulation_and_the_goal_is_checked(tmp_path):
    for policy in ("aladdin", "jsq"):
        stand_in(tmp_path / "runs" / "main" / policy, policy, share_gpu=True)
    out = tmp_path / "live.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_router_live_gpu.py"), "--runs",
                           str(tmp_path / "runs"), "--profile", PROFILE, "--ttft-slo", "1", "--atgt-slo", "0.05",
                           "--out", str(out)], capture_output=True, text=True, check=True)
    document = json.loads(out.read_text())
    runs = document["passes"]["main"]
    assert set(runs) == {"aladdin", "jsq"} and document["share_gpu"] is True
    for run in runs.values():
        assert run["real"]["requests"] == run["sim"]["requests"] == 30
        assert run["sim_comparable"] is False  # the workers shared a GPU: the profile's times do not hold
        assert "--workers 2" in run["simulate"] and "--kv-tokens 16352" in run["simulate"]
    assert list(document["goals"]) == ["main: aladdin attains more than jsq"]
    assert "goals:" in proc.stdout
