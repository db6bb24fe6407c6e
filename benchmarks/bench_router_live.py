"""Live placement through the router on real vLLM CPU workers: aladdin vs jsq vs po2.

Two tiny-model CPU workers with small KV caches and the engine plugin, one ShareGPT schedule
(Poisson) replayed through ``aladdin router`` under each policy, then the same on stock vLLM
behind round robin; and a second pass with a two-tier SLO mix (per-request SLO headers).
Each pass is one ``aladdin demo`` (the same orchestration users run). Reported per run: joint
attainment, goodput, TTFT/ATGT p99, the workers' preemptions, and the router's decision latency
under that load (its ``aladdin_router_decision_seconds`` histogram from ``/metrics``).

    python benchmarks/bench_router_live.py                 # ~10 min on 2 cores
    python benchmarks/bench_router_live.py --runs DIR      # re-analyse kept runs (DIR/single, DIR/tiers)

Writes benchmarks/results/router_live_cpu.json. Goal: aladdin's joint attainment strictly higher
than jsq's, with one SLO and with the two-tier mix.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aladdin.cluster import free_port_block
from aladdin.demo import FRONT_END_METRICS_FILE, STOCK_RUN
from aladdin.machine import cpu_description
from aladdin.plugin.router.workers import parse_metrics

DECISION_SERIES = "aladdin_router_decision_seconds"
TIERS = "interactive:0.7:ttft=1,atgt=0.05;batch:0.3:ttft=10,atgt=0.2"


def histogram(text: str, name: str) -> dict:
    """One Prometheus histogram (summed over labels): count, mean, p50/p99 (bucket upper bounds)."""
    samples = parse_metrics(text)
    buckets: dict[float, float] = {}
    for labels, value in samples.get(name + "_bucket", []):
        bound = math.inf if labels["le"] == "+Inf" else float(labels["le"])
        buckets[bound] = buckets.get(bound, 0.0) + value
    count = sum(v for _, v in samples.get(name + "_count", []))
    total = sum(v for _, v in samples.get(name + "_sum", []))

    def quantile(q: float) -> float | None:
        for bound in sorted(buckets):
            if count and buckets[bound] >= q * count:
                return bound
        return None

    ms = lambda v: None if v is None or not math.isfinite(v) else round(v * 1000, 4)  # noqa: E731
    return {"count": int(count), "mean_ms": ms(total / count) if count else None,
            "p50_le_ms": ms(quantile(0.5)), "p99_le_ms": ms(quantile(0.99)),
            "buckets_le_ms": {str(ms(b) if math.isfinite(b) else "+Inf"): int(v) for b, v in sorted(buckets.items())}}


def demo(args, out: Path, policies: list[str], *extra) -> list[str]:
    command = [sys.executable, "-m", "aladdin", "demo", "-n", str(args.num_requests), "--rate", str(args.rate),
               "--kv-tokens", str(args.kv_tokens), "--max-output-tokens", str(args.max_output_tokens),
               "--ttft-slo", str(args.ttft_slo), "--atgt-slo", str(args.atgt_slo), "--seed", str(args.seed),
               "--base-port", str(free_port_block(3)), "-o", str(out),
               *[a for p in policies for a in ("--policy", p)], *extra]
    print("$", shlex.join(command[2:]), flush=True)
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"aladdin demo failed:\n{proc.stderr[-3000:]}")
    print(proc.stdout, flush=True)
    return ["aladdin", *command[3:]]


def rows(folder: Path) -> dict[str, dict]:
    out = {}
    for run in json.loads((folder / "analysis.json").read_text())["runs"]:
        metrics_file = folder / run["label"] / FRONT_END_METRICS_FILE
        lat = run["latency_s"]
        out[run["label"]] = {
            "requests": run["counts"]["requests"], "errors": run["counts"]["errors"] + run["counts"]["timeouts"],
            "joint_attainment": run["attainment"]["joint"], "goodput_rps": run["throughput"]["goodput_rps"],
            "offered_rps": run["throughput"]["offered_rps"],
            "ttft_p99_ms": round(lat["ttft"]["p99"] * 1000, 1), "atgt_p99_ms": round(lat["atgt"]["p99"] * 1000, 2),
            "preemptions": run["preemptions"]["count"],
            "tiers": run.get("tiers") or None,
            "decision_latency": histogram(metrics_file.read_text(), DECISION_SERIES) if metrics_file.exists() else None,
        }
    return out


def print_table(title: str, table: dict[str, dict]) -> None:
    print(f"\n{title}")
    print(f"{'run':<10} {'attained':>9} {'goodput':>8} {'TTFT p99':>9} {'ATGT p99':>9} {'preempt':>8} "
          f"{'errors':>6} {'decision p99':>13}")
    for name, r in table.items():
        decision = (r["decision_latency"] or {}).get("p99_le_ms")
        tiers = "  " + ", ".join(f"{t}: {v['joint_attainment']:.1%}" for t, v in r["tiers"].items()) if r["tiers"] else ""
        print(f"{name:<10} {r['joint_attainment']:>9.1%} {r['goodput_rps']:>8.2f} {r['ttft_p99_ms']:>9.0f} "
              f"{r['atgt_p99_ms']:>9.1f} {r['preemptions']:>8} {r['errors']:>6} "
              f"{'<= ' + str(decision) + ' ms' if decision is not None else '-':>13}{tiers}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2.5)
    parser.add_argument("-n", "--num-requests", type=int, default=100)
    parser.add_argument("--kv-tokens", type=int, default=4096, help="KV cache of each worker, tokens")
    parser.add_argument("--max-output-tokens", type=int, default=256)
    parser.add_argument("--ttft-slo", type=float, default=1.0)
    parser.add_argument("--atgt-slo", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiers", default=TIERS, help="the two-tier SLO mix (--slo-tiers spec)")
    parser.add_argument("--tiers-queue-order", choices=["fcfs", "edf"], default="edf",
                        help="the router's queue order in the two-tier pass (edf: tight TTFTs first)")
    parser.add_argument("--only", choices=["single", "tiers"], default=None,
                        help="run one pass; the other is read from --keep DIR (a run kept before)")
    parser.add_argument("--runs", type=Path, default=None, help="re-analyse DIR/single and DIR/tiers")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    parser.add_argument("--out", default="benchmarks/results/router_live_cpu.json")
    args = parser.parse_args()

    started = time.time()
    if args.only and not args.keep:
        raise SystemExit("--only needs --keep DIR, where the other pass was kept")
    root = args.runs or args.keep or Path(tempfile.mkdtemp(prefix="router_live_"))
    commands_file = root / "commands.json"
    commands = json.loads(commands_file.read_text()) if commands_file.exists() else {}
    if args.runs is None:
        root.mkdir(parents=True, exist_ok=True)
        for name in ("single", "tiers"):
            if args.only in (None, name):
                shutil.rmtree(root / name, ignore_errors=True)  # a pass re-run replaces the kept one
        if args.only in (None, "single"):
            commands["single"] = demo(args, root / "single", ["aladdin", "jsq", "po2"])
        if args.only in (None, "tiers"):
            commands["tiers"] = demo(args, root / "tiers", ["aladdin", "jsq"], "--no-stock", "--slo-tiers", args.tiers,
                                     "--queue-order", args.tiers_queue_order)
        commands_file.write_text(json.dumps(commands, indent=2) + "\n")
    single, tiers = rows(root / "single"), rows(root / "tiers")
    print_table(f"one SLO (TTFT <= {args.ttft_slo:g} s, ATGT <= {args.atgt_slo * 1000:g} ms)", single)
    print_table(f"two tiers ({args.tiers})", tiers)
    goals = {
        "aladdin_attainment_above_jsq": single["aladdin"]["joint_attainment"] > single["jsq"]["joint_attainment"],
        "aladdin_attainment_above_jsq_two_tiers": tiers["aladdin"]["joint_attainment"] > tiers["jsq"]["joint_attainment"],
    }
    print("\ngoals:", ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()))
    document = {
        "benchmark": "router_live_cpu",
        "machine": cpu_description(),
        "commands": commands or None,
        "wall_s": round(time.time() - started),
        "workload": {"dataset": "sharegpt", "num_requests": args.num_requests, "rate": args.rate, "seed": args.seed,
                     "max_output_tokens": args.max_output_tokens, "arrival": "poisson"},
        "workers": {"count": 2, "kv_tokens": args.kv_tokens, "engine_plugin": True,
                    "stock_baseline": f"{STOCK_RUN}: stock vLLM, router --policy rr"},
        "slo": {"ttft_s": args.ttft_slo, "atgt_s": args.atgt_slo},
        "runs": single,
        "two_tier": {"tiers": args.tiers, "router_queue_order": args.tiers_queue_order, "runs": tiers},
        "goals": goals,
    }
    Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
