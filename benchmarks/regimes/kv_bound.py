"""KV-bound regime: Llama-2-13B with a 48 GB card's KV cache, serving whole-conversation prompts.

Setup: the measured H200 13B profile (``profiles/h200-llama2-13b.json``: its compute) with the
KV cache cut to 16,384 tokens (1,024 blocks of 16). That is what a 48 GB card (L40S, A6000)
leaves a 13B fp16 model under vLLM: 0.9 x 48 GB = 43 GB, minus 26 GB of weights and ~2.5 GB of
activations and CUDA graphs, is ~14.5 GB; at 800 KiB per token (2 x 40 layers x 5120 x 2
bytes) that is ~18k tokens, rounded down to 16k. The H200 itself holds 131k. Requests are
ShareGPT chats with their history as context (``common.sharegpt_conversations``: the deepest
model reply of each conversation whose history + reply fits Llama-2's 4,096 tokens), so the
median prompt is ~1,500 tokens and a worker holds only ~10 requests at once.

SLOs: TTFT 25 x the median prompt's unloaded prefill, ATGT 2 x its batch-1 per-token time
(as bench_gpus_vs_rate.py). Rates: multiples of one worker's FCFS knee. Per rate: GPUs per
policy family (common.fewest_gpus), then every family's best variant simulated at the best
baseline's size, to count preemptions (vLLM recomputes a preempted request's KV), and the
KV floor: the workers the KV cache alone needs at that rate (``kv_floor``), which bounds what
any placement can save.

Run time: 6.2 min of CPU (16 min wall, sharing 2 cores with other jobs); ``--quick``: ~20 s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aladdin.plugin.plan.planner import PlanConfig
from regimes import common

NAME = "kv_bound"
PROFILE = "h200-llama2-13b.json"
KV_TOKENS = 16384
TTFT_MULT, ATGT_MULT = 25.0, 2.0
FULL = {"sample": 2000, "num_requests": 1500, "check_requests": 400, "multiples": (4.0, 8.0, 12.0),
        "headrooms": (0.0, 0.05), "queues": ("fcfs", "edf")}  # h=0.1 never won in a first run
QUICK = {"sample": 120, "num_requests": 100, "check_requests": 40, "multiples": (2.0,),
         "headrooms": (0.05,), "queues": ("fcfs",)}


def run(quick: bool, log) -> dict[str, Any]:
    size = QUICK if quick else FULL
    worker = common.worker(PROFILE, KV_TOKENS)
    workload = common.sharegpt_conversations(size["sample"])
    ttft, atgt = common.slos(worker.perf, workload, TTFT_MULT, ATGT_MULT)
    config = PlanConfig(ttft, atgt, num_requests=size["num_requests"], check_requests=size["check_requests"])
    planner = common.make_planner(worker, workload, config, common.variants(size["headrooms"], size["queues"]), log)
    knee, rows = common.sweep(worker, workload, config, planner, size["multiples"])
    for row in rows:
        row["kv_floor_workers"] = kv_floor(worker.perf, workload, row["rate"])
    return common.sized_payload({"profile": f"profiles/{PROFILE}", "kv_tokens": worker.perf.kv.capacity_tokens,
                  "kv_why": "a 48 GB card's KV for a 13B fp16 model (~14.5 GB = ~18k tokens, rounded to 16k); "
                            "the H200 profile holds 131k",
                  "workload": "ShareGPT conversations, history up to the deepest reply fitting 4096 tokens",
                  "lengths": common.describe(workload), "ttft_slo_s": ttft, "atgt_slo_s": atgt,
                  "ttft_mult": TTFT_MULT, "atgt_mult": ATGT_MULT, "attainment": config.attainment,
                  "fcfs_knee_rps": knee}, config, size, rows)


def kv_floor(perf, workload, rate: float) -> float:
    """Workers the KV cache alone needs (Little's law): every request holds its prompt plus half
    its output on average for its decode time, at the step time of a full cache, with no
    queueing, fragmentation or preemption. No policy can go below it."""
    prompts, outputs = workload.prompts.astype(float), workload.outputs.astype(float)
    context = float(np.mean(prompts + outputs / 2))
    capacity = perf.kv.capacity_tokens
    step = float(perf.decode.time(max(1.0, capacity / context), capacity))
    return rate * float(np.mean((prompts + outputs / 2) * outputs)) * step / capacity


def table(payload: dict[str, Any]) -> str:
    setup = payload["setup"]
    rows = []
    for row in payload["rates"]:
        at = row["at_baseline_size"]
        workers = next(iter(at.values()))["workers"] if at else None
        rows.append([f"{row['multiple']:g}x ({row['rate']:.3g}/s)", *(row["gpus"].get(f) for f in common.FAMILIES),
                     row["kv_floor_workers"], row["aladdin_vs_best_baseline"], row["aladdin_variant"], workers,
                     " ".join(f"{f}={at[f]['preemptions']}" for f in common.FAMILIES if f in at)])
    head = (f"KV-bound: {setup['profile']} with KV {setup['kv_tokens']} tokens; prompts mean "
            f"{setup['lengths']['prompt_mean']:.0f} / output mean {setup['lengths']['output_mean']:.0f} tokens; "
            f"TTFT {setup['ttft_slo_s']:.2f}s, ATGT {1000 * setup['atgt_slo_s']:.1f}ms, "
            f"{100 * setup['attainment']:g}%")
    return head + "\n" + common.format_table(
        ["rate", *common.FAMILIES, "KV floor", "aladdin/best", "aladdin variant", "at n", "preemptions at n"], rows)


def plot(payload: dict[str, Any], path: Path) -> None:
    groups = {f"{r['multiple']:g}x knee": r["gpus"] for r in payload["rates"]}
    setup = payload["setup"]
    common.bar_plot(path, groups, f"KV-bound: 13B, KV {setup['kv_tokens']} tokens, whole-conversation prompts",
                    "GPUs needed (99% joint attainment)")
