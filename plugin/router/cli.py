"""``aladdin router``: the command that serves the router (options map onto config.RouterConfig)."""

from __future__ import annotations

import logging
import math

import click

from aladdin.clicommand import command
from aladdin.errors import AladdinError


@command("router")
@click.option("--worker", "workers", multiple=True, required=True, metavar="URL",
              help="A vLLM worker's base URL (repeat for each), e.g. http://127.0.0.1:8100.")
@click.option("--policy", default="aladdin", show_default=True,
              help="Placement: aladdin, aladdin-spread, jsq, po2, rr, least-kv, a spec string or a JSON file.")
@click.option("--profile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The workers' profile JSON (time models); without it the ATGT and TTFT filters are inert.")
@click.option("--headroom", type=float, default=None, help="Share of KV and ATGT budgets kept free (SLO policies).")
@click.option("--length-quantile", default=None, metavar="Q|mean",
              help="Output lengths are predicted as this quantile of past ones, or 'mean' (the paper's choice). "
                   "Default: the engine plugin's, 0.95 (a KV reservation that falls short becomes a preemption).")
@click.option("--ttft-slo", type=float, default=math.inf, help="Default TTFT SLO, seconds (headers override).")
@click.option("--atgt-slo", type=float, default=math.inf, help="Default ATGT SLO, seconds per token.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Model folder with the served model's tokenizer (default: the tiny model's, if served).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless told).")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--max-queue", type=int, default=256, show_default=True,
              help="Requests that may wait in the central queue; past it: 429.")
@click.option("--max-attempts", type=int, default=3, show_default=True,
              help="Workers tried per request (hand-backs and failures before the first byte).")
@click.option("--lost-ttft", type=click.Choice(["shed", "best-effort"]), default="shed", show_default=True,
              help="A queued request whose TTFT can no longer be met: 429, or placed anyway.")
@click.option("--queue-order", type=click.Choice(["fcfs", "edf"]), default="fcfs", show_default=True)
@click.option("--api-key", default=None, envvar="ALADDIN_ROUTER_API_KEY",
              help="Required of clients as 'Authorization: Bearer KEY' (env ALADDIN_ROUTER_API_KEY).")
@click.option("--worker-api-key", default=None, envvar="ALADDIN_WORKER_API_KEY", help="Sent to the workers.")
@click.option("--max-body-bytes", type=int, default=4 * 2**20, show_default=True)
@click.option("--queue-timeout", type=float, default=60.0, show_default=True, help="Seconds a request may wait queued.")
@click.option("--first-token-timeout", type=float, default=300.0, show_default=True,
              help="Seconds to a worker's first stream event.")
@click.option("--read-timeout", type=float, default=60.0, show_default=True,
              help="Seconds between two stream events.")
@click.option("--request-timeout", type=float, default=600.0, show_default=True,
              help="Seconds for a whole non-streaming answer.")
@click.option("--health-interval", type=float, default=1.0, show_default=True)
@click.option("--worker-rate", type=float, default=None,
              help="One worker's knee in requests/s (aladdin plan): aladdin_desired_workers from the planner's rule.")
@click.option("--scale-interval", type=float, default=60.0, show_default=True,
              help="Seconds per heartbeat of the desired-workers rule.")
@click.option("--min-workers", type=int, default=1, show_default=True)
def router(workers, policy, profile, headroom, length_quantile, ttft_slo, atgt_slo, tokenizer_dir, host, port, max_queue, max_attempts,
           lost_ttft, queue_order, api_key, worker_api_key, max_body_bytes, queue_timeout, first_token_timeout,
           read_timeout, request_timeout, health_interval, worker_rate, scale_interval, min_workers) -> None:
    """Serve an OpenAI-compatible router that places requests on the workers with the scheduler core."""
    from aladdin.plugin.core.policies import parse_policy
    from aladdin.plugin.router.app import run
    from aladdin.plugin.router.config import RouterConfig, ScalingConfig, Timeouts

    parse_policy(policy, headroom)  # a bad policy fails here, before any start-up
    quantile = {} if length_quantile is None else {"length_quantile": _quantile(length_quantile)}
    config = RouterConfig(
        workers=tuple(workers), policy=policy, profile=profile, headroom=headroom, ttft_slo=ttft_slo, atgt_slo=atgt_slo,
        host=host, port=port, max_queue=max_queue, max_attempts=max_attempts, lost_ttft=lost_ttft,
        queue_order=queue_order, api_key=api_key, worker_api_key=worker_api_key, max_body_bytes=max_body_bytes,
        health_interval_s=health_interval,
        timeouts=Timeouts(first_token=first_token_timeout, read=read_timeout, request=request_timeout,
                          queue=queue_timeout),
        scaling=ScalingConfig(worker_rate=worker_rate, interval_s=scale_interval, min_workers=min_workers),
        **quantile
    )
    config.validate()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        click.echo(f"warning: binding {host} without --api-key: anyone who reaches it can use the workers", err=True)
    click.echo(f"aladdin router on http://{host}:{port} -> {', '.join(workers)} (policy {policy})", err=True)
    run(config, tokenizer_dir)


def _quantile(text: str) -> float | None:
    if text == "mean":
        return None
    try:
        return float(text)
    except ValueError:
        raise AladdinError(f"--length-quantile must be a number in (0, 1) or 'mean', got {text!r}") from None
