"""Time-varying regime: a day-shaped rate with bursts, served by an autoscaled cluster.

Setup: the measured H200 7B profile (``profiles/h200-llama2-7b.json``), ShareGPT lengths, SLOs
TTFT 25 x the median prompt's unloaded prefill and ATGT 2 x its batch-1 per-token time (as
bench_gpus_vs_rate.py). The repo has no Azure trace (only a few-row test sample), so the rate
is a documented synthetic shape: a day compressed to ``day_s`` simulated seconds, a diurnal
cosine between 0.4 and 1.6 x its mean (night at both ends, noon in the middle) of 3 x one
worker's knee, plus three bursts of +1.5 knee lasting 5% of the day (at 30%, 55% and 80% of it),
as a non-homogeneous Poisson process (thinning, seeded). The knee is the planner's: the
highest rate one FCFS worker serves at 99% joint attainment (``Planner.worker_rate``).

Every policy runs under the same autoscaler (plugin/sim/autoscale.py): a heartbeat every 30 s,
the planner's rule ceil(rate / (knee x 0.9)) on the last intervals' arrivals (headroom 0.1), a
lower count only after 3 heartbeats, new workers taking placements 45 s after they are
requested (a vLLM start with the weights on local disk), a scale-down draining the worker with
the least outstanding work and releasing it once empty. The cluster starts with the count the
first interval's rate asks for. Two sources of the count are reported: ``planner`` (arrivals
only: the same decisions for every policy) and ``core`` (the router's default gauge: the
predicted fill of every worker in its binding dimension plus the queued KV, over a target fill
of 0.8: it depends on where the policy put the load).

Per source and policy: GPU-hours (each worker's held time, request to release), joint SLO
attainment, the peak worker count. "aladdin" is the better of packing ``aladdin`` and
``aladdin-spread`` (h = 0.05, FCFS queue): the fewer GPU-hours among those attaining 99%,
else the higher attainment. Then, per policy, the fewest GPU-hours at 99%: the planner rule's
headroom searched on a grid (bisection). Full run: 501 s on the 2-core VM shared with three
other jobs (23,796 requests, 21 simulations).

Result (2026-12-01): the planner's count depends on the arrivals only, so GPU-hours tie to 0.1%
at every headroom; what differs is attainment while the fleet lags the rate (30 s heartbeats +
45 s start-up): at headroom 0.1, 92.1% for aladdin vs 78.8% for jsq (aladdin's misses are
TTFT, queued centrally; the baselines' are ATGT, every worker overloaded). All four reach 99%
first at headroom 0.55 (the 12th worker), so aladdin / best baseline = 1.00.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from aladdin.loadgen.schedule import ScheduledRequest
from aladdin.plugin.plan.planner import HeartbeatConfig, PlanConfig, Variant
from aladdin.plugin.sim.autoscale import AutoscaleConfig
from aladdin.plugin.sim.simulator import SimConfig, simulate
from regimes import common

NAME = "time_varying"
PROFILE = "h200-llama2-7b.json"
TTFT_MULT, ATGT_MULT = 25.0, 2.0
MEAN, AMPLITUDE = 3.0, 0.6  # the diurnal cosine, in multiples of the knee
BURSTS = ((0.30, 0.05, 1.5), (0.55, 0.05, 1.5), (0.80, 0.05, 1.5))  # (start, length) as day shares, + knees
SCALE_HEADROOM, SCALE_DOWN_AFTER, TARGET_FILL = 0.1, 3, 0.8
VARIANTS = (Variant("aladdin", 0.05), Variant("aladdin-spread", 0.05), Variant("jsq"), Variant("po2"),
            Variant("least-kv"))
# quick: a fixed knee (a 100-request knee search is meaningless) about the full run's, a shorter day
FULL = {"sample": 2000, "knee_requests": 2000, "knee": None, "day_s": 480.0, "interval_s": 30.0, "startup_s": 45.0,
        "sweep": (0.1, 0.4, 0.5, 0.55, 0.6, 0.7)}
QUICK = {"sample": 120, "knee_requests": 100, "knee": 5.0, "day_s": 40.0, "interval_s": 5.0, "startup_s": 5.0,
         "sweep": (0.1, 0.3)}


def rate_at(t: np.ndarray | float, knee: float, day_s: float) -> np.ndarray:
    """The cluster's arrival rate (requests/s) at ``t`` seconds into the compressed day."""
    t = np.asarray(t, dtype=float)
    multiple = MEAN * (1.0 - AMPLITUDE * np.cos(2.0 * math.pi * t / day_s))
    for start, length, extra in BURSTS:
        multiple = multiple + extra * ((t >= start * day_s) & (t < (start + length) * day_s))
    return knee * multiple


def arrivals(knee: float, day_s: float, seed: int = 0) -> np.ndarray:
    """Non-homogeneous Poisson arrivals over one day at ``rate_at`` (thinning, seeded)."""
    peak = float(rate_at(np.linspace(0.0, day_s, 10001), knee, day_s).max())
    rng = np.random.default_rng([seed, 15])
    times = np.cumsum(rng.exponential(1.0 / peak, int(peak * day_s * 1.2) + 100))
    times = times[times < day_s]
    return times[rng.random(times.size) * peak < rate_at(times, knee, day_s)]


def schedule(workload: common.Workload, offsets: np.ndarray) -> list[ScheduledRequest]:
    """The workload's request sequence at the given arrival times."""
    return [replace(r, offset=float(t)) for r, t in zip(workload.schedule(1.0, offsets.size), offsets.tolist())]


def run(quick: bool, log) -> dict[str, Any]:
    size = QUICK if quick else FULL
    worker = common.worker(PROFILE)
    workload = common.sharegpt(size["sample"])
    ttft, atgt = common.slos(worker.perf, workload, TTFT_MULT, ATGT_MULT)
    config = PlanConfig(ttft_slo=ttft, atgt_slo=atgt, num_requests=size["knee_requests"])
    knee = size["knee"] or common.make_planner(worker, workload, config, [Variant("jsq")], log).worker_rate(
        worker, Variant("jsq")).rate
    day, interval = size["day_s"], size["interval_s"]
    offsets = arrivals(knee, day)
    requests = schedule(workload, offsets)
    peak_rate = float(rate_at(np.linspace(0.0, day, 10001), knee, day).max())
    max_workers = math.ceil(peak_rate / (knee * (1.0 - max(size["sweep"])))) + 4
    log(f"knee {knee:.3g} req/s, {offsets.size} requests over {day:g}s, peak {peak_rate:.3g} req/s, "
        f"pool of {max_workers}")

    def scaling(source: str, headroom: float) -> AutoscaleConfig:
        """The autoscaler, starting with the count the first interval's rate asks for at ``headroom``."""
        first = float(np.sum(offsets < interval)) / interval
        initial = max(1, math.ceil(first / (knee * (1.0 - headroom)) - 1e-9))
        return AutoscaleConfig(knee, HeartbeatConfig(interval, headroom, SCALE_DOWN_AFTER, 1), size["startup_s"],
                               initial, source, TARGET_FILL)

    def one(name: str, variant: Variant, autoscale: AutoscaleConfig) -> dict[str, Any]:
        sim = SimConfig(num_workers=max_workers, policy=variant.policy, ttft_slo=ttft, atgt_slo=atgt,
                        gpus_per_worker=worker.gpus_per_worker, queue=variant.queue, autoscale=autoscale)
        started = time.perf_counter()
        result = simulate(requests, worker.perf, sim, variant.make(0))
        held = result.scaling.held_over_time()
        row = {"gpu_hours": result.scaling.gpu_hours, "attainment": result.attainment(ttft, atgt),
               "ttft_attainment": float(np.mean(result.ttft <= ttft)), "peak_workers": max(h for _, h, _ in held),
               "capped_heartbeats": result.scaling.capped, "central_queued": int(result.central_queued),
               "wall_s": time.perf_counter() - started, "end_s": result.scaling.end_s,
               "workers_over_time": [list(x) for x in held]}
        runs.setdefault(name, {})[variant.label] = row
        log(f"  {name} {variant.label}: {row['gpu_hours']:.3f} GPU-h, attainment {row['attainment']:.4f}, "
            f"peak {row['peak_workers']} workers ({row['wall_s']:.0f}s)")
        return row

    runs: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:  # one autoscaler for all: the planner rule at headroom 0.1
        one("planner", variant, scaling("planner", SCALE_HEADROOM))
    fixed = {"planner": _families(runs["planner"])}
    ours = next(v for v in VARIANTS if v.label == fixed["planner"]["aladdin_variant"])
    for variant in [ours] + [Variant(b) for b in common.BASELINES]:  # the core's gauge, target fill 0.8
        one("core", variant, scaling("core", SCALE_HEADROOM))
    fixed["core"] = _families(runs["core"])
    # The fewest GPU-hours at 99% per policy: the planner rule's headroom, searched on the grid
    # (bisection, attainment rising with headroom); aladdin: its better variant above.
    tuned: dict[str, Any] = {"gpu_hours": {}, "attainment": {}, "headroom": {}}
    grid = size["sweep"]
    for family, variant in [("aladdin", ours)] + [(b, Variant(b)) for b in common.BASELINES]:
        rows = {grid[0]: runs["planner"][variant.label]}
        lo, hi = (-1, 0) if rows[grid[0]]["attainment"] >= 0.99 else (0, len(grid))
        while hi - lo > 1:
            mid = (lo + hi) // 2
            rows[grid[mid]] = one(f"planner h={grid[mid]:g}", variant, scaling("planner", grid[mid]))
            lo, hi = (lo, mid) if rows[grid[mid]]["attainment"] >= 0.99 else (mid, hi)
        met = grid[hi] if hi < len(grid) else None
        tuned["headroom"][family] = met
        tuned["gpu_hours"][family] = None if met is None else rows[met]["gpu_hours"]
        tuned["attainment"][family] = None if met is None else rows[met]["attainment"]
    tuned["aladdin_vs_best_baseline"] = common.ratio(tuned)
    return {
        "gpu_hours": tuned["gpu_hours"],
        "attainment": tuned["attainment"],
        "aladdin_vs_best_baseline": tuned["aladdin_vs_best_baseline"],
        "aladdin_variant": ours.label,
        "tuned": tuned,
        "fixed": fixed,
        "runs": runs,
        "setup": {
            "profile": PROFILE, "ttft_slo_s": ttft, "atgt_slo_s": atgt, "knee_rps": knee, "requests": int(offsets.size),
            "day_s": day, "peak_rps": peak_rate, "mean_knees": MEAN, "amplitude": AMPLITUDE,
            "bursts": [list(b) for b in BURSTS], "interval_s": interval, "startup_s": size["startup_s"],
            "scale_headroom": SCALE_HEADROOM, "headroom_grid": list(grid), "scale_down_after": SCALE_DOWN_AFTER,
            "target_fill": TARGET_FILL, "max_workers": max_workers, "workload": common.describe(workload),
        },
    }


def _families(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per family its GPU-hours and attainment; aladdin's best variant (see the module docstring)."""
    def key(label: str) -> tuple[bool, float]:
        row = rows[label]
        met = row["attainment"] >= 0.99
        return (not met, row["gpu_hours"] if met else -row["attainment"])

    ours = min((v.label for v in VARIANTS if v.policy in common.ALADDIN_POLICIES and v.label in rows), key=key)
    chosen = {"aladdin": ours, **{b: b for b in common.BASELINES}}
    out = {"gpu_hours": {f: rows[label]["gpu_hours"] for f, label in chosen.items()},
           "attainment": {f: rows[label]["attainment"] for f, label in chosen.items()},
           "aladdin_variant": ours,
           "below_target": [f for f, label in chosen.items() if rows[label]["attainment"] < 0.99]}
    out["aladdin_vs_best_baseline"] = common.ratio(out)
    return out


def table(payload: dict[str, Any]) -> str:
    setup = payload["setup"]
    lines = [f"{setup['requests']} requests over a {setup['day_s']:g}s day (peak {setup['peak_rps']:.3g} req/s, "
             f"knee {setup['knee_rps']:.3g} req/s/worker), heartbeat {setup['interval_s']:g}s, start-up "
             f"{setup['startup_s']:g}s; aladdin = {payload['aladdin_variant']}"]
    rows = []
    autoscalers = {f"planner h={setup['scale_headroom']:g}": payload["fixed"]["planner"],
                   f"core fill {setup['target_fill']:g}": payload["fixed"]["core"]}
    for name, result in autoscalers.items():
        for family in common.FAMILIES:
            attained = result["attainment"][family]
            rows.append([name, family, result["gpu_hours"][family],
                         f"{attained:.4f}{'' if attained >= 0.99 else ' < 99%'}", ""])
        rows.append([name, "aladdin / best baseline", _round(result["aladdin_vs_best_baseline"]), "", ""])
    tuned = payload["tuned"]
    for family in common.FAMILIES:
        attained = tuned["attainment"][family]
        rows.append(["planner, fewest at 99%", family, tuned["gpu_hours"][family],
                     "not met on the grid" if attained is None else f"{attained:.4f}", tuned["headroom"][family]])
    rows.append(["planner, fewest at 99%", "aladdin / best baseline", _round(tuned["aladdin_vs_best_baseline"]), "", ""])
    lines.append(common.format_table(["autoscaler", "policy", "GPU-hours", "attainment", "headroom"], rows))
    return "\n".join(lines)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def plot(payload: dict[str, Any], path: Path) -> None:
    """Workers held over the day per policy, one panel per autoscaler, the rate behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setup = payload["setup"]
    tuned = payload["tuned"]
    label = {f: payload["aladdin_variant"] if f == "aladdin" else f for f in common.FAMILIES}
    panels = {
        f"planner h={setup['scale_headroom']:g}": {f: ("planner", label[f]) for f in common.FAMILIES},
        f"core fill {setup['target_fill']:g}": {f: ("core", label[f]) for f in common.FAMILIES},
        "planner, fewest GPU-hours at 99%": {
            f: (f"planner h={tuned['headroom'][f]:g}" if tuned["headroom"][f] != setup["scale_headroom"] else "planner",
                label[f]) for f in common.FAMILIES if tuned["headroom"][f] is not None},
    }
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4), sharey=True)
    grid = np.linspace(0.0, setup["day_s"], 600)
    for ax, (title, series) in zip(axes, panels.items()):
        for family, (name, run_label) in series.items():
            run = payload["runs"][name][run_label]
            points = run["workers_over_time"] + [[run.get("end_s", run["workers_over_time"][-1][0]), None, None]]
            points[-1][1] = points[-2][1]
            ax.step([p[0] for p in points], [p[1] for p in points], where="post",
                    label=f"{family}: {run['gpu_hours']:.3g} GPU-h, {100 * run['attainment']:.1f}%")
        ax.plot(grid, rate_at(grid, setup["knee_rps"], setup["day_s"]) / setup["knee_rps"],
                color="grey", lw=0.8, ls=":", label="rate / knee")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("simulated seconds")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("workers held")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
