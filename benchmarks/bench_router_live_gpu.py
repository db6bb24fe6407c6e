"""A live GPU cluster behind the router, and the simulator's prediction of the same runs (issue 16).

Reads the run folders of ``scripts/gpu/router_live_gpu.sh`` (``DIR/main/POLICY`` and
``DIR/kv_bound/POLICY``: the replay through the router, ``counters.json`` with the workers'
preemptions, ``server.json`` with their flags and KV caches). For each run it simulates the same
schedule (rebuilt from the run's workload flags with ``--tokenizer``) on as many workers with the
profile, the run's KV caches and policy, prefix caching off as the workers had it, and analyses
both with the same SLOs: joint attainment, goodput, TTFT/ATGT p99 and preemptions side by side.

    .venv/bin/python benchmarks/bench_router_live_gpu.py --runs DIR --tokenizer /tmp/models/llama2-7b

Writes benchmarks/results/router_live_gpu.json. Goal (issue 16): aladdin attains more than jsq
and po2 in each pass. A run whose workers shared one GPU (``share_gpu``: the rehearsal on a
one-GPU kind) is marked so: the profile's times are those of a whole GPU per worker, so its
simulated side is not a prediction of that run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench_sim_vs_real import aladdin, command_line, workload_flags

PASSES = ("main", "kv_bound")


def row(run: dict) -> dict:
    lat = run["latency_s"]
    return {"requests": run["counts"]["requests"], "errors": run["counts"]["errors"] + run["counts"]["timeouts"],
            "joint_attainment": run["attainment"]["joint"], "goodput_rps": run["throughput"]["goodput_rps"],
            "offered_rps": run["throughput"]["offered_rps"], "ttft_p99_ms": round(lat["ttft"]["p99"] * 1e3, 1),
            "atgt_p99_ms": round(lat["atgt"]["p99"] * 1e3, 2), "preemptions": run["preemptions"]["count"]}


def compare(real: Path, args, tmp: Path) -> dict:
    """One live run and its simulation: rows, the commands, the workers' setup."""
    server = json.loads((real / "server.json").read_text())
    workload = json.loads((real / "run.json").read_text())["params"]["workload"]
    kv = server["kv_tokens_each"]
    sim = tmp / f"{real.parent.name}-{real.name}"
    sim_args = ["simulate", "--profile", args.profile, "--workers", server["workers"], "--policy", real.name,
                *workload_flags(workload, args.tokenizer), "--kv-tokens", min(kv), "--no-prefix-caching",
                "--ttft-slo", args.ttft_slo, "--atgt-slo", args.atgt_slo, "--output", sim, "--label", "simulator"]
    aladdin(*sim_args)
    report = tmp / f"{sim.name}.json"
    aladdin("analyze", real, sim, "--ttft-slo", args.ttft_slo, "--atgt-slo", args.atgt_slo, "--json", report)
    real_run, sim_run = json.loads(report.read_text())["runs"]
    return {"real": row(real_run), "sim": row(sim_run), "server": server, "workload": workload,
            "simulate": command_line(*[a if a != sim else "SIM_DIR" for a in sim_args]),
            "sim_comparable": not server.get("share_gpu")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="the runs/ folder of router_live_gpu.sh")
    parser.add_argument("--profile", default="profiles/h200-llama2-7b.json")
    parser.add_argument("--tokenizer", default=None, help="model folder the runs' prompts were counted with")
    parser.add_argument("--ttft-slo", type=float, default=0.385)
    parser.add_argument("--atgt-slo", type=float, default=0.00903)
    parser.add_argument("--command", default=None, help="how the runs were made (recorded)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/router_live_gpu.json"))
    args = parser.parse_args()
    passes, goals = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in PASSES:
            folder = args.runs / name
            if not folder.is_dir():
                continue
            runs = {run.name: compare(run, args, Path(tmp)) for run in sorted(folder.iterdir()) if run.is_dir()}
            passes[name] = runs
            print(f"\n{name}: {'policy':<8} {'attained real / sim':>20} {'goodput':>14} {'TTFT p99 ms':>16} "
                  f"{'ATGT p99 ms':>14} {'preempt':>10}")
            for policy, r in runs.items():
                real, sim = r["real"], r["sim"]
                print(f"{'':{len(name) + 2}}{policy:<8} {real['joint_attainment']:>9.1%} / {sim['joint_attainment']:<8.1%} "
                      f"{real['goodput_rps']:>6.2f} / {sim['goodput_rps']:<6.2f} {real['ttft_p99_ms']:>7.0f} / "
                      f"{sim['ttft_p99_ms']:<7.0f} {real['atgt_p99_ms']:>6.1f} / {sim['atgt_p99_ms']:<6.1f} "
                      f"{real['preemptions']!s:>4} / {sim['preemptions']!s:<4}")
            if "aladdin" in runs:
                others = [p for p in ("jsq", "po2") if p in runs]
                goals[f"{name}: aladdin attains more than {' and '.join(others)}"] = all(
                    runs["aladdin"]["real"]["joint_attainment"] > runs[p]["real"]["joint_attainment"] for p in others)
    if not passes:
        raise SystemExit(f"{args.runs}: no main/ or kv_bound/ run folders")
    first = next(iter(next(iter(passes.values())).values()))["server"]
    print("\ngoals:", ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()))
    document = {"benchmark": "router_live_gpu", "hardware": f"{first['workers']} workers on {first['gpu']}",
                "share_gpu": bool(first.get("share_gpu")), "command": args.command,
                "slo": {"ttft_s": args.ttft_slo, "atgt_s": args.atgt_slo}, "profile": args.profile,
                "passes": passes, "goals": goals}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
