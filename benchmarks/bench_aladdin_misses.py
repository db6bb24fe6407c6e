"""Where aladdin's SLO misses come from: by how far each request's true length was off its prediction.

    python benchmarks/bench_aladdin_misses.py --rate 12 --workers 4 --out benchmarks/results/aladdin_misses.json

One simulation of ShareGPT lengths (Poisson at ``--rate`` on ``--workers`` workers of the
A100-like model of bench_sim.py, or ``--profile``), SLOs = 25x / 2x the unloaded TTFT / per-token
time, aladdin with the online predictor at ``--headroom``. Prints the share of requests missing
the ATGT SLO per band of actual / first predicted output length, and how far the misses are over.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from bench_sim import A100_7B

from aladdin.plugin.core.policies import named_policy
from aladdin.plugin.plan.planner import Workload, unloaded_latency
from aladdin.plugin.profile.io import load_profile
from aladdin.plugin.sim.simulator import ClusterSimulator, SimConfig

BANDS = ((0.0, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, np.inf))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--rate", type=float, default=12.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=2400)
    parser.add_argument("--headroom", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("aladdin_misses.json"))
    args = parser.parse_args()

    perf = load_profile(args.profile) if args.profile else A100_7B
    workload = Workload.sharegpt(1000, seed=args.seed)
    ttft0, token0 = unloaded_latency(perf, workload)
    ttft_slo, atgt_slo = 25 * ttft0, 2 * token0
    config = SimConfig(num_workers=args.workers, ttft_slo=ttft_slo, atgt_slo=atgt_slo, seed=args.seed)
    result = ClusterSimulator(perf, config, named_policy("aladdin", args.headroom)).run(workload.schedule(args.rate, args.requests))
    atgt = np.nan_to_num(result.atgt, nan=0.0)
    miss = atgt > atgt_slo
    ratio = result.output_tokens / result.first_prediction
    rows = []
    print(f"SLOs: TTFT {1000 * ttft_slo:.1f}ms, ATGT {1000 * atgt_slo:.2f}ms; attainment "
          f"{result.attainment(ttft_slo, atgt_slo):.4f}; ATGT misses {miss.mean():.4f}")
    print(f"{'actual / predicted':>20} {'requests':>9} {'ATGT miss share':>16}")
    for low, high in BANDS:
        band = (ratio >= low) & (ratio < high)
        rows.append({"low": low, "high": None if np.isinf(high) else high, "requests": int(band.sum()),
                     "miss_share": float(miss[band].mean()) if band.any() else None})
        print(f"{f'[{low:g}, {high:g})':>20} {int(band.sum()):>9} {rows[-1]['miss_share'] or 0:>16.3f}")
    over = np.percentile(atgt[miss] / atgt_slo, [10, 50, 90]).tolist() if miss.any() else []
    print("misses' ATGT / SLO, p10 p50 p90:", " ".join(f"{x:.4f}" for x in over))
    document = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "ttft_slo_s": ttft_slo, "atgt_slo_s": atgt_slo, "attainment": result.attainment(ttft_slo, atgt_slo),
                "atgt_miss_share": float(miss.mean()), "bands": rows, "miss_atgt_over_slo_p10_p50_p90": over}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
