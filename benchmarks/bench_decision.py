"""Decision latency of the scheduler core at router scale: 64 workers x 256 requests in flight.

    python benchmarks/bench_decision.py --out benchmarks/results/decision_latency.json

Between two decisions, tokens stream on every worker (``Scheduler.tokens`` for in_flight /
workers of its requests, as a live router sees them: at steady state 64 arrivals come per
decode step, so each decision sees 1/64 of a step on every worker) and the cluster changes
structurally at the steady-state rate of one arrival: one request finishes on a random
worker and the previous arrival gets its first token; requests outgrowing their prediction
are re-predicted as their tokens come. Only ``Scheduler.arrive`` (predict,
filters, scorers, pick, place) is timed. The ``all_rebuilt`` row times the worst case too:
every worker's requests changed (each has a finish) before the decision.

Workers: a measured profile (``--profile``, default profiles/h100-llama2-7b.json) with room for
2 x in_flight sequences and 4x its KV, so that 256 in flight pass the cheap filters and every decision runs
the full KV and ATGT evaluation. Request lengths: lognormal, ShareGPT-like medians (prompt
~200, output ~250 tokens, at most 1500, the predictor's cap), seeded. One thread, this machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from aladdin.plugin.core.lifecycle import Scheduler, SchedulerConfig
from aladdin.plugin.core.policies import named_policy
from aladdin.plugin.core.predictor import LengthPredictor, PredictorConfig
from aladdin.plugin.core.request import Request, RequestStatus
from aladdin.plugin.profile.io import load_profile

ROOT = Path(__file__).resolve().parents[1]
MAX_OUTPUT_TOKENS = 1500  # the longest output drawn below: predictions are capped there, as by max_tokens


def lengths(rng: np.random.Generator) -> tuple[int, int]:
    return int(np.clip(rng.lognormal(np.log(200), 1.0), 4, 2000)), int(np.clip(rng.lognormal(np.log(250), 0.9), 2, 1500))


def build(policy: str, workers: int, in_flight: int, seed: int,
          profile: Path) -> tuple[Scheduler, np.random.Generator, dict]:
    perf = load_profile(ROOT / profile)
    perf = replace(perf, max_num_seqs=2 * in_flight, kv=replace(perf.kv, capacity_tokens=4 * perf.kv.capacity_tokens))
    scheduler = Scheduler([(f"w{i:02d}", perf) for i in range(workers)], named_policy(policy).build(),
                          LengthPredictor(PredictorConfig(max_output_tokens=MAX_OUTPUT_TOKENS)),
                          SchedulerConfig(frontend_paid=False))
    rng = np.random.default_rng(seed)
    truth: dict[str, int] = {}
    for w in scheduler.pool.workers:
        for j in range(in_flight):
            prompt, output = lengths(rng)
            request = Request(f"{w.id}-{j}", prompt, 0.0, ttft_slo=2.0, atgt_slo=0.05,
                              predicted_output_tokens=int(rng.integers(50, 600)))
            request.first_prediction = request.predicted_output_tokens
            scheduler.requests[request.id] = request
            w.place(request)
            w.start_decoding(request, int(rng.integers(1, min(output, request.predicted_output_tokens) + 1)), 0.0)
            truth[request.id] = output
    return scheduler, rng, truth


def run(policy: str, workers: int, in_flight: int, decisions: int, seed: int, all_rebuilt: bool,
        profile: Path) -> list[float]:
    scheduler, rng, truth = build(policy, workers, in_flight, seed, profile)
    now, last = 1.0, None
    times = []
    tokens_per_worker = max(in_flight // workers, 1)  # 64 arrivals per decode step at steady state
    for i in range(decisions):
        now += 0.001
        for w in scheduler.pool.workers:  # tokens on every worker: a few streams each, as a router sees them
            residents = list(w.requests.values())
            for k in range(tokens_per_worker if residents else 0):  # packing can drain a worker of a small cluster
                request = residents[(i * tokens_per_worker + k) % len(residents)]
                if request.status is RequestStatus.DECODING:
                    scheduler.tokens(request.id, w.generated(request) + 1, now)
        busy = [w for w in scheduler.pool.workers if w.requests]
        for w in (busy if all_rebuilt else [busy[int(rng.integers(len(busy)))]]):
            victim = next(iter(w.requests.values()))
            scheduler.finish(victim.id, max(w.generated(victim), 1), now)
        if last is not None and last.worker is not None and last.status.value == "placed":
            scheduler.started(last.id, 1, now)
        prompt, output = lengths(rng)
        request = Request(f"n{i}", prompt, now, ttft_slo=2.0, atgt_slo=0.05)
        started = time.perf_counter()
        scheduler.arrive(request, now)
        times.append(time.perf_counter() - started)
        truth[request.id] = output
        last = request
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=256, help="requests decoding on each worker")
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--policies", default="aladdin,aladdin-spread,jsq,po2,rr,least-kv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", type=Path, default=Path("profiles/h100-llama2-7b.json"),
                        help="the workers' profile (relative to the repo root)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/decision_latency.json")
    args = parser.parse_args()
    result = {
        "workers": args.workers, "in_flight_per_worker": args.in_flight, "changed_workers_between_decisions": args.workers,
        "structural_changes_between_decisions": "1 finish + 1 first token (steady state)",
        "decisions": args.decisions, "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "command": "python benchmarks/bench_decision.py", "profile": str(args.profile), "policies": {}, "all_rebuilt": {},
    }
    print(f"{'policy':<16}{'p50 ms':>10}{'p99 ms':>10}{'all rebuilt p50':>18}{'p99':>8}")
    for policy in args.policies.split(","):
        times = np.array(run(policy, args.workers, args.in_flight, args.decisions, args.seed, False, args.profile)) * 1e3
        worst = np.array(run(policy, args.workers, args.in_flight, max(args.decisions // 10, 20), args.seed, True, args.profile)) * 1e3
        result["policies"][policy] = {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}
        result["all_rebuilt"][policy] = {"p50_ms": float(np.percentile(worst, 50)), "p99_ms": float(np.percentile(worst, 99))}
        print(f"{policy:<16}{result['policies'][policy]['p50_ms']:>10.3f}{result['policies'][policy]['p99_ms']:>10.3f}"
              f"{result['all_rebuilt'][policy]['p50_ms']:>18.3f}{result['all_rebuilt'][policy]['p99_ms']:>8.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
