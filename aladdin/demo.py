"""``aladdin demo``: the main job end to end on this machine, with no flags needed.

Starts a local vLLM CPU worker (tiny Llama, dummy weights, real tokenizer), replays a real
ShareGPT sample with Poisson arrivals, analyses the run against SLOs and writes the HTML
report. Everything it started is stopped at the end, on error, or on Ctrl-C.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from aladdin.clicommand import command


@command("demo")
@click.option("--rate", type=float, default=2.0, show_default=True, help="Poisson arrival rate, requests/s.")
@click.option("--num-requests", "-n", type=click.IntRange(min=1), default=80, show_default=True)
@click.option("--max-output-tokens", type=click.IntRange(min=4), default=256, show_default=True,
              help="ShareGPT requests with longer replies are skipped (keeps the demo to a few minutes).")
@click.option("--ttft-slo", type=float, default=0.5, show_default=True, help="TTFT SLO, seconds.")
@click.option("--atgt-slo", type=float, default=0.025, show_default=True, help="ATGT SLO, seconds per token.")
@click.option("--kv-tokens", type=click.IntRange(min=4096), default=32768, show_default=True,
              help="KV cache capacity of the worker, tokens.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--base-port", type=click.IntRange(1024, 65535), default=8100, show_default=True)
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default: runs/demo-<time>).")
@click.pass_context
def demo(ctx, rate, num_requests, max_output_tokens, ttft_slo, atgt_slo, kv_tokens, seed, base_port, output):
    """Local vLLM CPU worker + ShareGPT replay + SLO analysis and HTML report."""
    from aladdin.analysis.cli import analyze
    from aladdin.cluster import ClusterConfig, LocalCluster
    from aladdin.loadgen.cli import replay

    output = output or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    config = ClusterConfig(workers=1, kv_tokens=kv_tokens, base_port=base_port, state_dir=output / "cluster")
    click.echo(f"[1/3] starting a vLLM CPU worker (tiny Llama, {kv_tokens} KV tokens); logs in {config.state_dir}",
               err=True)
    with LocalCluster(config) as cluster:
        url = cluster.urls[0]
        click.echo(f"[2/3] replaying {num_requests} ShareGPT requests at {rate} req/s (Poisson) to {url}", err=True)
        ctx.invoke(replay, host=url, dataset="sharegpt", num_requests=num_requests, arrival="poisson", rate=rate,
                   seed=seed, max_output_tokens=max_output_tokens, output=output / "replay", label="demo")
        click.echo("[3/3] stopping the worker", err=True)
    click.echo(f"analysing: HTML report {output / 'report.html'}, then the SLO table", err=True)
    ctx.invoke(analyze, runs=(output / "replay",), ttft_slo=ttft_slo, atgt_slo=atgt_slo,
               json_path=output / "analysis.json", report_path=output / "report.html", plots_dir=output / "plots",
               sweep_atgt=f"{atgt_slo / 4:g}:{atgt_slo * 4:g}:16")
