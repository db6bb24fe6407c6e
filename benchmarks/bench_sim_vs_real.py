"""The simulator against the real thing: one ShareGPT workload on a real vLLM worker and in the
simulator with that worker's profile, analysed side by side.

Both runs are built by the same code from the same flags (same sample, same Poisson schedule):
`aladdin replay` against a local worker started with the profile's configuration, and
`aladdin simulate --workers 1`; `aladdin analyze` computes both runs' metrics.

    .venv/bin/python benchmarks/bench_sim_vs_real.py --profile profiles/cpu-tiny.json --rate 2 \
        --num-requests 100 --out benchmarks/results/sim_vs_real.json

The local worker replays the schedule ``--real-repeats`` times (default 2) one after another;
the largest difference between two of those real replays is the measured noise floor, reported
beside the simulator's difference from the first.

With ``--real-run DIR`` (repeatable) no local worker is started: DIR is a finished real run
folder (``requests.jsonl`` + ``run.json``, e.g. from ``scripts/gpu/sim_vs_real_h200.sh`` on a
GPU machine). Its workload flags are read from its ``run.json``, the schedule is rebuilt here
with ``--tokenizer`` and checked against DIR/schedule.jsonl, and the simulator replays it. Where
DIR has ``server.json`` (sim_vs_real_h200.sh) with ``num_gpu_blocks_override`` (a KV-bound run),
the simulator gets that KV cache (``--kv-tokens`` = blocks x the profile's block size). Where DIR
has ``counters.json`` (vLLM's preemption counter over the run), the preemptions of both sides are
compared too. The simulator models the engine as the real server ran it: prefix caching as
server.json records it (else the simulator's default, vLLM's: on), async scheduling on for a
real run (vLLM's default on GPUs; the H200 server's log says "Asynchronous scheduling is
enabled") and off for the local worker (vLLM on CPU forces it off); ``--sim-option FLAG``
(repeatable) adds ``aladdin simulate`` flags, e.g. ``--sim-option=--no-async-scheduling``:

    .venv/bin/python benchmarks/bench_sim_vs_real.py --profile profiles/h100-llama2-7b.json \
        --tokenizer /tmp/models/llama2-7b --real-run runs/real-r8 --real-run runs/real-r4 \
        --ttft-slo 0.4185 --atgt-slo 0.01217 --out benchmarks/results/sim_vs_real_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

METRICS = [f"{m}_{p}_ms" for m in ("ttft", "atgt") for p in ("p50", "p99")]
LATENCY_GOAL_PCT = 10.0   # issue 13: every latency figure within 10%
PREEMPTION_GOAL_PCT = 15.0   # and preemptions within 15%


def aladdin(*args) -> None:
    proc = subprocess.run([sys.executable, "-m", "aladdin", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])


def command_line(*args) -> str:
    return shlex.join(["aladdin", *map(str, args)])


def latency_rows(runs: list[dict]) -> dict[str, dict[str, float]]:
    rows = {}
    for run in runs:
        lat = run["latency_s"]
        rows[run["label"]] = {f"{m}_{p}_ms": lat[m][p] * 1e3 for m in ("ttft", "atgt") for p in ("p50", "p99")}
    return rows


def print_rows(rows: dict, diff: dict, title: str | None = None) -> None:
    if title:
        print(title)
    print(f"{'run':12} " + " ".join(f"{c:>12}" for c in METRICS))
    for name, row in rows.items():
        print(f"{name:12} " + " ".join(f"{row[c]:>12.2f}" for c in METRICS))
    print("simulator vs real, % difference: " + ", ".join(f"{k} {v:+.1f}%" for k, v in diff.items()))


def workload_flags(workload: dict, tokenizer: str | None) -> list:
    """CLI workload flags that rebuild the WorkloadConfig a real run recorded (run.json params)."""
    flags = ["--dataset", workload["dataset"], "--cv", workload["cv"], "--seed", workload["seed"],
             "--time-scale", workload["time_scale"]]
    for name, flag in (("num_requests", "-n"), ("arrival", "--arrival"), ("rate", "--rate")):
        if workload.get(name) is not None:  # None: the dataset's default (a trace: whole, on its timestamps)
            flags += [flag, workload[name]]
    for name in ("min_prompt_tokens", "max_prompt_tokens", "min_output_tokens", "max_output_tokens", "max_total_tokens"):
        flags += ["--" + name.replace("_", "-"), workload[name]]
    if workload["dataset"] == "synthetic":
        for name in ("prompt_tokens", "output_tokens"):
            lo, hi = workload[name]
            flags += ["--" + name.replace("_", "-"), f"{lo}:{hi}"]
    if workload.get("dataset_path"):
        flags += ["--dataset-path", workload["dataset_path"]]
    if tokenizer:
        flags += ["--tokenizer", tokenizer]
    return flags


def kv_override(real: Path, perf) -> tuple[int | None, dict | None]:
    """The KV cache the real server had when it was not the profile's: (--kv-tokens, server.json)."""
    path = real / "server.json"
    if not path.exists():
        return None, None
    server = json.loads(path.read_text())
    blocks = server.get("num_gpu_blocks_override")
    return (blocks * perf.kv.block_size if blocks else None), server


def preemption_row(runs: list[dict]) -> dict:
    """Both sides' preemption counts (None: not recorded) and the simulator's % difference."""
    count = {("real" if run["label"] == "real vLLM" else "sim"): run.get("preemptions", {}).get("count")
             for run in runs}
    real, sim = count.get("real"), count.get("sim")
    pct = 100 * (sim / real - 1) if real and sim is not None else None
    within = None if real is None or sim is None else (abs(pct) <= PREEMPTION_GOAL_PCT if real else sim == 0)
    return {"real": real, "sim": sim, "pct_difference": pct, "within_goal": within}


def check_schedule(real: Path, workload: dict, tokenizer: str | None) -> str:
    """Rebuild the real run's schedule here and compare it with the one it replayed."""
    from aladdin.loadgen.datasets import load_tokenizer
    from aladdin.loadgen.schedule import WorkloadConfig, build_schedule, load_schedule
    from aladdin.modeldir import default_model_dir

    saved = real / "schedule.jsonl"
    if not saved.exists():
        return "not checked (no schedule.jsonl in the real run)"
    config = WorkloadConfig(**{**workload, "prompt_tokens": tuple(workload["prompt_tokens"]),
                               "output_tokens": tuple(workload["output_tokens"])})
    local = build_schedule(config, load_tokenizer(tokenizer or default_model_dir("tiny")))
    if local != load_schedule(saved):
        raise SystemExit(f"{saved}: the schedule rebuilt here differs from the one the real run replayed "
                         "(dataset file or tokenizer differ?); the simulator would replay other requests")
    return f"identical ({len(local)} requests, prompts, lengths and offsets)"


def compare_real_runs(args, perf) -> dict:
    """--real-run: simulate each real run's workload and analyse the pair."""
    gpus = perf.meta.get("gpus_per_worker", 1)
    comparisons = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, real in enumerate(map(Path, args.real_run)):
            meta = json.loads((real / "run.json").read_text())
            workload = meta["params"]["workload"]
            flags = workload_flags(workload, args.tokenizer)
            schedule_check = check_schedule(real, workload, args.tokenizer)
            kv_tokens, server = kv_override(real, perf)
            sim = tmp / f"sim{i}"
            sim_args = ["simulate", "--profile", args.profile, "--workers", 1, "--gpus-per-worker", gpus,
                        "--policy", "jsq", *flags, "--output", sim, "--label", "simulator"]
            if kv_tokens:
                sim_args += ["--kv-tokens", kv_tokens]
            if server and server.get("prefix_caching") is not None:
                sim_args.append("--prefix-caching" if server["prefix_caching"] else "--no-prefix-caching")
            sim_args += args.sim_option
            aladdin(*sim_args)
            analyze_args = ["analyze", real, sim, "--ttft-slo", args.ttft_slo, "--atgt-slo", args.atgt_slo,
                            "--json", tmp / f"a{i}.json"]
            aladdin(*analyze_args)
            runs = json.loads((tmp / f"a{i}.json").read_text())["runs"]
            for run in runs:  # the real run's label is whatever it recorded
                if run["label"] != "simulator":
                    run["label"] = "real vLLM"
            rows = latency_rows(runs)
            real_row, sim_row = rows["real vLLM"], rows["simulator"]
            diff = {k: 100 * (sim_row[k] / real_row[k] - 1) for k in real_row}
            kv_note = f", KV {kv_tokens} tokens" if kv_tokens else ""
            print_rows(rows, diff, f"\n{real} (rate {workload['rate']:g} req/s, {workload['num_requests']} requests"
                       f"{kv_note})")
            preemptions = preemption_row(runs)
            print(f"preemptions: real {preemptions['real']}, simulator {preemptions['sim']}")
            sim_display = [a if a != sim else "SIM_DIR" for a in sim_args]
            comparisons.append({
                "real_run": str(real),
                "workload": workload,
                "schedule_check": schedule_check,
                "real_run_meta": {k: meta.get(k) for k in ("label", "start_time", "params", "endpoint", "versions",
                                                           "summary")},
                "commands": {
                    "real": ("python3 scripts/gpu/replay_direct.py --host " + meta["endpoint"]["base_url"] + " "
                             + shlex.join(map(str, flags)) + f" -o {real.name}"),
                    "simulate": command_line(*sim_display),
                    "analyze": command_line(*[a if a != sim else "SIM_DIR" for a in analyze_args[:-2]]),
                },
                "metrics": {("real" if run["label"] == "real vLLM" else "sim"): run for run in runs},
                "rows": rows,
                "pct_difference": diff,
                "preemptions": preemptions,
                "kv_tokens_override": kv_tokens,
                "server": server,
                "within_goal": {**{k: abs(v) <= LATENCY_GOAL_PCT for k, v in diff.items()},
                                "preemptions": preemptions["within_goal"]},
            })
    return {"comparisons": comparisons}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="profiles/cpu-tiny.json")
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--num-requests", type=int, default=100)
    parser.add_argument("--max-output-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real-run", action="append", default=None, metavar="DIR",
                        help="an existing real run folder to compare with (repeatable); its run.json's workload "
                             "replaces --rate/--num-requests/--max-output-tokens/--seed; no local worker is started")
    parser.add_argument("--tokenizer", default=None, help="model folder whose tokenizer counts tokens "
                        "(with --real-run: the one the real run used; default: the tiny model)")
    parser.add_argument("--ttft-slo", type=float, default=1.0, help="TTFT SLO (s) for aladdin analyze")
    parser.add_argument("--atgt-slo", type=float, default=0.05, help="ATGT SLO (s/token) for aladdin analyze")
    parser.add_argument("--real-command", action="append", default=[], metavar="TEXT",
                        help="with --real-run: how the real runs were made, recorded in the output")
    parser.add_argument("--note", action="append", default=[], metavar="TEXT",
                        help="with --real-run: free text recorded in the output (e.g. which simulator code ran)")
    parser.add_argument("--sim-option", action="append", default=[], metavar="FLAG",
                        help="an extra 'aladdin simulate' flag (repeatable), e.g. --sim-option=--no-async-scheduling")
    parser.add_argument("--real-repeats", type=int, default=2,
                        help="local worker: replays of the same schedule on it (>= 2 gives the noise floor)")
    parser.add_argument("--out", default="benchmarks/results/sim_vs_real.json")
    args = parser.parse_args()

    from aladdin.plugin.profile.io import load_profile

    perf = load_profile(args.profile)
    if args.real_run:
        result = compare_real_runs(args, perf)
        doc = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "args": {k: v for k, v in vars(args).items() if k not in ("rate", "num_requests", "max_output_tokens",
                                                                          "seed")},
               "command": shlex.join([Path(sys.executable).name, *sys.argv]),
               "real_commands": args.real_command,
               "notes": args.note,
               "goal": {"latency_within_pct": LATENCY_GOAL_PCT, "preemptions_within_pct": PREEMPTION_GOAL_PCT},
               "profile": {k: perf.meta.get(k) for k in ("model", "hardware", "gpus_per_worker", "vllm_version",
                                                         "command")},
               **result}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        return

    from aladdin.cluster import ClusterConfig, LocalCluster, free_port_block

    workload = ["--dataset", "sharegpt", "-n", args.num_requests, "--rate", args.rate, "--seed", args.seed,
                "--max-output-tokens", args.max_output_tokens]
    if args.tokenizer:
        workload += ["--tokenizer", args.tokenizer]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = ClusterConfig(workers=1, kv_tokens=perf.kv.capacity_tokens + perf.kv.block_size,
                               max_num_seqs=perf.max_num_seqs, max_num_batched_tokens=perf.max_batched_tokens,
                               base_port=free_port_block(1), state_dir=tmp / "cluster")
        reals = [tmp / f"real{i}" for i in range(args.real_repeats)]
        with LocalCluster(config) as cluster:  # the same schedule again on the same server: the noise floor
            for i, real in enumerate(reals):
                aladdin("replay", "--host", cluster.urls[0], *workload, "--output", real, "--label", f"real vLLM {i + 1}")
        aladdin("simulate", "--profile", args.profile, "--workers", 1, "--policy", "jsq", *workload,
                "--no-async-scheduling", *args.sim_option, "--output", tmp / "sim", "--label", "simulator")
        aladdin("analyze", *reals, tmp / "sim", "--ttft-slo", args.ttft_slo, "--atgt-slo", args.atgt_slo,
                "--json", tmp / "a.json")
        runs = json.loads((tmp / "a.json").read_text())["runs"]
    rows = latency_rows(runs)
    first, sim = rows["real vLLM 1"], rows["simulator"]
    diff = {k: 100 * (sim[k] / first[k] - 1) for k in first}
    # the noise floor: the largest difference between two real replays of the same schedule
    repeats = [rows[f"real vLLM {i + 1}"] for i in range(args.real_repeats)]
    noise = {k: max((100 * abs(b[k] / a[k] - 1) for a in repeats for b in repeats), default=0.0) for k in first}
    print_rows(rows, diff)
    print("noise floor (real vs real), %: " + ", ".join(f"{k} {v:.1f}%" for k, v in noise.items()))
    within = {k: abs(v) <= LATENCY_GOAL_PCT for k, v in diff.items()}
    beyond_noise = {k: abs(v) <= max(LATENCY_GOAL_PCT, noise[k]) for k, v in diff.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
        "command": shlex.join([Path(sys.executable).name, *sys.argv]), "args": vars(args),
        "profile": {k: perf.meta.get(k) for k in ("model", "hardware", "vllm_version", "command")},
        "engine": {"async_scheduling": False, "prefix_caching": "on, both sides (vLLM's default; the simulated "
                                                                "prompts carry no token ids, so only a preempted "
                                                                "request finds its own blocks)"},
        "rows": rows, "pct_difference": diff, "noise_floor_pct": noise,
        "goal": {"latency_within_pct": LATENCY_GOAL_PCT}, "within_goal": within,
        "within_goal_or_noise_floor": beyond_noise,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
