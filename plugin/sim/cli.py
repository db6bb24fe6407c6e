"""``aladdin simulate``: replay a workload on a simulated cluster instead of real servers.

The schedule comes from the same code as ``aladdin replay`` (build_schedule), and the run
folder has the same files, so ``aladdin analyze`` compares simulated and real runs directly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path

import click

from aladdin.clicommand import command
from aladdin.errors import AladdinError
from aladdin.loadgen.cli import slo_tiers_option, workload_options, workload_schedule
from aladdin.loadgen.records import refuse_existing_run
from aladdin.plugin.core.policies import POLICY_NAMES
from aladdin.plugin.core.queue import QUEUE_ORDERS


@command("simulate")
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Worker profile (JSON from 'aladdin profile') whose models time every iteration.")
@workload_options
@slo_tiers_option
@click.option("--workers", type=click.IntRange(min=1), required=True,
              help="Number of workers (engines); with --prefill-workers, the decode pool.")
@click.option("--prefill-workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Split-phase: a pool of this many prefill-only workers; first tokens come from it and "
                   "placement applies to the decode pool. 0: colocated workers.")
@click.option("--kv-transfer-us-per-token", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Split-phase: microseconds to move one prompt token's KV to the decode pool.")
@click.option("--gpus-per-worker", type=click.IntRange(min=1), default=1, show_default=True,
              help="GPUs of one worker; must match the profile's gpus_per_worker.")
@click.option("--kv-tokens", type=click.IntRange(min=1), default=None,
              help="KV cache capacity of each worker in tokens, rounded down to whole blocks "
                   "(default: the profile's, as its engine reported it).")
@click.option("--policy", default="aladdin", show_default=True,
              help=f"A named policy ({', '.join(POLICY_NAMES)}), a spec such as "
                   "'filters=seqs,kv,atgt-own,atgt,ttft;score=fill;pick=min', or a JSON file of one.")
@click.option("--queue", "queue_order", type=click.Choice(QUEUE_ORDERS), default="fcfs", show_default=True,
              help="Central queue order: arrival (fcfs) or earliest TTFT deadline (edf).")
@click.option("--ttft-slo", type=float, default=None, help="TTFT SLO in seconds (default: none).")
@click.option("--atgt-slo", type=float, default=None, help="ATGT SLO in seconds per token (default: none).")
@click.option("--headroom", type=float, default=None,
              help="SLO-aware policies: share of each worker's KV and ATGT budget kept free against prediction error.")
@click.option("--prefix-caching/--no-prefix-caching", default=None,
              help="Model vLLM's prefix cache: a request computes only the part of its prompt whose full KV "
                   "blocks are cached (shared prefixes need prompt token ids in the workload; a preempted request "
                   "finds its own blocks). Default: on, as vLLM.")
@click.option("--async-scheduling/--no-async-scheduling", default=None,
              help="Model vLLM's async scheduling: each batch is decided while the previous one runs, so an "
                   "arrival waits one more step and a finished request holds its seat and KV one step longer. "
                   "Default: as vLLM runs on the profile's hardware: on for a GPU, off for a CPU.")
@click.option("--oracle-lengths", is_flag=True, help="Place with the true output lengths instead of predictions.")
@click.option("--length-predictor", type=click.Choice(["bucket", "text"]), default="bucket", show_default=True,
              help="Predict output lengths from the prompt's length (the core's buckets, learned online) or from "
                   "its text (the shipped ShareGPT model, at schedule build; needs the prompts' texts).")
@click.option("--predictor-quantile", type=float, default=None,
              help="Predict this quantile of output lengths (default: the bucket's mean, the text model's typical).")
@click.option("--default-output-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Prediction before enough requests have finished.")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run folder.")
@click.option("--label", default=None, help="Name of the run in comparisons (default: folder name).")
def simulate(profile_path, workers, prefill_workers, kv_transfer_us_per_token, gpus_per_worker, kv_tokens, policy,
             queue_order, ttft_slo, atgt_slo, headroom, prefix_caching, async_scheduling, oracle_lengths,
             length_predictor, predictor_quantile, default_output_tokens, output, label, **workload_flags):
    """Simulate a cluster of vLLM workers serving a workload under a placement policy."""
    from aladdin.plugin.core.policies import parse_policy
    from aladdin.plugin.core.predictor import PredictorConfig
    from aladdin.plugin.profile.io import load_profile
    from aladdin.plugin.sim.simulator import ClusterSimulator, SimConfig

    workload, make_schedule = workload_schedule(workload_flags)
    seed = workload.seed
    spec = parse_policy(policy, headroom, seed)
    refuse_existing_run(output)
    perf = load_profile(profile_path)
    measured = perf.meta.get("gpus_per_worker")
    if measured != gpus_per_worker:
        raise AladdinError(
            f"profile {profile_path} was measured with gpus_per_worker {measured}, not --gpus-per-worker {gpus_per_worker}"
        )
    if kv_tokens is not None:
        perf = _with_kv_tokens(perf, kv_tokens)
    try:
        predictor = PredictorConfig(quantile=predictor_quantile, default_output_tokens=default_output_tokens)
    except ValueError as exc:
        raise AladdinError(f"--predictor-quantile: {exc}") from None
    config = SimConfig(
        num_workers=workers,
        policy=spec.name,
        headroom=spec.headroom,
        queue=queue_order,
        ttft_slo=math.inf if ttft_slo is None else ttft_slo,
        atgt_slo=math.inf if atgt_slo is None else atgt_slo,
        oracle_lengths=oracle_lengths,
        predictor=predictor,
        seed=seed,
        gpus_per_worker=gpus_per_worker,
        prefill_workers=prefill_workers,
        kv_transfer_s_per_token=kv_transfer_us_per_token * 1e-6,
        **{name: value for name, value in (("prefix_caching", prefix_caching), ("async_scheduling", async_scheduling))
           if value is not None},  # unset: SimConfig's defaults
    )
    config.validate()
    if length_predictor == "text":
        from aladdin.plugin.predict.text import TextLengthPredictor, with_predictions

        text_model = TextLengthPredictor.load(quantile=predictor_quantile)
        schedule = with_predictions(make_schedule(prompts=True), text_model)
    else:
        schedule = make_schedule(prompts=False)  # token counts are all it needs: no tokenizer unless ShareGPT
    pools = f"{prefill_workers} prefill + {workers} decode" if prefill_workers else str(workers)
    click.echo(f"simulating {len(schedule)} requests over {schedule[-1].offset:.1f}s on {pools} workers ({policy}, "
               f"{perf.kv.capacity_tokens} KV tokens each)", err=True)
    simulator = ClusterSimulator(perf, config, spec)
    result = simulator.run(schedule)
    params = {
        "workload": asdict(workload),
        "profile": str(profile_path),
        "workers": workers,
        "prefill_workers": prefill_workers,
        "kv_transfer_s_per_token": config.kv_transfer_s_per_token,
        "gpus_per_worker": gpus_per_worker,
        "kv_tokens": perf.kv.capacity_tokens,
        "policy": spec.name,
        "policy_spec": spec.to_dict(),
        "queue": queue_order,
        "prefix_caching": config.prefix_caching,
        "async_scheduling": simulator.workers[0].async_scheduling,
        "ttft_slo": config.ttft_slo,
        "atgt_slo": config.atgt_slo,
        "oracle_lengths": oracle_lengths,
        "predictor": predictor.to_dict(),
        "length_predictor": length_predictor,
        "label": label,
    }
    result.write(output, label=label, params=params, ttft_slo=config.ttft_slo, atgt_slo=config.atgt_slo)
    summary = result.summary(config.ttft_slo, config.atgt_slo)
    click.echo(
        f"simulated {summary['simulated_seconds']:.1f}s in {summary['wall_seconds']:.1f}s wall; "
        f"{summary['preemptions']} preemptions; central queue peak {summary['central_queue_peak']}"
    )
    ttft, atgt = summary["ttft"], summary["atgt"]
    click.echo(f"TTFT p50 {ttft['p50_s']:.3f}s p99 {ttft['p99_s']:.3f}s; "
               f"ATGT p50 {_ms(atgt['p50_s'])} p99 {_ms(atgt['p99_s'])}")
    if summary["slo_attainment"] is None:
        click.echo(f"no SLO was given (--ttft-slo, --atgt-slo or --slo-tiers), so no attainment; records in {output}")
    else:
        click.echo(f"SLO attainment {100 * summary['slo_attainment']:.1f}%; records in {output}")


def _with_kv_tokens(perf, kv_tokens: int):
    """The profile with each worker's KV capacity set to ``kv_tokens``, in whole blocks."""
    from aladdin.plugin.core.perfmodel import KVModel

    block = perf.kv.block_size
    if kv_tokens < block:
        raise AladdinError(f"--kv-tokens {kv_tokens} is less than one KV block ({block} tokens)")
    return replace(perf, kv=KVModel(block, kv_tokens // block * block))


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{1000 * seconds:.1f}ms"
