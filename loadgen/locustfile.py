"""Aladdin's open-loop trace replay as a plain locustfile.

    locust -f $(python -c 'import aladdin.loadgen.locustfile as m; print(m.__file__)') \\
        --headless -u 1 -r 1 --host http://127.0.0.1:8100 --rate 2 --num-requests 50 --output runs/a

Works the same with ``--processes N`` or ``--master`` / ``--worker`` on several hosts: the
master builds the schedule and shards it; workers only need ``--master-host``. ``aladdin
replay`` runs this file for you after validating its input.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from locust import User, constant, events, task

from aladdin.loadgen.client import API_PATHS, Endpoint, served_models
from aladdin.loadgen.replay import ReplaySession
from aladdin.loadgen.schedule import build_schedule, load_schedule, workload_tokenizer
from aladdin.loadgen.workload import ARRIVAL_KINDS, DATASETS, WorkloadConfig

_session: ReplaySession | None = None


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    group = parser.add_argument_group("aladdin replay", "Open-loop trace replay (the arrival process is ours, not Locust's users)")
    group.add_argument("--schedule", default=None, help="A prepared schedule.jsonl (from 'aladdin replay'); overrides the workload flags")
    group.add_argument("--workload", default=None,
                       help="The whole WorkloadConfig as JSON (from 'aladdin replay'): recorded in run.json, and it "
                            "overrides the workload flags")
    group.add_argument("--dataset", choices=DATASETS, default=WorkloadConfig.dataset)
    group.add_argument("--dataset-path", default=None)
    group.add_argument("--num-requests", type=int, default=WorkloadConfig.num_requests)
    group.add_argument("--arrival", choices=ARRIVAL_KINDS, default=WorkloadConfig.arrival)
    group.add_argument("--rate", type=float, default=WorkloadConfig.rate, help="requests/s")
    group.add_argument("--cv", type=float, default=WorkloadConfig.cv, help="gamma arrivals: coefficient of variation")
    group.add_argument("--seed", type=int, default=WorkloadConfig.seed)
    group.add_argument("--time-scale", type=float, default=WorkloadConfig.time_scale)
    group.add_argument("--tokenizer", default=None, help="model folder whose tokenizer counts tokens (default: the tiny model)")
    group.add_argument("--slo-tiers", default=None, help="per-request SLO tiers by share (aladdin replay --help)")
    group.add_argument("--api", choices=sorted(API_PATHS), default="completions")
    group.add_argument("--model", default=None, help="model name (default: the server's first)")
    group.add_argument("--request-timeout", type=float, default=600.0)
    group.add_argument("--output", default=None, help="run folder for requests.jsonl and run.json")
    group.add_argument("--label", default=None)
    group.add_argument("--lead-time", type=float, default=2.0, help="seconds between scheduling and the common start")


def _workload(opts) -> WorkloadConfig:
    """The workload ``aladdin replay`` built, whole; else the subset these flags describe."""
    if opts.workload:
        return WorkloadConfig.from_jsonable(json.loads(opts.workload))
    return WorkloadConfig(
        dataset=opts.dataset, dataset_path=opts.dataset_path, num_requests=opts.num_requests,
        arrival=opts.arrival, rate=opts.rate, cv=opts.cv, seed=opts.seed, time_scale=opts.time_scale,
        tokenizer=opts.tokenizer, slo_tiers=opts.slo_tiers,
    )


def _load_schedule(opts, workload: WorkloadConfig):
    def load():
        if opts.schedule:
            return load_schedule(opts.schedule)
        return build_schedule(workload, workload_tokenizer(workload))

    return load


@events.init.add_listener
def _on_init(environment, **_kw) -> None:
    global _session
    opts = environment.parsed_options
    if opts is None or environment.runner is None:
        return
    host = (environment.host or "").rstrip("/")
    from locust.runners import WorkerRunner

    is_worker = isinstance(environment.runner, WorkerRunner)
    model = opts.model
    if model is None and not is_worker:
        if not host:
            raise SystemExit("aladdin replay: --host is required")
        try:
            models = served_models(host)
        except ConnectionError as exc:
            raise SystemExit(f"aladdin replay: {exc}") from None
        if not models:
            raise SystemExit(f"aladdin replay: {host} serves no models")
        model = models[0]
    endpoint = Endpoint(base_url=host, model=model or "", api=opts.api, timeout_s=opts.request_timeout)
    workload = _workload(opts)
    params = {"workload": asdict(workload), "schedule_file": opts.schedule, "label": opts.label}
    output = Path(opts.output) if opts.output and not is_worker else None
    _session = ReplaySession(environment, _load_schedule(opts, workload), endpoint, output, params, opts.lead_time)
    _session.register()


@events.test_start.add_listener
def _on_test_start(environment, **_kw) -> None:
    if _session is not None and _session.role != "worker":
        _session.start()


@events.test_stop.add_listener
def _on_test_stop(environment, **_kw) -> None:
    if _session is not None and not _session.finished:
        _session.stop_early()


class ReplayIdleUser(User):
    """Locust starts a test only with a User class; the replay runs outside users, whose
    closed loop would turn an open-loop schedule into a capped one."""

    fixed_count = 1
    wait_time = constant(3600)

    @task
    def idle(self) -> None:
        """Nothing: requests are sent by the dispatcher greenlet, on the schedule."""
