"""Two of the regimes live, through the router on real vLLM CPU workers: aladdin vs jsq vs po2.

- ``heterogeneous``: two tiny-model workers of different sizes (KV caches of 2,048 and 8,160
  tokens, each with the engine plugin, one core each): jsq and po2 balance request counts, so
  the small worker gets as many requests as the large one; aladdin places by each worker's
  predicted KV and ATGT fill.
- ``multi_tier``: two equal workers and a 70/30 mix of tight (interactive) and loose (batch)
  SLOs, sent as per-request SLO headers; the router's queue is EDF.

Each pass is one ``aladdin demo`` (the orchestration users run), on the same ShareGPT schedule.

    python benchmarks/bench_regimes_live.py                # ~8 min on 2 quiet cores
    python benchmarks/bench_regimes_live.py --runs DIR     # re-analyse kept runs

Writes benchmarks/results/regimes_live_cpu.json. Goal (issue 15): aladdin's joint attainment
at least jsq's and po2's in both passes (live, a pool too small to count GPUs in).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from bench_router_live import TIERS, demo, print_table, rows

from aladdin.machine import cpu_description

POLICIES = ["aladdin", "jsq", "po2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2.5)
    parser.add_argument("-n", "--num-requests", type=int, default=100)
    parser.add_argument("--sizes", default="2080,8192", help="heterogeneous pass: KV tokens per worker")
    parser.add_argument("--kv-tokens", default="4096", help="the multi-tier pass: KV tokens of each worker")
    parser.add_argument("--max-output-tokens", type=int, default=256)
    parser.add_argument("--ttft-slo", type=float, default=1.0)
    parser.add_argument("--atgt-slo", type=float, default=0.05)
    parser.add_argument("--tiers", default=TIERS, help="the multi-tier pass's SLO mix (--slo-tiers spec)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=None, help="re-analyse DIR/heterogeneous and DIR/multi_tier")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    parser.add_argument("--out", default="benchmarks/results/regimes_live_cpu.json")
    args = parser.parse_args()

    started = time.time()
    root = args.runs or args.keep or Path(tempfile.mkdtemp(prefix="regimes_live_"))
    commands = {}
    if args.runs is None:
        root.mkdir(parents=True, exist_ok=True)
        for name in ("heterogeneous", "multi_tier"):
            shutil.rmtree(root / name, ignore_errors=True)
        commands["heterogeneous"] = demo(argparse.Namespace(**{**vars(args), "kv_tokens": args.sizes}),
                                         root / "heterogeneous", POLICIES, "--no-stock")
        commands["multi_tier"] = demo(args, root / "multi_tier", POLICIES, "--no-stock", "--slo-tiers", args.tiers,
                                      "--queue-order", "edf")
        (root / "commands.json").write_text(json.dumps(commands, indent=2) + "\n")
    else:
        commands = json.loads((root / "commands.json").read_text())
    passes = {name: rows(root / name) for name in ("heterogeneous", "multi_tier")}
    print_table(f"heterogeneous: KV {args.sizes} tokens, TTFT <= {args.ttft_slo:g} s, ATGT <= {args.atgt_slo * 1000:g} ms",
                passes["heterogeneous"])
    print_table(f"multi-tier: {args.tiers}", passes["multi_tier"])
    goals = {
        f"{name}_aladdin_at_least_every_baseline": all(
            table["aladdin"]["joint_attainment"] >= table[b]["joint_attainment"] for b in POLICIES[1:])
        for name, table in passes.items()
    }
    print("\ngoals:", ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()))
    document = {
        "benchmark": "regimes_live_cpu",
        "machine": cpu_description(),
        "commands": commands,
        "wall_s": round(time.time() - started),
        "workload": {"dataset": "sharegpt", "num_requests": args.num_requests, "rate": args.rate, "seed": args.seed,
                     "max_output_tokens": args.max_output_tokens, "arrival": "poisson"},
        "slo": {"ttft_s": args.ttft_slo, "atgt_s": args.atgt_slo, "tiers": args.tiers},
        "heterogeneous": {"kv_tokens": [int(s) for s in args.sizes.split(",")], "runs": passes["heterogeneous"]},
        "multi_tier": {"kv_tokens": int(args.kv_tokens), "router_queue_order": "edf", "runs": passes["multi_tier"]},
        "goals": goals,
    }
    Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
