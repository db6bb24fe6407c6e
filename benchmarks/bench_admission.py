"""Admission on one real vLLM worker: stock vLLM, its own admission knobs, and the Aladdin plugin,
each replaying the same overloading ShareGPT schedule against a small KV cache.

Runs (the same server flags otherwise):

- ``stock``: vLLM's defaults;
- ``queued_tokens``: ``--max-num-queued-tokens`` = TTFT SLO x prefill throughput, as vLLM's help
  suggests (the profile's prefill model on a full token budget of the workload's median prompt);
- ``reserve_full_isl``: ``--scheduler-reserve-full-isl`` (already vLLM's default since 0.2x: run
  on its own, so the table shows it and the run-to-run spread);
- ``watermark``: ``--watermark 0.1`` (10% of the KV blocks kept free at admission);
- ``plugin``: ``--scheduler-cls ...AladdinScheduler`` with the front door, the profile and the SLOs.

For each: vLLM's preemption counter, joint SLO attainment, goodput, TTFT/ATGT p50/p99, errors, and
the plugin's rejected / handed-back totals. Local CPU workers (the default):

    .venv/bin/python benchmarks/bench_admission.py --out benchmarks/results/admission_cpu.json

With ``--runs DIR`` nothing is started: DIR holds one finished run folder per run name (with
``counters.json``), e.g. from ``scripts/gpu/admission_h200.sh`` on the GPU machine, and only the
analysis runs here.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from aladdin.machine import cpu_description

RUNS = ("stock", "queued_tokens", "reserve_full_isl", "watermark", "plugin")
WATERMARK = 0.1
LATENCIES = [f"{m}_{p}_ms" for m in ("ttft", "atgt") for p in ("p50", "p99")]


def aladdin(*args) -> None:
    proc = subprocess.run([sys.executable, "-m", "aladdin", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"aladdin {args[0]} failed:\n{proc.stderr[-3000:]}")


def queued_tokens_limit(perf, ttft_slo: float, prompt_tokens: int) -> int:
    """vLLM's suggested --max-num-queued-tokens: target TTFT x prefill throughput, the throughput
    of a backlog (the token budget filled with prompts of the workload's median length)."""
    prompts = [prompt_tokens] * max(perf.max_batched_tokens // prompt_tokens, 1)
    return max(int(ttft_slo * sum(prompts) / perf.prefill.time(prompts)), 1)


def run_flags(args, perf, median_prompt: int) -> dict[str, list[str]]:
    from aladdin.plugin.vllm.launch import plugin_flags

    return {
        "stock": [],
        "queued_tokens": ["--max-num-queued-tokens", str(queued_tokens_limit(perf, args.ttft_slo, median_prompt))],
        "reserve_full_isl": ["--scheduler-reserve-full-isl"],
        "watermark": ["--watermark", str(WATERMARK)],
        "plugin": plugin_flags(args.profile, args.ttft_slo, args.atgt_slo),
    }


def workload_flags(args) -> list:
    return ["--dataset", "sharegpt", "-n", args.num_requests, "--rate", args.rate, "--seed", args.seed,
            "--max-output-tokens", args.max_output_tokens, "--max-total-tokens", args.max_model_len]


def median_prompt_tokens(args) -> int:
    from aladdin.loadgen.schedule import build_schedule, workload_tokenizer
    from aladdin.loadgen.workload import WorkloadConfig

    config = WorkloadConfig(num_requests=args.num_requests, rate=args.rate, seed=args.seed,
                            max_output_tokens=args.max_output_tokens, max_total_tokens=args.max_model_len)
    prompts = sorted(item.spec.prompt_tokens for item in build_schedule(config, workload_tokenizer(config)))
    return prompts[len(prompts) // 2]


def run_local(args, perf, root: Path) -> dict[str, list[str]]:
    """Start one CPU worker per run, replay, read its counters, stop it."""
    from aladdin.cluster import ClusterConfig, LocalCluster, free_port_block, server_counters
    from aladdin.plugin.vllm.launch import PLUGIN_ENVIRONMENT

    flags = run_flags(args, perf, median_prompt_tokens(args))
    for name in args.only or RUNS:
        print(f"== {name}: {shlex.join(flags[name]) or '(vLLM defaults)'}", flush=True)
        config = ClusterConfig(workers=1, kv_tokens=args.kv_tokens, max_model_len=args.max_model_len,
                               max_num_seqs=perf.max_num_seqs, max_num_batched_tokens=perf.max_batched_tokens,
                               base_port=free_port_block(1), state_dir=root / f"{name}-cluster",
                               extra_args=tuple(flags[name]),
                               env=PLUGIN_ENVIRONMENT)  # every run: only --scheduler-cls turns the plugin on
        with LocalCluster(config) as cluster:
            aladdin("replay", "--host", cluster.urls[0], *workload_flags(args), "--output", root / name,
                    "--label", name)
            (root / name / "counters.json").write_text(json.dumps(server_counters(cluster.urls[0])) + "\n")
    return flags


def analyse(args, root: Path, names: list[str]) -> dict[str, dict]:
    out = root / "analysis.json"
    aladdin("analyze", *[root / n for n in names], "--ttft-slo", args.ttft_slo, "--atgt-slo", args.atgt_slo,
            "--json", out)
    analysed = {run["label"]: run for run in json.loads(out.read_text())["runs"]}
    rows = {}
    for name in names:
        run = analysed[name]
        counters = json.loads((root / name / "counters.json").read_text())
        lat = run["latency_s"]
        rows[name] = {
            "preemptions": int(counters["preemptions"]),
            "goodput_rps": run["throughput"]["goodput_rps"],
            "attainment": run["attainment"]["joint"],
            **{f"{m}_{p}_ms": (lat[m][p] * 1e3 if lat[m][p] is not None else None)
               for m in ("ttft", "atgt") for p in ("p50", "p99")},
            "requests": run["counts"]["requests"],
            "ok": run["counts"]["ok"],
            "errors": run["counts"]["errors"],
            "rejected": int(counters["rejected"]),
            "handed_back": int(counters["handed_back"]),
            "achieved_rps": run["throughput"]["achieved_rps"],
        }
    return rows


def print_table(rows: dict[str, dict]) -> None:
    cols = ["preemptions", "attainment", "goodput_rps", *LATENCIES, "errors", "rejected", "handed_back"]
    print(f"{'run':17}" + "".join(f"{c:>14}" for c in cols))
    for name, row in rows.items():
        cells = []
        for c in cols:
            v = row[c]
            cells.append(f"{'-':>14}" if v is None else f"{v:>14.3f}" if isinstance(v, float) else f"{v:>14}")
        print(f"{name:17}" + "".join(cells))


def goals(rows: dict[str, dict]) -> dict:
    plugin = rows.get("plugin")
    if plugin is None or "stock" not in rows:
        return {}
    stock_goodput = rows["stock"]["goodput_rps"] or 0.0
    knobs = [n for n in rows if n != "plugin" and "skipped" not in rows[n]]
    return {
        "zero_preemptions": plugin["preemptions"] == 0,
        "goodput_vs_stock": plugin["goodput_rps"] / stock_goodput if stock_goodput else None,
        "goodput_at_least_1_3x_stock": bool(stock_goodput and plugin["goodput_rps"] >= 1.3 * stock_goodput),
        "goodput_above_every_knob": all(plugin["goodput_rps"] > rows[n]["goodput_rps"] for n in knobs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="profiles/cpu-tiny.json", help="the worker's profile (the plugin's "
                        "time model, the server's max sequences and token budget)")
    parser.add_argument("--kv-tokens", type=int, default=4128, help="KV cache of the worker, tokens")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--rate", type=float, default=4.0)
    parser.add_argument("-n", "--num-requests", type=int, default=160)
    parser.add_argument("--max-output-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ttft-slo", type=float, default=1.0, help="seconds")
    parser.add_argument("--atgt-slo", type=float, default=0.05, help="seconds per output token")
    parser.add_argument("--only", action="append", choices=RUNS, help="run just these (repeatable)")
    parser.add_argument("--runs", type=Path, default=None, metavar="DIR",
                        help="analyse finished run folders DIR/<run name> instead of starting workers")
    parser.add_argument("--skipped", action="append", default=[], metavar="RUN:REASON",
                        help="with --runs: a run that was not made, and why (recorded in the JSON)")
    parser.add_argument("--hardware", default=None, help="what the runs ran on (default: this machine)")
    parser.add_argument("--run-command", default=None, help="with --runs: how the runs were made")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="write the run folders here (default: a temporary folder, removed)")
    parser.add_argument("--out", default="benchmarks/results/admission_cpu.json")
    args = parser.parse_args()

    from aladdin.plugin.profile.io import load_profile

    perf = load_profile(args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        if args.runs is not None:
            root, flags = args.runs, None
            names = [n for n in RUNS if (root / n / "requests.jsonl").exists()]
            if not names:
                raise SystemExit(f"{root}: no run folders named {', '.join(RUNS)}")
        else:
            root = args.keep or Path(tmp)
            root.mkdir(parents=True, exist_ok=True)
            flags = run_local(args, perf, root)
            names = list(args.only or RUNS)
        rows = analyse(args, root, names)
    print_table(rows)
    for item in args.skipped:
        name, _, reason = item.partition(":")
        rows[name] = {"skipped": reason}
    doc = {
        "hardware": args.hardware or cpu_description(),
        "platform": platform.platform(),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "run_command": args.run_command,
        "profile": args.profile,
        "workload": {"dataset": "sharegpt", "num_requests": args.num_requests, "rate": args.rate, "seed": args.seed,
                     "max_output_tokens": args.max_output_tokens, "arrival": "poisson"},
        "server": {"kv_tokens": args.kv_tokens, "max_model_len": args.max_model_len,
                   "max_num_seqs": perf.max_num_seqs, "max_num_batched_tokens": perf.max_batched_tokens},
        "slo": {"ttft_s": args.ttft_slo, "atgt_s": args.atgt_slo},
        "run_flags": flags,
        "runs": rows,
        "goals": goals(rows),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
