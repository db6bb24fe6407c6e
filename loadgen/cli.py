"""``aladdin replay``: validate everything up front, then run the locustfile headless."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import click

from aladdin.clicommand import command
from aladdin.errors import AladdinError
from aladdin.loadgen.workload import ARRIVAL_KINDS, DATASETS, DEFAULT_RATE, DEFAULT_REQUESTS, WorkloadConfig


def _len_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    try:
        lo_i, hi_i = int(lo), int(hi or lo)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not N or LO:HI") from None
    if not 1 <= lo_i <= hi_i:
        raise click.BadParameter(f"{text!r}: need 1 <= LO <= HI")
    return lo_i, hi_i


def _len_text(lengths: tuple[int, int]) -> str:
    lo, hi = lengths
    return str(lo) if lo == hi else f"{lo}:{hi}"


# Choices and defaults come from loadgen.workload, which imports nothing heavy: --help stays fast.
WORKLOAD_OPTIONS = (
    click.option("--dataset", type=click.Choice(DATASETS), default=WorkloadConfig.dataset, show_default=True),
    click.option("--dataset-path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="ShareGPT-format JSON or a trace (Azure CSV, Mooncake JSONL). Default: packaged ShareGPT V3."),
    # None: the dataset's default (WorkloadConfig.__post_init__): a trace is replayed whole on its own timestamps.
    click.option("--num-requests", "-n", type=int, default=None,
                 help=f"Requests to send (default: {DEFAULT_REQUESTS}); with --dataset trace, its first N "
                      "(default: the whole trace)."),
    click.option("--arrival", type=click.Choice(ARRIVAL_KINDS), default=None,
                 help="Arrival process (default: poisson; with --dataset trace, the trace's timestamps)."),
    click.option("--rate", type=float, default=None,
                 help=f"Requests per second of poisson, gamma or constant arrivals (default: {DEFAULT_RATE:g})."),
    click.option("--cv", type=float, default=WorkloadConfig.cv, show_default=True,
                 help="Gamma arrivals: CV of inter-arrival times."),
    click.option("--seed", type=int, default=WorkloadConfig.seed, show_default=True),
    click.option("--time-scale", type=float, default=WorkloadConfig.time_scale, show_default=True,
                 help="Multiply trace timestamps by this."),
    click.option("--min-prompt-tokens", type=int, default=WorkloadConfig.min_prompt_tokens, show_default=True),
    click.option("--max-prompt-tokens", type=int, default=WorkloadConfig.max_prompt_tokens, show_default=True),
    click.option("--min-output-tokens", type=int, default=WorkloadConfig.min_output_tokens, show_default=True),
    click.option("--max-output-tokens", type=int, default=WorkloadConfig.max_output_tokens, show_default=True),
    click.option("--max-total-tokens", type=int, default=WorkloadConfig.max_total_tokens, show_default=True),
    click.option("--prompt-tokens", default=_len_text(WorkloadConfig.prompt_tokens), show_default=True,
                 help="Synthetic: N or LO:HI (uniform)."),
    click.option("--output-tokens", default=_len_text(WorkloadConfig.output_tokens), show_default=True,
                 help="Synthetic: N or LO:HI (uniform)."),
    click.option("--tokenizer", type=click.Path(file_okay=False, path_type=Path), default=None,
                 help="Model folder whose tokenizer counts tokens (default: the tiny model)."),
)

# Per-request SLOs by tier (loadgen.slo): part of the workload, but a flag of its own decorator.
slo_tiers_option = click.option(
    "--slo-tiers", default=None,
    help="Per-request SLOs by share, in seconds: 'NAME:SHARE:ttft=S,atgt=S;...', e.g. "
         "'interactive:0.7:ttft=0.5,atgt=0.05;batch:0.3:ttft=10,atgt=0.2'. Tiers are drawn with --seed; "
         "requests carry them as X-Aladdin-TTFT-SLO-Ms / X-Aladdin-ATGT-SLO-Ms headers.")


def workload_options(fn):
    """The workload flags of every command that builds a schedule (replay, simulate): one set,
    so the same flags give the same schedule wherever it is replayed."""
    for option in reversed(WORKLOAD_OPTIONS):
        fn = option(fn)
    return fn


def workload_schedule(options: dict):
    """Pop the workload flags out of a command's ``options``: (WorkloadConfig, make_schedule).

    ``make_schedule(prompts=False)`` leaves out the prompt texts of synthetic and trace requests
    (their token counts are all a simulation needs), so no tokenizer is loaded for them.
    """
    from aladdin.loadgen.schedule import build_schedule

    path, tokenizer = options.pop("dataset_path"), options.pop("tokenizer")
    if options["dataset"] == "trace" and options["arrival"] is None and options["rate"] is not None:
        raise AladdinError("--rate does not apply to a trace's own timestamps; add --arrival poisson, gamma or "
                           "constant to replace them, or --time-scale to replay the trace faster or slower")
    names = ("dataset", "num_requests", "arrival", "rate", "cv", "seed", "time_scale", "min_prompt_tokens",
             "max_prompt_tokens", "min_output_tokens", "max_output_tokens", "max_total_tokens")
    workload = WorkloadConfig(
        dataset_path=str(path) if path else None,
        tokenizer=str(tokenizer) if tokenizer else None,
        prompt_tokens=_len_range(options.pop("prompt_tokens")),
        output_tokens=_len_range(options.pop("output_tokens")),
        slo_tiers=options.pop("slo_tiers", None),
        **{name: options.pop(name) for name in names},
    )
    workload.validate()
    return workload, lambda prompts=True: build_schedule(workload, prompts=prompts)


@command("replay")
@click.option("--host", required=True, help="Base URL of an OpenAI-compatible server or router.")
@workload_options
@slo_tiers_option
@click.option("--api", type=click.Choice(["completions", "chat"]), default="completions", show_default=True)
@click.option("--model", default=None, help="Model name (default: the server's first).")
@click.option("--request-timeout", type=float, default=600.0, show_default=True)
@click.option("--processes", type=int, default=1, show_default=True, help="Locust worker processes on this host.")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run folder.")
@click.option("--label", default=None, help="Name of the run in comparisons (default: folder name).")
@click.option("--locust-stats", is_flag=True, help="Show Locust's live tables instead of a progress bar.")
def replay(host, api, model, request_timeout, processes, output, label, locust_stats, **workload_flags):
    """Replay a dataset or trace open-loop against HOST and record every token's arrival."""
    from aladdin.loadgen.client import served_models
    from aladdin.loadgen.records import refuse_existing_run
    from aladdin.loadgen.schedule import save_schedule

    workload, make_schedule = workload_schedule(workload_flags)
    if processes < 1:
        raise AladdinError(f"--processes must be at least 1, got {processes}")
    refuse_existing_run(output)
    try:
        models = served_models(host)
    except ConnectionError as exc:
        raise AladdinError(str(exc)) from None
    if model is None:
        if not models:
            raise AladdinError(f"{host} serves no models")
        model = models[0]
    elif models and model not in models:
        raise AladdinError(f"{host} does not serve model {model!r} (it serves: {', '.join(models)})")

    schedule = make_schedule()
    output.mkdir(parents=True, exist_ok=True)
    save_schedule(output / "schedule.jsonl", schedule)
    click.echo(f"replaying {len(schedule)} requests over {schedule[-1].offset:.1f}s to {host} ({model})", err=True)
    code = run_locust(
        host=host, schedule_file=output / "schedule.jsonl", output=output, model=model, api=api,
        request_timeout=request_timeout, processes=processes, label=label, workload=workload,
        total=len(schedule), locust_stats=locust_stats,
    )
    run_json = output / "run.json"
    if run_json.exists():
        from aladdin.loadgen.replay import print_summary

        summary = json.loads(run_json.read_text()).get("summary")
        if summary:
            print_summary(summary, output)
    if code == 130:
        raise AladdinError(f"replay interrupted; the requests finished so far are in {output / 'requests.jsonl'}")
    if code != 0:
        log = "" if locust_stats else f"; see {output / 'locust.log'}"
        raise AladdinError(f"the replay exited with code {code}{log}; records so far are in {output}")


def locustfile_path() -> Path:
    """Found without importing it: importing Locust monkey-patches the importing process."""
    return Path(__file__).with_name("locustfile.py")


def run_locust(*, host, schedule_file, output, model, api, request_timeout, processes, label, workload, total,
               locust_stats=False) -> int:
    """Run the locustfile headless in a child process (Locust monkey-patches the process it runs in).

    By default Locust's own output goes to ``output/locust.log`` and a progress bar counts the
    records as they land in requests.jsonl; ``locust_stats`` shows Locust's live tables instead.
    """
    args = [
        sys.executable, "-m", "locust", "-f", str(locustfile_path()), "--headless", "-u", "1", "-r", "1",
        "--host", host, "--schedule", str(schedule_file), "--output", str(output), "--model", model,
        "--api", api, "--request-timeout", str(request_timeout), "--exit-code-on-error", "0",
        "--workload", json.dumps(asdict(workload)), "--loglevel", "WARNING",
    ]
    if label:
        args += ["--label", label]
    if processes > 1:
        args += ["--processes", str(processes)]
    if locust_stats:
        proc = subprocess.Popen(args)
        return _wait(proc)
    with open(output / "locust.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        with click.progressbar(length=total, label="replay", file=sys.stderr, show_pos=True) as bar:
            return _wait(proc, lambda n: bar.update(n - bar.pos), output / "requests.jsonl")


def _wait(proc: subprocess.Popen, on_count=None, records: Path | None = None) -> int:
    """Wait for the replay, reporting the number of records written; Ctrl-C stops it cleanly."""
    lines, offset = 0, 0
    try:
        while True:
            try:
                code = proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                code = None
            if on_count is not None and records is not None and records.exists():
                with open(records, "rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read()
                lines += chunk.count(b"\n")
                offset += len(chunk)
                on_count(lines)
            if code is not None:
                return code
    except KeyboardInterrupt:
        proc.wait()  # Locust got the same SIGINT: it writes run.json and stops
        return 130
