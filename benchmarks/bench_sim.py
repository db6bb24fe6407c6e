"""Simulator speed: simulated seconds per wall second at 8 and 64 workers, per policy.

    python benchmarks/bench_sim.py --workers 8 64 --seconds 600 --out bench_sim.json

Workload: ShareGPT lengths (a sample tokenized with the tiny model's tokenizer, resampled with
replacement so long runs need not tokenize the whole file) with Poisson arrivals at
``--rate-per-worker`` times the worker count. Workers: a Llama-2-7B-on-A100-like PerfModel
built in code (or ``--profile FILE``). Each run is timed in this process on one core; the
JSON has one row per (workers, policy). ``--cprofile`` prints where the largest run spends
its time. Records are not written unless ``--write`` (then their time is reported apart).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np

from aladdin.loadgen.arrivals import make_offsets
from aladdin.loadgen.datasets import RequestSpec, load_sharegpt, load_tokenizer
from aladdin.loadgen.schedule import ScheduledRequest
from aladdin.modeldir import default_model_dir
from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel
from aladdin.plugin.profile.io import load_profile
from aladdin.plugin.sim.simulator import ClusterSimulator, SimConfig

# Llama-2-7B in bf16 on one A100-80GB, roughly: 14 GB of weights read per pass (~9 ms),
# 0.5 MB of KV per token, ~116k KV tokens. Plausible numbers, not a measured profile.
A100_7B = PerfModel(
    prefill=PrefillModel(a=5e-5, q=1e-9, c=0.015),
    decode=DecodeModel(a=1.5e-4, b=3.4e-7, c=0.012),
    kv=KVModel(block_size=16, capacity_tokens=16 * 7250),
    max_num_seqs=256,
    max_batched_tokens=8192,
)


def sharegpt_lengths(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    specs = load_sharegpt(load_tokenizer(default_model_dir("tiny")), count, seed=seed)
    return np.array([s.prompt_tokens for s in specs]), np.array([s.output_tokens for s in specs])


def build(prompts: np.ndarray, outputs: np.ndarray, n: int, rate: float, seed: int) -> list[ScheduledRequest]:
    """n requests with lengths drawn from the sample and Poisson arrivals at ``rate``."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, prompts.size, n)
    offsets = make_offsets("poisson", n, rate=rate, seed=seed)
    return [
        ScheduledRequest(f"r{i}", float(t), RequestSpec("", int(prompts[j]), int(outputs[j]), None, None, str(j)))
        for i, (t, j) in enumerate(zip(offsets.tolist(), pick.tolist()))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--policies", nargs="+", default=["jsq", "aladdin"])
    parser.add_argument("--seconds", type=float, default=600.0, help="simulated seconds of arrivals per run")
    parser.add_argument("--rate-per-worker", type=float, default=2.0, help="requests/s per worker")
    parser.add_argument("--sample", type=int, default=4000, help="distinct ShareGPT conversations to draw from")
    parser.add_argument("--ttft-slo", type=float, default=2.0)
    parser.add_argument("--atgt-slo", type=float, default=0.1)
    parser.add_argument("--profile", type=Path, default=None, help="a profile file instead of the built-in model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="also time writing requests.jsonl + run.json")
    parser.add_argument("--cprofile", action="store_true", help="print the top functions of the largest run")
    parser.add_argument("--out", type=Path, default=Path("bench_sim.json"))
    args = parser.parse_args()

    perf = load_profile(args.profile) if args.profile else A100_7B
    prompts, outputs = sharegpt_lengths(args.sample, args.seed)
    rows = []
    largest = (max(args.workers), args.policies[-1])
    print(HEADER)
    for workers in args.workers:
        rate = args.rate_per_worker * workers
        schedule = build(prompts, outputs, max(1, int(rate * args.seconds)), rate, args.seed)
        for policy in args.policies:
            config = SimConfig(num_workers=workers, policy=policy, ttft_slo=args.ttft_slo, atgt_slo=args.atgt_slo,
                               seed=args.seed)
            simulator = ClusterSimulator(perf, config)
            profiler = cProfile.Profile() if args.cprofile and (workers, policy) == largest else None
            started = time.perf_counter()
            if profiler:
                profiler.enable()
            result = simulator.run(schedule)
            if profiler:
                profiler.disable()
            wall = time.perf_counter() - started
            summary = result.summary(args.ttft_slo, args.atgt_slo)
            row = {
                "workers": workers,
                "policy": policy,
                "requests": len(schedule),
                "tokens": int(result.output_tokens.sum()),
                "simulated_s": summary["simulated_seconds"],
                "wall_s": wall,
                "simulated_per_wall_s": summary["simulated_seconds"] / wall,
                "us_per_request": 1e6 * wall / len(schedule),
                "iterations": result.iterations,
                "preemptions": summary["preemptions"],
                "slo_attainment": summary["slo_attainment"],
                "workers_used": int(np.unique(result.worker).size),
                "profiled": profiler is not None,
            }
            if args.write:
                with tempfile.TemporaryDirectory() as folder:
                    started = time.perf_counter()
                    result.write(Path(folder) / "run")
                    row["write_s"] = time.perf_counter() - started
            rows.append(row)
            print_row(row)
            if profiler:
                pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    args.out.write_text(json.dumps({"perf": perf.meta.get("path", "built-in A100_7B"), "args": vars(args) | {
        "out": str(args.out), "profile": str(args.profile) if args.profile else None}, "runs": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


HEADER = (f"{'workers':>7} {'policy':>8} {'requests':>9} {'sim s':>7} {'wall s':>7} {'sim/wall':>9} "
          f"{'us/req':>7} {'attain':>7} {'used':>5} {'write s':>8}")


def print_row(row: dict) -> None:
    write = f"{row['write_s']:8.1f}" if "write_s" in row else f"{'-':>8}"
    note = " (under cProfile)" if row["profiled"] else ""
    print(f"{row['workers']:>7} {row['policy']:>8} {row['requests']:>9} {row['simulated_s']:>7.0f} {row['wall_s']:>7.1f} "
          f"{row['simulated_per_wall_s']:>9.1f} {row['us_per_request']:>7.0f} {row['slo_attainment']:>7.3f} "
          f"{row['workers_used']:>5} {write}{note}", flush=True)


if __name__ == "__main__":
    main()
