"""``aladdin router`` and ``aladdin picker``: the two front ends of the scheduler core.

Their placement options are one set (``placement_options``) mapped onto config.RouterConfig;
each command adds only what its transport needs.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import click

from aladdin.clicommand import command
from aladdin.errors import AladdinError

LOOPBACK = ("127.0.0.1", "localhost", "::1")

PLACEMENT_OPTIONS = [
    click.option("--policy", default="aladdin", show_default=True,
                 help="Placement: aladdin, aladdin-spread, jsq, po2, rr, least-kv, a spec string or a JSON file."),
    click.option("--profile", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="The workers' profile JSON (time models); without it the ATGT and TTFT filters are inert."),
    click.option("--headroom", type=float, default=None, help="Share of KV and ATGT budgets kept free (SLO policies)."),
    click.option("--length-quantile", default=None, metavar="Q|mean",
                 help="Output lengths are predicted as this quantile of past ones, or 'mean' (the paper's choice). "
                      "Default: the engine plugin's, 0.95 (a KV reservation that falls short becomes a preemption)."),
    click.option("--length-predictor", type=click.Choice(["bucket", "text"]), default="bucket", show_default=True,
                 help="Predict output lengths from the prompt's length (the core's buckets) or from its text "
                      "(the shipped ShareGPT model; the 'predict' extra), at --length-quantile either way."),
    click.option("--ttft-slo", type=float, default=math.inf, help="Default TTFT SLO, seconds (headers override)."),
    click.option("--atgt-slo", type=float, default=math.inf, help="Default ATGT SLO, seconds per token."),
    click.option("--tokenizer", "tokenizer_dir", type=click.Path(exists=True, file_okay=False), default=None,
                 help="Model folder with the served model's tokenizer (default: the tiny model's, if served)."),
    click.option("--max-queue", type=int, default=256, show_default=True,
                 help="Requests that may wait in the central queue; past it: 429."),
    click.option("--lost-ttft", type=click.Choice(["shed", "best-effort"]), default="shed", show_default=True,
                 help="A queued request whose TTFT can no longer be met: 429, or placed anyway."),
    click.option("--queue-order", type=click.Choice(["fcfs", "edf"]), default="fcfs", show_default=True),
    click.option("--queue-timeout", type=float, default=60.0, show_default=True,
                 help="Seconds a request may wait queued."),
    click.option("--worker-api-key", default=None, envvar="ALADDIN_WORKER_API_KEY", help="Sent to the workers."),
    click.option("--max-body-bytes", type=int, default=4 * 2**20, show_default=True),
    click.option("--health-interval", type=float, default=1.0, show_default=True),
    click.option("--worker-rate", type=float, default=None,
                 help="One worker's knee in requests/s (aladdin plan): aladdin_desired_workers from the planner's rule."),
    click.option("--scale-interval", type=float, default=60.0, show_default=True,
                 help="Seconds per heartbeat of the desired-workers rule."),
    click.option("--min-workers", type=int, default=1, show_default=True),
]


def placement_options(fn):
    for option in reversed(PLACEMENT_OPTIONS):
        fn = option(fn)
    return fn


def placement_config(workers: tuple[str, ...], host: str, port: int, *, policy: str, profile: str | None,
                     headroom: float | None, length_quantile: str | None, length_predictor: str,
                     ttft_slo: float, atgt_slo: float,
                     max_queue: int, lost_ttft: str, queue_order: str, queue_timeout: float,
                     worker_api_key: str | None, max_body_bytes: int, health_interval: float,
                     worker_rate: float | None, scale_interval: float, min_workers: int, **transport: Any):
    """The RouterConfig of the shared options; ``transport``: the command's own RouterConfig fields."""
    from aladdin.plugin.core.policies import parse_policy
    from aladdin.plugin.router.config import RouterConfig, ScalingConfig, Timeouts

    parse_policy(policy, headroom)  # a bad policy fails here, before any start-up
    quantile = {} if length_quantile is None else {"length_quantile": _quantile(length_quantile)}
    timeouts = transport.pop("timeouts", {})
    config = RouterConfig(
        workers=workers, policy=policy, profile=profile, headroom=headroom, length_predictor=length_predictor,
        ttft_slo=ttft_slo, atgt_slo=atgt_slo,
        host=host, port=port, max_queue=max_queue, lost_ttft=lost_ttft, queue_order=queue_order,
        worker_api_key=worker_api_key, max_body_bytes=max_body_bytes, health_interval_s=health_interval,
        timeouts=Timeouts(queue=queue_timeout, **timeouts),
        scaling=ScalingConfig(worker_rate=worker_rate, interval_s=scale_interval, min_workers=min_workers),
        **quantile, **transport,
    )
    config.validate()
    return config


@command("router")
@click.option("--worker", "workers", multiple=True, required=True, metavar="URL",
              help="A vLLM worker's base URL (repeat for each), e.g. http://127.0.0.1:8100.")
@placement_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless told).")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--max-attempts", type=int, default=3, show_default=True,
              help="Workers tried per request (hand-backs and failures before the first byte).")
@click.option("--api-key", default=None, envvar="ALADDIN_ROUTER_API_KEY",
              help="Required of clients as 'Authorization: Bearer KEY' (env ALADDIN_ROUTER_API_KEY).")
@click.option("--first-token-timeout", type=float, default=300.0, show_default=True,
              help="Seconds to a worker's first stream event.")
@click.option("--read-timeout", type=float, default=60.0, show_default=True,
              help="Seconds between two stream events.")
@click.option("--request-timeout", type=float, default=600.0, show_default=True,
              help="Seconds for a whole non-streaming answer.")
def router(workers, tokenizer_dir, host, port, max_attempts, api_key, first_token_timeout, read_timeout,
           request_timeout, **placement) -> None:
    """Serve an OpenAI-compatible router that places requests on the workers with the scheduler core."""
    from aladdin.plugin.router.app import run

    config = placement_config(
        tuple(workers), host, port, max_attempts=max_attempts, api_key=api_key,
        timeouts={"first_token": first_token_timeout, "read": read_timeout, "request": request_timeout}, **placement)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if host not in LOOPBACK and api_key is None:
        click.echo(f"warning: binding {host} without --api-key: anyone who reaches it can use the workers", err=True)
    click.echo(f"aladdin router on http://{host}:{port} -> {', '.join(workers)} (policy {config.policy})", err=True)
    run(config, tokenizer_dir)


@command("picker")
@click.option("--worker", "workers", multiple=True, required=True, metavar="HOST:PORT",
              help="A model server (vLLM, ideally with the engine plugin) as the gateway names it, "
                   "e.g. 10.0.0.7:8000 (repeat for each; an http:// URL works too).")
@placement_options
@click.option("--grpc-host", default="127.0.0.1", show_default=True, help="Address of the ext_proc gRPC port.")
@click.option("--grpc-port", type=int, default=9002, show_default=True, help="The ext_proc port gateways call.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.option("--metrics-port", type=int, default=9090, show_default=True,
              help="HTTP: /metrics (Prometheus, for KEDA), /state, /health.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM certificate: the gRPC port speaks TLS (as gateways connect).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None, help="Its PEM private key.")
@click.option("--drain", type=float, default=2.0, show_default=True,
              help="On SIGTERM: readiness goes down at once, yet new requests are served this many seconds "
                   "(until the gateways' health checks move on).")
@click.option("--grace", type=float, default=5.0, show_default=True,
              help="Then: seconds the streams in flight may finish.")
def picker(workers, tokenizer_dir, grpc_host, grpc_port, metrics_host, metrics_port, tls_cert, tls_key, drain, grace,
           **placement) -> None:
    """Serve the Gateway API Inference Extension endpoint picker (Envoy ext_proc) on the scheduler core."""
    from aladdin.plugin.router.picker import PickerConfig, endpoint_url, run

    urls = tuple(endpoint_url(address) for address in workers)
    config = PickerConfig(placement_config(urls, metrics_host, metrics_port, **placement), grpc_host=grpc_host,
                          grpc_port=grpc_port, tls_cert=tls_cert, tls_key=tls_key, drain_s=drain,
                          grace_s=grace)
    config.validate()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if grpc_host not in LOOPBACK and tls_cert is None:
        click.echo(f"warning: serving ext_proc on {grpc_host} without TLS", err=True)
    click.echo(f"aladdin picker on {grpc_host}:{grpc_port} (ext_proc{', TLS' if tls_cert else ''}) -> "
               f"{', '.join(workers)} (policy {config.placement.policy})", err=True)
    run(config, tokenizer_dir)


def _quantile(text: str) -> float | None:
    if text == "mean":
        return None
    try:
        return float(text)
    except ValueError:
        raise AladdinError(f"--length-quantile must be a number in (0, 1) or 'mean', got {text!r}") from None
