"""A replay run inside Locust: schedule distribution, record collection and the run summary.

Locust is the process fabric (local, ``--processes``, ``--master``/``--worker`` on many hosts),
the live UI and the request counter; it is *not* the arrival process, because its users are
closed loops. The master (or the single local process) computes the schedule once, picks a
common start epoch a little in the future and sends each worker its shard; each worker runs
one ``Dispatcher``. Finished records flow back to the master, which appends them to
``requests.jsonl`` as they arrive and writes ``run.json`` at the end.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import gevent

import aladdin
from aladdin.loadgen.client import Endpoint, RunClock, StreamingClient
from aladdin.loadgen.dispatcher import Dispatcher, DispatchStats, percentiles_ms
from aladdin.loadgen.records import OK, RUN_SCHEMA_VERSION, RecordWriter, RequestRecord
from aladdin.loadgen.schedule import ScheduledRequest, schedule_from_jsonable, schedule_to_jsonable, shard

log = logging.getLogger("aladdin.replay")

MSG_SHARD, MSG_RECORDS, MSG_DONE = "aladdin_shard", "aladdin_records", "aladdin_done"
LAG_WARN_MS = 5.0  # dispatch or loop lag p99 above this: the client was the bottleneck
RATE_WARN = 0.02  # achieved vs scheduled rate off by more than this


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"aladdin": aladdin.__version__, "python": platform.python_version(), "platform": platform.platform()}
    for dist in ("locust", "gevent", "geventhttpclient"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


class RunTally:
    """Outcome counts and TTFTs of the records written so far (for run.json's summary)."""

    def __init__(self) -> None:
        self.counts = {"ok": 0, "error": 0, "timeout": 0}
        self.ttft_send: list[float] = []
        self.ttft_sched: list[float] = []

    def add(self, rec: dict) -> None:
        self.counts[rec["outcome"]] = self.counts.get(rec["outcome"], 0) + 1
        if rec["outcome"] == OK and rec["chunk_times"]:
            self.ttft_send.append(rec["chunk_times"][0] - rec["sent"])
            self.ttft_sched.append(rec["chunk_times"][0] - rec["scheduled"])


def summarize(schedule: list[ScheduledRequest], stats: DispatchStats, tally: RunTally, nominal_rate) -> dict:
    """Requested vs achieved rate, lag percentiles and TTFT (from send and from schedule), with warnings."""
    offsets = [r.offset for r in schedule]
    n = len(offsets)
    span = offsets[-1] - offsets[0] if n > 1 else 0.0
    schedule_rate = (n - 1) / span if span > 0 else None
    achieved = None
    if stats.first_dispatch is not None and stats.last_dispatch > stats.first_dispatch:
        achieved = (len(stats.dispatch_lags) - 1) / (stats.last_dispatch - stats.first_dispatch)
    dispatch = percentiles_ms(stats.dispatch_lags)
    loop = percentiles_ms(stats.loop_lags)
    warnings = []
    for name, pct in (("dispatch lag", dispatch), ("event-loop lag", loop)):
        if pct["p99_ms"] is not None and pct["p99_ms"] > LAG_WARN_MS:
            warnings.append(
                f"{name} p99 is {pct['p99_ms']:.1f} ms (> {LAG_WARN_MS:g} ms): the load generator could not keep "
                "its schedule; add processes (--processes) or hosts"
            )
    if schedule_rate and achieved and abs(achieved / schedule_rate - 1) > RATE_WARN:
        warnings.append(
            f"achieved rate {achieved:.3f}/s is {100 * (achieved / schedule_rate - 1):+.1f}% off the schedule's "
            f"{schedule_rate:.3f}/s"
        )
    missing = n - sum(tally.counts.values())
    return {
        "requests": n,
        "finished": sum(tally.counts.values()),
        "unfinished": missing,
        **tally.counts,
        "requested_rate": nominal_rate,
        "schedule_rate": schedule_rate,
        "achieved_rate": achieved,
        "dispatch_lag": dispatch,
        "loop_lag": loop,
        "ttft_from_send": percentiles_ms(tally.ttft_send),
        "ttft_from_scheduled": percentiles_ms(tally.ttft_sched),
        "warnings": warnings,
    }


class ReplaySession:
    """Wires one replay into a Locust environment, whatever this process's role is."""

    def __init__(self, environment, load_schedule, endpoint: Endpoint, output: Path | None, params: dict,
                 lead_time_s: float = 2.0):
        self.env = environment
        self.load_schedule = load_schedule  # callable: built lazily, only where it is needed
        self.endpoint = endpoint
        self.output = output
        self.params = params
        self.lead_time_s = lead_time_s
        self.writer: RecordWriter | None = None
        self.tally = RunTally()
        self.schedule: list[ScheduledRequest] = []
        self.start_epoch: float | None = None
        self.worker_stats: dict[str, DispatchStats] = {}
        self.pending_workers: set[str] = set()
        self.dispatcher: Dispatcher | None = None
        self.finished = False

    # ---- roles
    @property
    def role(self) -> str:
        from locust.runners import MasterRunner, WorkerRunner

        if isinstance(self.env.runner, MasterRunner):
            return "master"
        if isinstance(self.env.runner, WorkerRunner):
            return "worker"
        return "local"

    def register(self) -> None:
        runner = self.env.runner
        if self.role == "worker":
            runner.register_message(MSG_SHARD, self._on_shard)
        elif self.role == "master":
            runner.register_message(MSG_RECORDS, self._on_records)
            runner.register_message(MSG_DONE, self._on_worker_done)

    # ---- master / local
    def start(self) -> None:
        """At test start on the master or local runner: schedule, start epoch, shards."""
        self.schedule = self.load_schedule()
        self.start_epoch = time.time() + self.lead_time_s
        if self.output is not None:
            self.output.mkdir(parents=True, exist_ok=True)
            self.writer = RecordWriter(self.output / "requests.jsonl")
            self._write_run_json("running")
        if self.role == "local":
            gevent.spawn(self._run_local)
            return
        workers = sorted(self.env.runner.clients.keys())
        if not workers:
            raise RuntimeError("no Locust workers connected")
        self.pending_workers = set(workers)
        for worker_id, part in zip(workers, shard(self.schedule, len(workers))):
            self.env.runner.send_message(
                MSG_SHARD,
                {"start_epoch": self.start_epoch, "requests": schedule_to_jsonable(part),
                 "endpoint": asdict(self.endpoint)},
                client_id=worker_id,
            )
        log.info("sent %d requests to %d workers; start in %.1fs", len(self.schedule), len(workers), self.lead_time_s)

    def _run_local(self) -> None:
        stats = self._dispatch(self.schedule, self.start_epoch, self.endpoint, self._write)
        self.finish(stats)

    def _write(self, rec: RequestRecord | dict) -> None:
        data = asdict(rec) if isinstance(rec, RequestRecord) else rec
        self.tally.add(data)
        if self.writer is not None:
            self.writer.write_line(json.dumps(data, separators=(",", ":")))

    def _on_records(self, environment, msg, **_kw) -> None:
        for rec in msg.data:
            self._write(rec)

    def _on_worker_done(self, environment, msg, **_kw) -> None:
        self.worker_stats[msg.node_id] = DispatchStats(**msg.data)
        self.pending_workers.discard(msg.node_id)
        if not self.pending_workers:
            self.finish(DispatchStats.merge(list(self.worker_stats.values())))

    def finish(self, stats: DispatchStats, status: str = "finished") -> None:
        if self.finished:
            return
        self.finished = True
        summary = summarize(self.schedule, stats, self.tally, self.params.get("workload", {}).get("rate"))
        if self.writer is not None:
            self.writer.close()
        self._write_run_json(status, summary)
        print_summary(summary, self.output, file=sys.stderr)
        if status == "finished":
            gevent.spawn_later(0.1, self.env.runner.quit)

    def stop_early(self) -> None:
        """Test stopped before the schedule was done (Ctrl-C, run time): keep what finished."""
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.role != "worker" and self.start_epoch is not None:
            stats = DispatchStats.merge(list(self.worker_stats.values()) +
                                        ([self.dispatcher.stats] if self.dispatcher else []))
            self.finish(stats, status="interrupted")

    def _write_run_json(self, status: str, summary: dict | None = None) -> None:
        if self.output is None:
            return
        run = {
            "schema": RUN_SCHEMA_VERSION,
            "status": status,
            "label": self.params.get("label") or self.output.name,
            "start_epoch": self.start_epoch,
            "start_time": datetime.fromtimestamp(self.start_epoch, timezone.utc).isoformat(),
            "params": self.params,
            "endpoint": asdict(self.endpoint),
            "locust_role": self.role,
            "locust_workers": max(1, len(self.worker_stats) or len(self.pending_workers)),
            "versions": versions(),
            "summary": summary,
        }
        tmp = self.output / "run.json.tmp"
        tmp.write_text(json.dumps(run, indent=2) + "\n")
        os.replace(tmp, self.output / "run.json")

    # ---- worker
    def _on_shard(self, environment, msg, **_kw) -> None:
        data = msg.data
        endpoint = Endpoint(**data["endpoint"])
        shard_ = schedule_from_jsonable(data["requests"])
        gevent.spawn(self._run_worker, shard_, data["start_epoch"], endpoint)

    def _run_worker(self, shard_: list[ScheduledRequest], start_epoch: float, endpoint: Endpoint) -> None:
        outbox: list[dict] = []

        def flush_loop():
            while True:
                gevent.sleep(0.2)
                flush()

        def flush():
            if outbox:
                batch = outbox[:]
                del outbox[:]
                self.env.runner.send_message(MSG_RECORDS, batch)

        flusher = gevent.spawn(flush_loop)
        stats = self._dispatch(shard_, start_epoch, endpoint, lambda rec: outbox.append(asdict(rec)))
        flusher.kill()
        flush()
        self.env.runner.send_message(MSG_DONE, stats.to_jsonable())

    # ---- shared
    def _dispatch(self, shard_, start_epoch, endpoint, sink) -> DispatchStats:
        clock = RunClock(start_epoch)
        client = StreamingClient(endpoint, clock, client_name=f"{platform.node()}:{os.getpid()}")

        def on_record(rec: RequestRecord) -> None:
            self._fire_locust_event(rec)
            sink(rec)

        self.dispatcher = Dispatcher(client, clock, on_record)
        try:
            return self.dispatcher.run(shard_)
        finally:
            client.close()

    def _fire_locust_event(self, rec: RequestRecord) -> None:
        """Feed Locust's live UI (its stats are rounded: for display only)."""
        self.env.events.request.fire(
            request_type="POST",
            name=self.endpoint.path,
            response_time=((rec.done or 0) - (rec.sent or rec.dispatched or 0)) * 1e3,
            response_length=sum(rec.chunk_tokens),
            exception=None if rec.outcome == OK else RuntimeError(rec.error),
            context={},
        )


def print_summary(summary: dict, output: Path | None, file=sys.stderr) -> None:
    def ms(d):
        return "n/a" if d["p50_ms"] is None else f"p50 {d['p50_ms']:.1f} ms, p99 {d['p99_ms']:.1f} ms, max {d['max_ms']:.1f} ms"

    rate = lambda x: "n/a" if x is None else f"{x:.3f}/s"  # noqa: E731
    lines = [
        f"replay: {summary['finished']}/{summary['requests']} finished "
        f"(ok {summary['ok']}, error {summary['error']}, timeout {summary['timeout']})",
        f"  rate: requested {rate(summary['requested_rate'])}, schedule {rate(summary['schedule_rate'])}, "
        f"achieved {rate(summary['achieved_rate'])}",
        f"  dispatch lag: {ms(summary['dispatch_lag'])}",
        f"  event-loop lag: {ms(summary['loop_lag'])}",
        f"  TTFT from send: {ms(summary['ttft_from_send'])}",
        f"  TTFT from scheduled time: {ms(summary['ttft_from_scheduled'])}",
    ]
    if output is not None:
        lines.append(f"  records: {output / 'requests.jsonl'}")
    for warning in summary["warnings"]:
        lines.append(f"WARNING: {warning}")
    print("\n".join(lines), file=file, flush=True)
