"""``aladdin replay`` without Locust: the same schedule, dispatcher, client and records, in one process.

The GPU machine has no Locust (and no network to install it). Locust is only the process
fabric of a replay; the arrival process, the streaming client and the records are the project's
own (``Dispatcher``, ``StreamingClient``, ``RecordWriter``). This drives them directly in one
gevent process, the way ``aladdin replay --processes 1`` runs them inside Locust's local runner,
and writes the same run folder (``schedule.jsonl``, ``requests.jsonl``, ``run.json``), which
``aladdin analyze`` reads.

The workload flags are the CLI's own (``workload_options`` / ``workload_schedule``), so the same
flags build the same schedule as ``aladdin replay`` and ``aladdin simulate``.

    PYTHONPATH=... python3 scripts/gpu/replay_direct.py --host http://127.0.0.1:8000 \\
        --dataset sharegpt -n 400 --rate 8 --seed 0 --max-output-tokens 256 \\
        --tokenizer /tmp/models/llama2-7b -o runs/real-r8 --label "real vLLM"
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import click

from aladdin.clicommand import command
from aladdin.loadgen.cli import workload_options, workload_schedule


@command()
@click.option("--host", required=True, help="Base URL of an OpenAI-compatible server.")
@workload_options
@click.option("--api", type=click.Choice(["completions", "chat"]), default="completions", show_default=True)
@click.option("--model", default=None, help="Model name (default: the server's first).")
@click.option("--request-timeout", type=float, default=600.0, show_default=True)
@click.option("--lead-time", type=float, default=2.0, show_default=True, help="Seconds from scheduling to the start.")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--label", default=None)
def main(host, api, model, request_timeout, lead_time, output, label, **workload_flags):
    """Replay a workload open-loop against HOST (no Locust) and write a run folder."""
    import gevent  # noqa: F401  (the dispatcher and client run on gevent's hub)

    from aladdin.loadgen.client import Endpoint, RunClock, StreamingClient, served_models
    from aladdin.loadgen.dispatcher import Dispatcher
    from aladdin.loadgen.records import RUN_SCHEMA_VERSION, RecordWriter, refuse_existing_run
    from aladdin.loadgen.replay import RunTally, print_summary, summarize, versions
    from aladdin.loadgen.schedule import save_schedule

    workload, make_schedule = workload_schedule(workload_flags)
    refuse_existing_run(output)
    if model is None:
        models = served_models(host)
        if not models:
            raise click.ClickException(f"{host} serves no models")
        model = models[0]
    schedule = make_schedule()
    output.mkdir(parents=True, exist_ok=True)
    save_schedule(output / "schedule.jsonl", schedule)
    endpoint = Endpoint(base_url=host.rstrip("/"), model=model, api=api, timeout_s=request_timeout)
    params = {"workload": asdict(workload), "schedule_file": None, "label": label,
              "driver": "scripts/gpu/replay_direct.py (no Locust)"}
    start_epoch = time.time() + lead_time

    def write_run_json(status: str, summary: dict | None = None) -> None:
        run = {
            "schema": RUN_SCHEMA_VERSION,
            "status": status,
            "label": label or output.name,
            "start_epoch": start_epoch,
            "start_time": datetime.fromtimestamp(start_epoch, timezone.utc).isoformat(),
            "params": params,
            "endpoint": asdict(endpoint),
            "locust_role": "none",
            "locust_workers": 1,
            "versions": versions(),
            "summary": summary,
        }
        tmp = output / "run.json.tmp"
        tmp.write_text(json.dumps(run, indent=2) + "\n")
        os.replace(tmp, output / "run.json")

    writer = RecordWriter(output / "requests.jsonl")
    tally = RunTally()

    def sink(rec) -> None:
        data = asdict(rec)
        tally.add(data)
        writer.write_line(json.dumps(data, separators=(",", ":")))

    write_run_json("running")
    click.echo(f"replaying {len(schedule)} requests over {schedule[-1].offset:.1f}s to {host} ({model})", err=True)
    clock = RunClock(start_epoch)
    client = StreamingClient(endpoint, clock, client_name=f"{platform.node()}:{os.getpid()}")
    try:
        stats = Dispatcher(client, clock, sink).run(schedule)
    finally:
        client.close()
        writer.close()
    summary = summarize(schedule, stats, tally, workload.rate)
    write_run_json("finished", summary)
    print_summary(summary, output, file=sys.stderr)


if __name__ == "__main__":
    main()
