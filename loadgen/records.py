"""The per-request record: what a replay (or a simulation) writes and the analysis reads.

One JSON object per line in ``requests.jsonl``, appended and flushed as each request
finishes, so a killed run keeps everything already finished. All times are seconds on one
monotonic clock, relative to the run's start (``run.json``'s ``start_epoch``).
Bump ``SCHEMA_VERSION`` (a record) or ``RUN_SCHEMA_VERSION`` (``run.json``) on any incompatible
change; readers refuse versions they don't know. This module imports no gevent, so the
simulator can write its run folders with the same constants and checks.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Iterator

from aladdin.errors import AladdinError

SCHEMA_VERSION = 1  # one line of requests.jsonl
RUN_SCHEMA_VERSION = 1  # run.json, written by replays and simulations

OK, ERROR, TIMEOUT = "ok", "error", "timeout"


@dataclass
class RequestRecord:
    """One request, from its scheduled time to its last byte."""

    id: str
    scheduled: float  # target send time from the arrival schedule
    requested_output_tokens: int  # max_tokens sent with ignore_eos
    dispatched: float | None = None  # when the dispatcher started the request
    sent: float | None = None  # just before the request bytes were written
    first_byte: float | None = None  # response headers received
    chunk_times: list[float] = field(default_factory=list)  # arrival of each content chunk
    chunk_tokens: list[int] = field(default_factory=list)  # tokens carried by each chunk
    done: float | None = None  # stream finished ([DONE], error or timeout)
    prompt_tokens: int | None = None  # from the usage chunk
    output_tokens: int | None = None  # from the usage chunk
    expected_prompt_tokens: int | None = None  # the dataset's count, with the client's tokenizer
    status: int | None = None  # HTTP status (None when no response)
    outcome: str = OK  # ok | error | timeout
    error: str | None = None
    worker: str | None = None  # the serving worker, when a router names it (X-Aladdin-Worker)
    client: str | None = None  # the load-generator process that sent it
    schema: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


@dataclass
class SLORecord(RequestRecord):
    """A request that carried its own SLOs (``--slo-tiers``): three more keys, after ``schema``.

    A subclass, not new fields of RequestRecord, so records of requests without SLOs keep
    exactly their old keys and bytes; readers take the keys with ``get`` (None when absent).
    """

    slo_tier: str | None = None  # its --slo-tiers tier
    ttft_slo: float | None = None  # the SLOs (s) sent in its headers; None: the run's default applies
    atgt_slo: float | None = None


SLO_KEYS = ("slo_tier", "ttft_slo", "atgt_slo")


def make_record(slo_tier: str | None = None, ttft_slo: float | None = None, atgt_slo: float | None = None,
                **fields) -> RequestRecord:
    """A RequestRecord, or an SLORecord when the request has a tier or SLOs of its own."""
    if slo_tier is None and ttft_slo is None and atgt_slo is None:
        return RequestRecord(**fields)
    return SLORecord(**fields, slo_tier=slo_tier, ttft_slo=ttft_slo, atgt_slo=atgt_slo)


def refuse_existing_run(folder: str | Path) -> None:
    """Refuse a run folder that already holds a run: its requests.jsonl would be appended to."""
    if (Path(folder) / "requests.jsonl").exists():
        raise AladdinError(f"{folder} already holds a run (requests.jsonl); choose another --output")


class RecordWriter:
    """Appends records to ``requests.jsonl``; each line is flushed to the OS when written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh: IO[str] = open(self.path, "a", encoding="utf-8")
        self.count = 0

    def write(self, record: RequestRecord) -> None:
        self.write_line(record.to_json())

    def write_line(self, line: str) -> None:
        """Write one already-serialized record (a worker's record forwarded to the master)."""
        self._fh.write(line + "\n")
        self._fh.flush()
        self.count += 1

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()


class SchemaError(ValueError):
    """A record file written by an unknown schema version."""


def iter_records(path: str | Path, stats: dict | None = None) -> Iterator[dict]:
    """Yield each complete record of a ``requests.jsonl`` as a dict.

    A line that is not valid JSON (a run killed mid-write leaves a cut last line) is
    skipped and counted in ``stats["partial_lines"]``; an unknown schema version raises.
    """
    stats = stats if stats is not None else {}
    stats.setdefault("partial_lines", 0)
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                stats["partial_lines"] += 1
                continue
            if not isinstance(rec, dict):
                stats["partial_lines"] += 1
                continue
            version = rec.get("schema")
            if version != SCHEMA_VERSION:
                raise SchemaError(
                    f"{path}: record schema version {version!r} is not supported (this aladdin reads {SCHEMA_VERSION})"
                )
            yield rec
