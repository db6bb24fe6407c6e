"""``aladdin plan``: how many GPUs, in which worker configuration, serve a rate within the SLOs.

Two modes share the options: for fixed rates (``--rate``/``--rates``) it prints, per rate,
the smallest cluster each policy needs and the fewest GPUs per policy; with ``--heartbeat
FILE`` it turns a time-varying rate into a worker count per heartbeat for an autoscaler.
How the searches work: docs/placement.md, "Planner".
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from aladdin.clicommand import command
from aladdin.errors import AladdinError
from aladdin.plugin.core.policies import POLICY_NAMES
from aladdin.plugin.core.queue import QUEUE_ORDERS

RATE_CSV_HEADER = ("time_s", "rate")


def _numbers(option: str, text: str | None) -> list[float]:
    """A comma-separated list of numbers ('' or None: empty)."""
    if not text:
        return []
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise AladdinError(f"{option} must be comma-separated numbers, got {text!r}") from None


def _policies(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in POLICY_NAMES]
    if unknown or not names:
        raise AladdinError(f"--policy: unknown policy {', '.join(unknown) or repr(text)}; "
                           f"choose from {','.join(POLICY_NAMES)}")
    return names


@command("plan")
@click.option("--profile", "profiles", type=click.Path(dir_okay=False, path_type=Path), multiple=True, required=True,
              help="A worker configuration (profile JSON, with its gpus_per_worker); repeat to compare several.")
@click.option("--rate", type=float, default=None, help="Cluster arrival rate to plan for, requests/s.")
@click.option("--rates", default=None, help="More rates: R1,R2,...")
@click.option("--ttft-slo", type=float, default=None, help="TTFT SLO in seconds (required unless --worker-rate).")
@click.option("--atgt-slo", type=float, default=None,
              help="ATGT SLO in seconds per token (required unless --worker-rate).")
@click.option("--attainment", type=float, default=0.99, show_default=True,
              help="Share of requests that must meet both SLOs.")
@click.option("--policy", "policy_list", default=",".join(POLICY_NAMES), show_default=True,
              help="Placement policies to plan for, comma-separated.")
@click.option("--headroom", "headroom_list", default="0,0.05,0.1", show_default=True,
              help="Headrooms of the SLO-aware policies to try; each policy keeps the one needing the fewest GPUs.")
@click.option("--queue", "queue_list", default="fcfs", show_default=True,
              help=f"Central queue orders to try for the SLO-aware policies ({', '.join(QUEUE_ORDERS)}: arrival or "
                   "earliest TTFT deadline), comma-separated; each policy keeps the best.")
@click.option("--oracle-lengths", is_flag=True, help="Also plan aladdin with the true output lengths (the ceiling).")
@click.option("--split-phase", is_flag=True,
              help="Plan a prefill pool and a decode pool (placement on the decode pool) instead of colocated workers.")
@click.option("--kv-transfer-us-per-token", type=float, default=0.0, show_default=True,
              help="Split-phase: microseconds to move one prompt token's KV from the prefill to the decode pool.")
@click.option("--num-requests", "-n", type=int, default=2000, show_default=True,
              help="Requests per single-worker probe; cluster checks simulate as many per worker's worth of load.")
@click.option("--check-requests", type=int, default=None,
              help="Requests per worker's worth of load in a cluster check (default: --num-requests).")
@click.option("--sample", type=int, default=None,
              help="Distinct ShareGPT conversations to draw lengths from (default: --num-requests, at most 1000); "
                   "longer runs resample them with replacement.")
@click.option("--dataset-path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ShareGPT-format JSON for the lengths (default: the packaged ShareGPT V3).")
@click.option("--seed", type=int, default=0, show_default=True, help="Lengths, arrivals and po2's choices.")
@click.option("--rate-tolerance", type=float, default=0.02, show_default=True,
              help="The per-worker rate search stops at this relative bracket width.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the whole plan (every probe) as JSON here.")
@click.option("--heartbeat", "heartbeat_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Re-plan per heartbeat: a CSV 'time_s,rate' (a step function) or a trace whose arrivals are binned.")
@click.option("--interval", type=float, default=60.0, show_default=True, help="Heartbeat interval, seconds.")
@click.option("--scale-headroom", type=float, default=0.1, show_default=True,
              help="Heartbeat: plan for rate / (1 - this) so workers run below their measured knee.")
@click.option("--scale-down-after", type=int, default=3, show_default=True,
              help="Heartbeat: scale down only to the largest count wanted over this many heartbeats (1: at once).")
@click.option("--min-workers", type=int, default=1, show_default=True, help="Heartbeat: never fewer workers.")
@click.option("--worker-rate", type=float, default=None,
              help="Heartbeat: a known per-worker rate (req/s) instead of searching it; needs one --profile.")
@click.option("--time-scale", type=float, default=1.0, show_default=True,
              help="Heartbeat trace: multiply its timestamps by this.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Heartbeat: write the CSV here instead of stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
def plan(profiles, rate, rates, ttft_slo, atgt_slo, attainment, policy_list, headroom_list, queue_list, oracle_lengths,
         split_phase, kv_transfer_us_per_token, num_requests, check_requests, sample, dataset_path, seed, rate_tolerance,
         json_path, heartbeat_path, interval, scale_headroom, scale_down_after, min_workers, worker_rate, time_scale, csv_path, quiet):
    """Plan the GPUs a rate needs, per placement policy, with the cluster simulator."""
    from aladdin.plugin.plan.planner import (
        HeartbeatConfig,
        PlanConfig,
        Planner,
        Variant,
        WorkerConfig,
        Workload,
        variants_for,
    )

    rate_list = ([rate] if rate is not None else []) + _numbers("--rates", rates)
    for value in rate_list:
        if not (math.isfinite(value) and value > 0):
            raise AladdinError(f"arrival rate must be > 0 requests/s, got {value:g}")
    if not 0.0 < attainment <= 1.0:
        raise AladdinError(f"--attainment must be in (0, 1], got {attainment:g}")
    if heartbeat_path is None and not rate_list:
        raise AladdinError("give --rate/--rates, or --heartbeat FILE")
    if heartbeat_path is not None and rate_list:
        raise AladdinError("--heartbeat takes its rates from the file; drop --rate/--rates")
    if worker_rate is not None:
        if heartbeat_path is None:
            raise AladdinError("--worker-rate applies to --heartbeat only")
        if len(profiles) != 1:
            raise AladdinError("--worker-rate needs exactly one --profile (its gpus_per_worker)")
    configs = [WorkerConfig.from_profile(path) for path in profiles]
    for worker in configs:
        if worker.perf.meta.get("derived"):
            click.echo(f"note: {worker.name} (G={worker.gpus_per_worker}) is derived from a smaller worker's profile, "
                       "not measured (docs/perfmodel.md)", err=True)
        if heartbeat_path is None and num_requests < 4 * worker.perf.max_num_seqs:
            click.echo(f"warning: {num_requests} requests per probe is under 4 x max_num_seqs "
                       f"({worker.perf.max_num_seqs}) of {worker.name}: a probe can end before a queue builds, so "
                       "its knee reads high; raise --num-requests", err=True)
    heartbeat_config = HeartbeatConfig(interval, scale_headroom, scale_down_after, min_workers)
    heartbeat_config.validate()
    log = (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))

    if worker_rate is not None:
        if not (math.isfinite(worker_rate) and worker_rate > 0):
            raise AladdinError(f"--worker-rate must be > 0 requests/s, got {worker_rate:g}")
        chosen = {"config": configs[0].name, "gpus_per_worker": configs[0].gpus_per_worker, "variant": "given",
                  "rate": worker_rate}
        _heartbeat(heartbeat_path, heartbeat_config, chosen, time_scale, csv_path, json_path, None)
        return

    if ttft_slo is None or atgt_slo is None:
        raise AladdinError("--ttft-slo and --atgt-slo are required")
    if heartbeat_path is not None and split_phase:
        raise AladdinError("--heartbeat sizes colocated workers; drop --split-phase")
    config = PlanConfig(ttft_slo, atgt_slo, attainment, num_requests, check_requests, rate_tolerance, seed,
                        split_phase=split_phase, kv_transfer_s_per_token=kv_transfer_us_per_token * 1e-6)
    config.validate()
    queues = [q.strip() for q in queue_list.split(",") if q.strip()]
    unknown = [q for q in queues if q not in QUEUE_ORDERS]
    if unknown or not queues:
        raise AladdinError(f"--queue: unknown order(s) {','.join(unknown) or '(none)'}; choose from {','.join(QUEUE_ORDERS)}")
    variants: list[Variant] = variants_for(_policies(policy_list), _numbers("--headroom", headroom_list),
                                           oracle_lengths, queues)
    if sample is not None and sample < 1:
        raise AladdinError(f"--sample must be at least 1, got {sample}")
    sample = sample or min(num_requests, 1000)
    log(f"loading {sample} ShareGPT conversations")
    workload = Workload.sharegpt(sample, seed=seed, path=dataset_path)
    planner = Planner(configs, variants, config, workload, log)

    if heartbeat_path is not None:
        searches = [planner.worker_rate(c, v) for c in configs for v in variants]
        best = max(searches, key=lambda s: s.rate / s.gpus_per_worker)
        chosen = {"config": best.config, "gpus_per_worker": best.gpus_per_worker, "variant": best.variant,
                  "rate": best.rate}
        _heartbeat(heartbeat_path, heartbeat_config, chosen, time_scale, csv_path, json_path, config)
        return

    result = planner.plan(rate_list)
    _print_plan(result, configs)
    if json_path is not None:
        _write_json(json_path, result.to_dict())
        click.echo(f"wrote {json_path}")


def _print_plan(result, configs) -> None:
    click.echo(f"SLOs: TTFT {result.config.ttft_slo:g}s, ATGT {1000 * result.config.atgt_slo:g}ms/token, "
               f"attainment >= {result.config.attainment:g}"
               + ("; split-phase (prefill pool + decode pool)" if result.config.split_phase else ""))
    click.echo("per-worker knee (one worker, the highest rate meeting the target):")
    for search in result.searches:
        click.echo(f"  {search.config} (G={search.gpus_per_worker}) {search.variant}: {search.rate:.4g} req/s "
                   f"({len(search.probes)} probes)")
    several = len(configs) > 1
    for rate in result.rates:
        click.echo(f"\nrate {rate:g} req/s")
        click.echo(f"  {'policy':<22} {'config':<20} {'G':>2} {'workers':>7} {'GPUs':>5} {'attainment':>10} "
                   f"{'estimate':>8} {'sims':>4}" if several else
                   f"  {'policy':<22} {'G':>2} {'workers':>7} {'GPUs':>5} {'attainment':>10} {'estimate':>8} {'sims':>4}")
        for check in (c for c in result.checks if c.rate == rate):
            workers = "-" if check.workers is None else (
                f"{check.prefill_workers}+{check.workers}" if check.prefill_workers else str(check.workers))
            gpus = "-" if check.gpus is None else str(check.gpus)
            attained = "not met" if check.attainment is None else f"{check.attainment:.4f}"
            where = f" {_short(check.config):<20}" if several else ""
            click.echo(f"  {check.variant.label:<22}{where} {check.gpus_per_worker:>2} {workers:>7} {gpus:>5} "
                       f"{attained:>10} {check.estimate:>8} {len(check.probes):>4}")
        click.echo("  fewest GPUs per policy:")
        for family, best in result.best(rate).items():
            if best is None:
                click.echo(f"    {family:<16} not met by any configuration (docs/placement.md, Planner)")
            else:
                click.echo(f"    {family:<16} {best.gpus:>5} GPUs = {best.shape}"
                           f" ({best.variant.label}{', ' + _short(best.config) if several else ''})")
    click.echo(f"\nplanned in {result.wall_s:.1f}s")


def _short(name: str) -> str:
    return Path(name).name


def _write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _read_rates(path: Path, interval: float, time_scale: float):
    """Heartbeat times and rates from a 'time_s,rate' CSV or from a trace's binned arrivals."""
    import numpy as np

    from aladdin.plugin.plan.planner import binned_rates, step_rates

    try:
        with open(path, encoding="utf-8") as fh:
            header = fh.readline()
            rows = fh.read().splitlines()
    except OSError as exc:
        raise AladdinError(f"cannot read {path}: {exc.strerror or exc}") from None
    if tuple(part.strip() for part in header.split(",")) == RATE_CSV_HEADER:
        try:
            values = np.array([[float(x) for x in row.split(",")] for row in rows if row.strip()], dtype=float)
        except ValueError:
            raise AladdinError(f"{path}: every row must be two numbers 'time_s,rate'") from None
        if values.size == 0 or values.ndim != 2 or values.shape[1] != 2:
            raise AladdinError(f"{path}: expected rows of two numbers 'time_s,rate'")
        return step_rates(values[:, 0], values[:, 1], interval)
    from aladdin.loadgen.datasets import load_tokenizer, load_trace
    from aladdin.modeldir import default_model_dir

    specs = load_trace(path, load_tokenizer(default_model_dir("tiny")), time_scale=time_scale)
    return binned_rates([s.arrival for s in specs], interval)


def _heartbeat(path, heartbeat_config, chosen, time_scale, csv_path, json_path, plan_config) -> None:
    from dataclasses import asdict

    from aladdin.plugin.plan.planner import heartbeat_plan

    times, rates = _read_rates(path, heartbeat_config.interval_s, time_scale)
    beats = heartbeat_plan(times, rates, chosen["rate"], chosen["gpus_per_worker"], heartbeat_config)
    click.echo(f"sizing with {chosen['config']} (G={chosen['gpus_per_worker']}, {chosen['variant']}): "
               f"{chosen['rate']:.4g} req/s per worker, headroom {heartbeat_config.headroom:g}", err=True)
    lines = ["time_s,rate,workers,gpus"] + [f"{b.time_s:g},{b.rate:.6g},{b.workers},{b.gpus}" for b in beats]
    text = "\n".join(lines) + "\n"
    if csv_path is None:
        sys.stdout.write(text)
    else:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        csv_path.write_text(text, encoding="utf-8")
        click.echo(f"wrote {csv_path}", err=True)
    if json_path is not None:
        _write_json(json_path, {
            "plan": asdict(plan_config) if plan_config else None,
            "heartbeat": asdict(heartbeat_config),
            "worker": chosen,
            "heartbeats": [asdict(b) for b in beats],
        })
        click.echo(f"wrote {json_path}", err=True)
