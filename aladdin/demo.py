"""``aladdin demo``: the main job end to end on this machine, with no flags needed.

Starts two local vLLM CPU workers (tiny Llama, dummy weights, real tokenizer) with small KV
caches and the engine plugin, and replays one real ShareGPT schedule (Poisson arrivals) through
the router under each placement policy (aladdin, jsq); then the same schedule on stock vLLM
workers behind plain round robin, what a cluster without Aladdin runs. ``--gateway envoy`` puts
Envoy in front instead, asking ``aladdin picker`` (the same placement) over ext_proc. One comparison table
(attainment, goodput, TTFT/ATGT, preemptions) and one HTML report compare the runs.
Everything it started is stopped at the end, on error, or on Ctrl-C.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import click

from aladdin.clicommand import command
from aladdin.errors import AladdinError

DEFAULT_POLICIES = ("aladdin", "jsq")
GATEWAYS = ("router", "envoy")
STOCK_RUN = "stock-rr"  # stock vLLM workers, requests spread round robin (as an L4 balancer would)
FRONT_END_METRICS_FILE = "router_metrics.txt"  # the router's or the picker's /metrics at the end of a run
CHECKOUT_PROFILE = Path(__file__).resolve().parent.parent / "profiles" / "cpu-tiny.json"


def _default_profile() -> Path | None:
    return CHECKOUT_PROFILE if CHECKOUT_PROFILE.is_file() else None


@command("demo")
@click.option("--policy", "policies", multiple=True, default=DEFAULT_POLICIES, show_default=True,
              help="Router placement policies to compare (repeat): aladdin, aladdin-spread, jsq, po2, rr, least-kv.")
@click.option("--stock/--no-stock", default=True, show_default=True,
              help="Also replay on stock vLLM workers (round robin), the baseline without Aladdin.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--rate", type=float, default=2.5, show_default=True, help="Poisson arrival rate, requests/s.")
@click.option("--num-requests", "-n", type=click.IntRange(min=1), default=90, show_default=True)
@click.option("--max-output-tokens", type=click.IntRange(min=4), default=256, show_default=True,
              help="ShareGPT requests with longer replies are skipped (keeps the demo to a few minutes).")
@click.option("--ttft-slo", type=float, default=1.0, show_default=True, help="TTFT SLO, seconds.")
@click.option("--atgt-slo", type=float, default=0.05, show_default=True, help="ATGT SLO, seconds per token.")
@click.option("--slo-tiers", default=None, metavar="SPEC",
              help="Per-request SLOs by share, e.g. 'interactive:0.7:ttft=0.5,atgt=0.05;batch:0.3:ttft=10,atgt=0.2'.")
@click.option("--queue-order", type=click.Choice(["fcfs", "edf"]), default="fcfs", show_default=True,
              help="The router's central queue: first come first served, or earliest TTFT deadline first "
                   "(for mixed SLOs).")
@click.option("--kv-tokens", default="4096", show_default=True, metavar="N|N,N,...",
              help="KV cache capacity of each worker, tokens (small, so that placement matters); a list gives "
                   "one per worker, a pool of different sizes (e.g. 2048,8192).")
@click.option("--max-model-len", type=click.IntRange(min=256), default=2048, show_default=True)
@click.option("--profile", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=_default_profile,
              help="The workers' profile (the router's and the plugin's time models). Default: profiles/cpu-tiny.json.")
@click.option("--gateway", type=click.Choice(GATEWAYS), default="router", show_default=True,
              help="What places the requests: the aladdin router (a proxy), or Envoy asking the endpoint picker "
                   "(aladdin picker, over ext_proc; needs the gateway extra).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--base-port", type=click.IntRange(1024, 65535), default=8100, show_default=True,
              help="First worker's port; the router (or picker and Envoy) take the ports after the last worker's.")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default: runs/demo-<time>).")
@click.pass_context
def demo(ctx, policies, stock, workers, rate, num_requests, max_output_tokens, ttft_slo, atgt_slo, slo_tiers,
         queue_order, kv_tokens, max_model_len, profile, gateway, seed, base_port, output):
    """Router + engine plugin on local vLLM CPU workers vs jsq and stock vLLM: SLO table and HTML report."""
    from aladdin.analysis.cli import analyze
    from aladdin.cluster import ClusterConfig
    from aladdin.plugin.core.policies import parse_policy
    from aladdin.plugin.vllm.launch import PLUGIN_ENVIRONMENT, plugin_flags

    if profile is None:
        raise AladdinError("no profile found (profiles/cpu-tiny.json is in the project checkout); pass --profile FILE")
    if gateway == "envoy":
        from aladdin.gateway import envoy_binary

        envoy_binary()  # missing: one clear line before anything starts
    sizes = kv_sizes(kv_tokens, workers)
    policies = tuple(dict.fromkeys(policies))  # one run each
    for policy in policies:
        parse_policy(policy, None)  # a bad policy fails before anything starts
    output = output or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    cluster = ClusterConfig(workers=workers, kv_tokens=sizes[0], kv_tokens_each=sizes if len(set(sizes)) > 1 else (),
                            max_model_len=max_model_len, base_port=base_port)
    cluster.validate()  # a cache too small for one request: one line before anything starts
    router_port = base_port + workers
    workload = dict(dataset="sharegpt", num_requests=num_requests, arrival="poisson", rate=rate, seed=seed,
                    max_output_tokens=max_output_tokens, max_total_tokens=max_model_len, slo_tiers=slo_tiers)
    router_args = ("--profile", str(profile), "--ttft-slo", str(ttft_slo), "--atgt-slo", str(atgt_slo),
                   "--queue-order", queue_order)

    def replay(host: str, label: str) -> Path:
        from aladdin.loadgen.cli import replay as replay_command

        run = output / label
        click.echo(f"   replaying {num_requests} ShareGPT requests at {rate:g} req/s through {label}", err=True)
        ctx.invoke(replay_command, host=host, output=run, label=label, **workload)
        return run

    runs: list[Path] = []
    steps = len(policies) + (1 if stock else 0)
    step = 0
    if policies:
        config = replace(cluster, state_dir=output / "cluster-plugin", env=PLUGIN_ENVIRONMENT,
                         extra_args=tuple(plugin_flags(profile, ttft_slo, atgt_slo)))
        with _Workers(config, "with the engine plugin") as urls:
            for policy in policies:
                step += 1
                click.echo(f"[{step}/{steps}] router --policy {policy}", err=True)
                runs.append(_routed_run(urls, router_port, ("--policy", policy, *router_args), replay, policy,
                                        config.state_dir, gateway))
    if stock:
        step += 1
        with _Workers(replace(cluster, state_dir=output / "cluster-stock"), "stock") as urls:
            click.echo(f"[{step}/{steps}] stock vLLM, round robin", err=True)
            runs.append(_routed_run(urls, router_port, ("--policy", "rr"), replay, STOCK_RUN,
                                    output / "cluster-stock", gateway))
    click.echo(f"analysing: HTML report {output / 'report.html'}, then the comparison table", err=True)
    ctx.invoke(analyze, runs=tuple(runs), ttft_slo=ttft_slo, atgt_slo=atgt_slo, json_path=output / "analysis.json",
               report_path=output / "report.html",
               plots_dir=output / "plots", sweep_atgt=f"{atgt_slo / 4:g}:{atgt_slo * 4:g}:16")


def kv_sizes(text: str, workers: int) -> tuple[int, ...]:
    """``--kv-tokens``: one size for every worker, or one per worker; AladdinError names what is wrong."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        sizes = tuple(int(part) for part in parts)
    except ValueError:
        raise AladdinError(f"--kv-tokens must be whole numbers of tokens, got {text!r}") from None
    if len(sizes) not in (1, workers):
        raise AladdinError(f"--kv-tokens lists {len(sizes)} sizes for {workers} workers; give one, or one per worker")
    return sizes * workers if len(sizes) == 1 else sizes


class _Workers:
    """The demo's local cluster, announced on stderr; entered, it gives the workers' URLs."""

    def __init__(self, config, kind: str):
        from aladdin.cluster import LocalCluster

        self.cluster = LocalCluster(config)
        self.kind = kind

    def __enter__(self):
        cfg = self.cluster.config
        sizes = ", ".join(str(cfg.kv_tokens_of(i)) for i in range(cfg.workers)) if cfg.kv_tokens_each else None
        kv = f"{sizes} KV tokens" if sizes else f"{cfg.kv_tokens} KV tokens each"
        click.echo(f"starting {cfg.workers} vLLM CPU workers ({self.kind}; tiny Llama, {kv}); logs in {cfg.state_dir}",
                   err=True)
        return self.cluster.__enter__().urls

    def __exit__(self, *exc):
        click.echo("stopping the workers", err=True)
        self.cluster.__exit__(*exc)


def _routed_run(urls: list[str], port: int, args: tuple[str, ...], replay, label: str, log_dir: Path,
                gateway: str = "router") -> Path:
    """One replay through a fresh router (or picker behind Envoy, taking ``port`` to ``port + 3``);
    the workers' counters over the run go to counters.json, the front end's final /metrics beside
    them (and Envoy's access log, with each request's picked and served worker)."""
    from aladdin.cluster import LocalFrontEnd, server_counters

    before = [server_counters(url) for url in urls]
    if gateway == "router":
        with LocalFrontEnd(urls, port, log_dir / f"router-{label}.log", args) as router:
            run = replay(router.url, label)
            (run / FRONT_END_METRICS_FILE).write_text(router.metrics())  # decision latency, retries, 429s, ...
    else:
        from aladdin.gateway import EnvoyConfig, LocalEnvoy

        picker = LocalFrontEnd(urls, port, log_dir / f"picker-{label}.log", args, picker_grpc_port=port + 1)
        envoy = EnvoyConfig(pickers=(f"127.0.0.1:{port + 1}",), port=port + 2, admin_port=port + 3,
                            access_log=str(log_dir / f"envoy-{label}" / "access.log"))
        with picker, LocalEnvoy(envoy, log_dir / f"envoy-{label}") as front:
            run = replay(front.url, label)
            (run / FRONT_END_METRICS_FILE).write_text(picker.metrics())
        (run / "envoy_access.log").write_text(Path(envoy.access_log).read_text())
    after = [server_counters(url) for url in urls]
    counters = {key: sum(a[key] - b[key] for a, b in zip(after, before)) for key in after[0]}
    (run / "counters.json").write_text(json.dumps({k: round(v) for k, v in counters.items()}) + "\n")
    return run
