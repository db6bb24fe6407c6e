"""GPUs needed vs arrival rate, per placement policy, at a target SLO attainment (the paper's main figure).

    python benchmarks/bench_gpus_vs_rate.py --profile profiles/cpu-tiny.json \\
        --out benchmarks/results/gpus_vs_rate.json --plot benchmarks/results/gpus_vs_rate.png

Several ``--profile`` files are several worker sizes (GPUs per worker) of one model: they are
planned together, with the SLOs and rates of the first (the smallest worker), and each policy
keeps its cheapest size; the table also shows jsq on ``--default-gpus`` GPUs per worker (vLLM's
default deployment in the paper). ``--split-phase`` plans prefill and decode pools instead.

The SLOs are multiples of that profile's unloaded latency: TTFT = ``--ttft-mult``
x the prefill of the median ShareGPT prompt, ATGT = ``--atgt-mult`` x the per-token time of
that request decoding alone (batch 1); the absolute values are printed. The rates are
``--multiples`` of one worker's FCFS knee (the highest rate one worker meets the target at, under
vLLM's own scheduling), so they span 1 to 64 workers' worth of load. Each rate is planned with
``aladdin.plugin.plan.planner`` for every policy: aladdin packing and aladdin-spread with the
predictor (each the best of ``--headroom`` x ``--queue``; ``aladdin-best`` is the cheaper of
the two), aladdin with oracle lengths (the best of ``--oracle-headroom``, the ceiling), and the
baselines jsq, po2, rr and least-kv. Without ``--profile`` a built-in CPU-tiny-like model is
used (guessed coefficients, not a measurement).

Speed: the aladdin policy costs about 1 ms of simulation per request at these loads, so the
defaults are sized for a few minutes on one core: probes of 1000 requests (the single-worker knee
converged to ~2% from 1000 on ShareGPT; 300 read it 30% high) and cluster checks of 250
requests per worker's worth of load (at 16 workers' worth, 250 gave one worker fewer than 500
to 2000). Every policy replays the same requests at a given rate, so the comparison is fair
even where the absolute counts are slightly optimistic; raise --check-requests for final numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel
from aladdin.plugin.plan.planner import (
    PlanConfig,
    Planner,
    Variant,
    WorkerConfig,
    Workload,
    unloaded_latency,
    variants_for,
)

# A tiny Llama on a CPU vLLM worker, roughly: ~8 ms per forward pass, 0.2 ms per sequence.
# Guessed coefficients for trying the script out before a measured profile exists.
CPU_TINY_GUESS = PerfModel(
    prefill=PrefillModel(a=2e-5, q=0.0, c=0.01),
    decode=DecodeModel(a=2e-4, b=5e-8, c=0.008),
    kv=KVModel(block_size=16, capacity_tokens=32768),
    max_num_seqs=64,
    max_batched_tokens=2048,
)
FAMILY_ORDER = ("aladdin-best", "aladdin", "aladdin-spread", "aladdin-oracle", "jsq", "po2", "rr", "least-kv")
ALADDIN_PREDICTED = ("aladdin", "aladdin-spread")  # aladdin-best: the cheaper of the two at each rate
DEFAULT_JSQ = "jsq (G={} default)"


def numbers(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, action="append", default=None,
                        help="profile JSON (repeat for several); default: a built-in CPU-tiny-like model")
    parser.add_argument("--ttft-mult", type=float, default=25.0, help="TTFT SLO / unloaded median prefill")
    parser.add_argument("--atgt-mult", type=float, default=2.0, help="ATGT SLO / unloaded batch-1 per-token time")
    parser.add_argument("--attainment", type=float, default=0.99)
    parser.add_argument("--multiples", default="1,2,4,8,16,32,64",
                        help="rates as multiples of one worker's FCFS knee")
    parser.add_argument("--policies", default="aladdin,aladdin-spread,jsq,po2,rr,least-kv")
    parser.add_argument("--headroom", default="0.05,0.1", help="aladdin (predicted lengths) headrooms to try")
    parser.add_argument("--queue", default="fcfs,edf", help="central queue orders to try for aladdin (pack and spread)")
    parser.add_argument("--oracle-headroom", default="0,0.05",
                        help="aladdin with oracle lengths: headrooms to try ('' to skip the ceiling)")
    parser.add_argument("--num-requests", type=int, default=1000, help="requests per single-worker probe")
    parser.add_argument("--check-requests", type=int, default=250,
                        help="requests per worker's worth of load in a cluster check")
    parser.add_argument("--sample", type=int, default=1000, help="distinct ShareGPT conversations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--default-gpus", type=int, default=4, help="the 'default' jsq worker size to compare with")
    parser.add_argument("--split-phase", action="store_true", help="plan a prefill pool and a decode pool")
    parser.add_argument("--kv-transfer-us-per-token", type=float, default=0.0, help="split-phase KV hand-off")
    parser.add_argument("--verbose", action="store_true", help="print every simulation")
    parser.add_argument("--out", type=Path, default=Path("gpus_vs_rate.json"))
    parser.add_argument("--plot", type=Path, default=Path("gpus_vs_rate.png"))
    args = parser.parse_args()

    started = time.perf_counter()
    workload = Workload.sharegpt(args.sample, seed=args.seed)
    print(f"workload: {args.sample} ShareGPT conversations (tiny-model tokenizer; resampled with replacement "
          f"beyond that), Poisson arrivals; mean prompt {workload.prompts.mean():.0f}, mean output "
          f"{workload.outputs.mean():.0f} tokens")
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    variants = variants_for(policies, numbers(args.headroom), queues=[q for q in args.queue.split(",") if q])
    if "aladdin" in policies:
        variants += [Variant("aladdin", h, oracle_lengths=True) for h in numbers(args.oracle_headroom)]
    configs = ([WorkerConfig.from_profile(path) for path in args.profile] if args.profile
               else [WorkerConfig("built-in CPU-tiny guess", CPU_TINY_GUESS, 1)])
    results = [run_profiles(configs, workload, variants, args)]
    document = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "wall_s": time.perf_counter() - started, "profiles": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    plot(results, args.plot)
    print(f"\nwrote {args.out} and {args.plot} in {document['wall_s']:.0f}s")


def run_profiles(configs: list[WorkerConfig], workload: Workload, variants: list[Variant], args) -> dict:
    config = configs[0]
    ttft0, token0 = unloaded_latency(config.perf, workload)
    plan_config = PlanConfig(ttft_slo=args.ttft_mult * ttft0, atgt_slo=args.atgt_mult * token0,
                             attainment=args.attainment, num_requests=args.num_requests,
                             check_requests=args.check_requests, seed=args.seed, split_phase=args.split_phase,
                             kv_transfer_s_per_token=args.kv_transfer_us_per_token * 1e-6)
    sizes = ", ".join(f"{c.name} (G={c.gpus_per_worker}{', derived' if c.perf.meta.get('derived') else ''})"
                      for c in configs)
    print(f"\n== {sizes}{' -- split-phase' if args.split_phase else ''}")
    print(f"unloaded: TTFT {1000 * ttft0:.2f}ms (median prompt), {1000 * token0:.2f}ms/token (batch 1)")
    print(f"SLOs: TTFT {1000 * plan_config.ttft_slo:.1f}ms ({args.ttft_mult:g}x), ATGT "
          f"{1000 * plan_config.atgt_slo:.2f}ms/token ({args.atgt_mult:g}x), attainment {args.attainment:g}")
    planner = Planner(configs, variants, plan_config, workload, log=print if args.verbose else None)
    knee = planner.worker_rate(config, Variant("jsq")).rate
    multiples = numbers(args.multiples)
    rates = [m * knee for m in multiples]
    print(f"one-worker FCFS knee {knee:.3f} req/s; rates {', '.join(f'{r:.3g}' for r in rates)} req/s")
    started = time.perf_counter()
    result = planner.plan(rates)
    families = [f for f in FAMILY_ORDER if any(v.family == f for v in variants)
                or (f == "aladdin-best" and any(v.family in ALADDIN_PREDICTED for v in variants))]
    default = DEFAULT_JSQ.format(args.default_gpus)
    several = len(configs) > 1
    if several and "jsq" in families and any(c.gpus_per_worker == args.default_gpus for c in configs):
        families.append(default)
    print(f"{'x knee':>6} {'rate':>8} " + " ".join(f"{f:>18}" for f in families))
    print(f"{'':>15} GPUs needed (each policy with its cheapest worker size G and aladdin headroom h)")
    rows = []
    for multiple, rate in zip(multiples, rates):
        best = result.best(rate)
        met = [best[f] for f in ALADDIN_PREDICTED if best.get(f) is not None and best[f].gpus is not None]
        best["aladdin-best"] = min(met, key=lambda c: c.gpus) if met else None
        best[default] = next((c for c in result.checks if c.rate == rate and c.variant.family == "jsq"
                              and c.gpus_per_worker == args.default_gpus), None)
        cells = []
        for family in families:
            check = best.get(family)
            if check is not None and check.gpus is None:
                check = None
            note = (f" G{check.gpus_per_worker}" if check and several else "") + (
                f" h={check.variant.headroom:g}{' edf' if check.variant.queue == 'edf' else ''}"
                if check and check.variant.slo_aware else "")
            if family == "aladdin-best" and check is not None:
                note += " spread" if check.variant.policy == "aladdin-spread" else " pack"
            cells.append(f"{'not met' if check is None else str(check.gpus) + note:>18}")
            rows.append({"multiple": multiple, "rate": rate, "policy": family,
                         "gpus": None if check is None else check.gpus,
                         "workers": None if check is None else check.workers,
                         "prefill_workers": None if check is None else check.prefill_workers,
                         "gpus_per_worker": None if check is None else check.gpus_per_worker,
                         "headroom": None if check is None or not check.variant.slo_aware else check.variant.headroom,
                         "queue": None if check is None or not check.variant.slo_aware else check.variant.queue,
                         "variant": None if check is None else check.variant.policy,
                         "attainment": None if check is None else check.attainment})
        print(f"{multiple:>6g} {rate:>8.3g} " + " ".join(cells), flush=True)
    print(f"planned in {time.perf_counter() - started:.0f}s")
    return {
        "profile": config.name, "gpus_per_worker": config.gpus_per_worker,
        "profiles": [{"name": c.name, "gpus_per_worker": c.gpus_per_worker, "derived": c.perf.meta.get("derived")}
                     for c in configs],
        "split_phase": args.split_phase,
        "unloaded_ttft_s": ttft0, "unloaded_token_s": token0,
        "ttft_slo_s": plan_config.ttft_slo, "atgt_slo_s": plan_config.atgt_slo,
        "fcfs_knee_rps": knee, "rows": rows, "plan": result.to_dict(),
    }


def plot(results: list[dict], path: Path) -> None:
    """Per profile: GPUs vs rate (log-log), and below it each policy's GPUs relative to jsq."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    fig, axes = plt.subplots(2, len(results), figsize=(6.5 * len(results), 8), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]}, sharex="col")
    for column, result in enumerate(results):
        top, bottom = axes[0][column], axes[1][column]
        jsq = {r["rate"]: r["gpus"] for r in result["rows"] if r["policy"] == "jsq" and r["gpus"]}
        for family in dict.fromkeys([*FAMILY_ORDER, *(r["policy"] for r in result["rows"])]):
            points = [(r["rate"], r["gpus"]) for r in result["rows"] if r["policy"] == family and r["gpus"]]
            if not points:
                continue
            style = {"marker": "o", "linestyle": "--" if family == "aladdin-oracle" or "default" in family else "-",
                     "label": family}
            xs, ys = zip(*points)
            top.plot(xs, ys, **style)
            relative = [(x, y / jsq[x]) for x, y in points if x in jsq]
            if relative:
                bottom.plot(*zip(*relative), **style)
        top.set_xscale("log", base=2)
        top.set_yscale("log", base=2)
        for axis in (top.yaxis, bottom.xaxis):
            axis.set_major_formatter(FormatStrFormatter("%g"))
        top.set_ylabel("GPUs needed")
        sizes = "/".join(str(p["gpus_per_worker"]) for p in result["profiles"])
        top.set_title(f"{Path(result['profile']).name} (G={sizes}{', split-phase' if result['split_phase'] else ''}): TTFT "
                      f"{1000 * result['ttft_slo_s']:.0f}ms, ATGT {1000 * result['atgt_slo_s']:.1f}ms, "
                      f"{100 * result['plan']['config']['attainment']:g}% attainment", fontsize=9)
        bottom.set_ylabel("GPUs / jsq's GPUs")
        bottom.set_xlabel("arrival rate (requests/s)")
        for ax in (top, bottom):
            ax.grid(True, which="both", alpha=0.3)
        top.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
