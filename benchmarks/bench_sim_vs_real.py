"""The simulator against the real thing: one ShareGPT workload on a real vLLM CPU worker and in
the simulator with that worker's profile, analysed side by side.

Both runs are built by the same code from the same flags (same sample, same Poisson schedule):
`aladdin replay` against a local worker started with the profile's configuration, and
`aladdin simulate --workers 1`; `aladdin analyze` computes both runs' metrics.

    .venv/bin/python benchmarks/bench_sim_vs_real.py --profile profiles/cpu-tiny.json --rate 2 \
        --num-requests 100 --out benchmarks/results/sim_vs_real.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def aladdin(*args) -> None:
    proc = subprocess.run([sys.executable, "-m", "aladdin", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="profiles/cpu-tiny.json")
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--num-requests", type=int, default=100)
    parser.add_argument("--max-output-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/sim_vs_real.json")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from aladdin.cluster import ClusterConfig, LocalCluster
    from aladdin.plugin.profile_io import load_profile
    from tests.conftest import free_port_block

    perf = load_profile(args.profile)
    workload = ["--dataset", "sharegpt", "-n", args.num_requests, "--rate", args.rate, "--seed", args.seed,
                "--max-output-tokens", args.max_output_tokens]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = ClusterConfig(workers=1, kv_tokens=perf.kv.capacity_tokens + perf.kv.block_size,
                               max_num_seqs=perf.max_num_seqs, max_num_batched_tokens=perf.max_batched_tokens,
                               base_port=free_port_block(1), state_dir=tmp / "cluster")
        with LocalCluster(config) as cluster:
            aladdin("replay", "--host", cluster.urls[0], *workload, "--output", tmp / "real", "--label", "real vLLM")
        aladdin("simulate", "--profile", args.profile, "--workers", 1, "--policy", "jsq", *workload,
                "--output", tmp / "sim", "--label", "simulator")
        aladdin("analyze", tmp / "real", tmp / "sim", "--ttft-slo", 1, "--atgt-slo", 0.05, "--json", tmp / "a.json")
        runs = json.loads((tmp / "a.json").read_text())["runs"]
    rows = {}
    for run in runs:
        lat = run["latency_s"]
        rows[run["label"]] = {f"{m}_{p}_ms": lat[m][p] * 1e3 for m in ("ttft", "atgt") for p in ("p50", "p99")}
    real, sim = rows["real vLLM"], rows["simulator"]
    diff = {k: 100 * (sim[k] / real[k] - 1) for k in real}
    cols = list(real)
    print(f"{'run':12} " + " ".join(f"{c:>12}" for c in cols))
    for name, row in rows.items():
        print(f"{name:12} " + " ".join(f"{row[c]:>12.2f}" for c in cols))
    print("simulator vs real, % difference: " + ", ".join(f"{k} {v:+.1f}%" for k, v in diff.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                                          "args": vars(args), "rows": rows, "pct_difference": diff}, indent=2))


if __name__ == "__main__":
    main()
