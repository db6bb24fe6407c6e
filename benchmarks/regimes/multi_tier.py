"""Multi-tier regime: 70% interactive requests with tight SLOs, 30% batch requests with loose ones.

Setup: the measured H200 Llama-2-7B profile (``profiles/h200-llama2-7b.json``), ShareGPT
openings (first human turn -> reply). Each request draws its tier by share (seeded,
``loadgen.slo.assign_tiers``, via ``common.TieredWorkload``) and carries that tier's SLOs;
the simulator and Aladdin's filters use each request's own targets, the baselines ignore
them. Joint attainment is over all requests: 99% of them must meet their own tier's TTFT and
ATGT. Tier targets are multiples of the median request's unloaded latency (TTFT: its prefill;
ATGT: its batch-1 per-token time): interactive TTFT 10x, ATGT 1.5x; batch TTFT 50x, ATGT 5x.
Rates: multiples of one worker's FCFS knee under the interactive targets.

Run time: 5.3 min of CPU (15 min wall, sharing 2 cores with other jobs); ``--quick``: ~25 s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aladdin.loadgen.slo import SLOTier
from aladdin.plugin.plan.planner import PlanConfig
from regimes import common

NAME = "multi_tier"
PROFILE = "h200-llama2-7b.json"
TIERS = (("interactive", 0.7, 10.0, 1.5), ("batch", 0.3, 50.0, 5.0))  # name, share, TTFT x, ATGT x
FULL = {"sample": 2000, "num_requests": 1500, "check_requests": 400, "multiples": (4.0, 16.0),
        "headrooms": (0.0, 0.05), "queues": ("fcfs", "edf")}  # h=0.1 never won in a first run
QUICK = {"sample": 120, "num_requests": 100, "check_requests": 40, "multiples": (2.0,),
         "headrooms": (0.05,), "queues": ("edf",)}


def run(quick: bool, log) -> dict[str, Any]:
    size = QUICK if quick else FULL
    worker = common.worker(PROFILE)
    base = common.sharegpt(size["sample"])
    ttft0, token0 = common.slos(worker.perf, base, 1.0, 1.0)
    tiers = tuple(SLOTier(name, share, t * ttft0, a * token0) for name, share, t, a in TIERS)
    workload = common.TieredWorkload(base, tiers)
    tight = min(tiers, key=lambda t: t.atgt_s)
    # the run-wide SLOs (every request has its own): the tight tier's, which the rate guess starts from
    config = PlanConfig(tight.ttft_s, tight.atgt_s, num_requests=size["num_requests"],
                        check_requests=size["check_requests"])
    planner = common.make_planner(worker, workload, config, common.variants(size["headrooms"], size["queues"]), log)
    knee, rows = common.sweep(worker, workload, config, planner, size["multiples"])
    return common.sized_payload({"profile": f"profiles/{PROFILE}", "workload": "ShareGPT openings (first human turn -> reply)",
                  "lengths": common.describe(base),
                  "tiers": [{"name": t.name, "share": t.share, "ttft_slo_s": t.ttft_s, "atgt_slo_s": t.atgt_s,
                             "ttft_mult": m[2], "atgt_mult": m[3]} for t, m in zip(tiers, TIERS)],
                  "unloaded_ttft_s": ttft0, "unloaded_token_s": token0, "attainment": config.attainment,
                  "fcfs_knee_rps": knee}, config, size, rows)


def table(payload: dict[str, Any]) -> str:
    setup = payload["setup"]
    rows = []
    for row in payload["rates"]:
        at = row["at_baseline_size"]
        workers = next(iter(at.values()))["workers"] if at else None
        tiers = " ".join(f"{f}={'/'.join(f'{v:.3f}' for v in at[f]['tier_attainment'].values())}"
                         for f in common.FAMILIES if f in at)
        rows.append([f"{row['multiple']:g}x ({row['rate']:.3g}/s)", *(row["gpus"].get(f) for f in common.FAMILIES),
                     row["aladdin_vs_best_baseline"], row["aladdin_variant"], workers, tiers])
    tiers = "; ".join(f"{t['name']} {100 * t['share']:g}%: TTFT {1000 * t['ttft_slo_s']:.0f}ms, "
                      f"ATGT {1000 * t['atgt_slo_s']:.1f}ms" for t in setup["tiers"])
    names = "/".join(t["name"] for t in setup["tiers"])
    return (f"Multi-tier: {setup['profile']}; {tiers}; {100 * setup['attainment']:g}% joint\n"
            + common.format_table(["rate", *common.FAMILIES, "aladdin/best", "aladdin variant", "at n",
                                   f"{names} attainment at n"], rows))


def plot(payload: dict[str, Any], path: Path) -> None:
    groups = {f"{r['multiple']:g}x knee": r["gpus"] for r in payload["rates"]}
    common.bar_plot(path, groups, "Multi-tier SLOs (70% interactive, 30% batch): Llama-2-7B, H200 profile",
                    "GPUs needed (99% joint attainment)")
