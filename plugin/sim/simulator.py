"""Discrete-event simulator of a cluster of vLLM-V1-like workers behind a placement policy.

Each worker runs continuous batching like vLLM V1's scheduler: every iteration first gives
each running request its next token (its decode), then prefill chunks to running requests
still prefilling and to waiting requests in FCFS order, up to ``max_batched_tokens`` tokens
and ``max_num_seqs`` running requests. A waiting request is admitted only if its whole
prompt fits the free KV blocks (vLLM's ``scheduler_reserve_full_isl``), but blocks are
allocated chunk by chunk as the prompt is computed, and one at a time as decodes grow; when a
request needs a block and none is free, the newest running request is preempted: its blocks
are freed and it goes back to the front of the waiting queue, to re-prefill prompt +
generated tokens (recompute). Requests that arrive at the same instant all reach an idle
worker before it plans its first iteration, as vLLM's loop takes every pending input before a
step. Iteration times come from the worker's PerfModel. Two vLLM options, both on by default
as on a GPU (SimConfig): prefix caching (plugin/sim/prefix_cache.py: a request computes only
what is not cached) and async scheduling (each batch is decided while the previous one runs:
an arrival waits one more step, a finished request holds its seat and blocks one step
longer). How this compares with vLLM's own scheduler, step by step: docs/simulator.md.

Speed: an iteration is only simulated one at a time while something is prefilling. A run of
pure decode iterations has a fixed batch, so its iteration times form an arithmetic series:
the worker jumps straight to the next moment something changes (a request finishes, reaches
its predicted length, or KV runs out), and an arrival cuts the run at the first iteration
boundary after it (with async scheduling, one iteration later). Token times are never stored per token: each worker logs its runs
(start, iterations, first time, increment) and each request the contiguous range of its
worker's iterations it streamed in, and the times are materialized at the end.

Output: the same per-request records as a real replay (``requests.jsonl`` + ``run.json``), so
``aladdin analyze`` reads simulated runs unchanged. Design notes: docs/placement.md.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from aladdin.errors import AladdinError
from aladdin.loadgen.records import OK, RUN_SCHEMA_VERSION, SCHEMA_VERSION, RequestRecord, make_record, refuse_existing_run
from aladdin.loadgen.schedule import ScheduledRequest
from aladdin.plugin.core.lifecycle import Decision, Placement, Scheduler, SchedulerConfig
from aladdin.plugin.core.perfmodel import PerfModel
from aladdin.plugin.core.pipeline import Available
from aladdin.plugin.core.policies import PolicySpec, named_policy
from aladdin.plugin.core.predictor import LengthPredictor, PredictorConfig, prediction_errors
from aladdin.plugin.core.request import Request
from aladdin.plugin.sim.autoscale import DRAINING, UP, AutoscaleConfig, Autoscaler, ScalingLog
from aladdin.plugin.sim.prefix_cache import PrefixCache, prompt_block_keys


def engine_async_scheduling(perf: PerfModel) -> bool:
    """Whether vLLM schedules asynchronously where the profile was measured: on a GPU by default,
    never on a CPU (vLLM's CPU platform turns it off)."""
    return not str(perf.meta.get("hardware", "")).upper().startswith("CPU")


@dataclass(frozen=True)
class SimConfig:
    """What is simulated, besides the workload and the worker model."""

    num_workers: int
    policy: str = "aladdin"  # a registry name (core.policies); a composed PolicySpec goes to ClusterSimulator
    ttft_slo: float = math.inf  # seconds; inf: none
    atgt_slo: float = math.inf  # seconds per token; inf: none
    oracle_lengths: bool = False  # predictions are the true output lengths
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    seed: int = 0  # of the randomized policies (po2)
    gpus_per_worker: int = 1  # recorded with the run
    # Split-phase serving: this many extra workers only prefill; each request's first token
    # comes from one of them, then its KV moves to a decode worker (``num_workers`` of them,
    # where placement applies). 0: every worker prefills and decodes (colocated).
    prefill_workers: int = 0
    kv_transfer_s_per_token: float = 0.0  # split-phase: KV hand-off time per context token
    error_feedback: bool = True  # per-worker prediction error inflates that worker's forecasts
    headroom: float = 0.0  # of the named policy (its KV and ATGT filters)
    queue: str = "fcfs"  # central queue order: fcfs or edf
    # vLLM's defaults: a request computes only the part of its prompt (or of its recompute)
    # whose full blocks are not cached; on a GPU each batch is scheduled while the one before it
    # runs (AsyncScheduler), so it sees arrivals and finishes one step late. None: as vLLM runs
    # on the profile's hardware (``engine_async_scheduling``: off on a CPU, which forces it off).
    prefix_caching: bool = True
    async_scheduling: bool | None = None
    # Autoscaling (plugin/sim/autoscale.py), colocated only: ``num_workers`` is then the most it may hold
    autoscale: AutoscaleConfig | None = None

    @property
    def split_phase(self) -> bool:
        return self.prefill_workers > 0

    def validate(self) -> None:
        if self.num_workers < 1:
            raise AladdinError(f"--workers must be at least 1, got {self.num_workers}")
        if self.gpus_per_worker < 1:
            raise AladdinError(f"--gpus-per-worker must be at least 1, got {self.gpus_per_worker}")
        if self.prefill_workers < 0:
            raise AladdinError(f"--prefill-workers must be >= 0, got {self.prefill_workers}")
        if not (math.isfinite(self.kv_transfer_s_per_token) and self.kv_transfer_s_per_token >= 0):
            raise AladdinError(f"KV transfer time per token must be >= 0 seconds, got {self.kv_transfer_s_per_token}")
        for name, value in (("--ttft-slo", self.ttft_slo), ("--atgt-slo", self.atgt_slo)):
            if not value > 0:
                raise AladdinError(f"{name} must be > 0 seconds, got {value}")
        if self.autoscale is not None:
            if self.split_phase:
                raise AladdinError("the simulated autoscaler scales colocated workers; drop --prefill-workers")
            self.autoscale.validate(self.num_workers)


class _Worker:
    """One engine's scheduler state, kept in O(1)-updatable aggregates.

    A decoding request streams one token in every iteration, so its generated count is
    implicit: ``iterations - base[request]``. The decode batch's context sum is then
    ``context_base + n_decode * iterations``, and ``phase[j]`` counts the decoding requests
    whose KV blocks are full at iterations j, j + block_size, ... (each needs a new block
    there), so KV growth over a run is O(block_size) to compute.
    """

    __slots__ = (
        "index", "id", "running", "prefilling", "waiting", "n_decode", "context_base", "phase",
        "finishes", "blocks_used", "iterations", "log_start", "log_count", "log_first",
        "log_step", "busy", "t0", "count", "first", "step", "chunks", "seq", "prefill_only", "pending_prefill",
        "arriving", "finishing", "cache", "perf", "block_size", "num_blocks", "prefill_pass", "frontend",
        "async_scheduling", "keys",
    )

    def __init__(self, index: int, worker_id: str, perf: PerfModel, async_scheduling: bool, prefill_only: bool = False,
                 prefix_caching: bool = False):
        self.index = index
        self.id = worker_id
        # its engine (workers of a heterogeneous pool differ): iteration times, KV, limits
        self.perf = perf
        self.block_size = block_size = perf.kv.block_size
        self.num_blocks = num_blocks = perf.kv.num_blocks
        self.prefill_pass = perf.prefill_pass_s
        self.frontend = perf.frontend_s  # a request reaches this engine this long after it arrives
        self.async_scheduling = async_scheduling
        self.keys: list | None = None  # prefix caching: each request's prompt block keys at its block size
        self.prefill_only = prefill_only  # split-phase prefill pool: hands requests off after their first token
        self.pending_prefill = 0  # prefill pool: prompt tokens dispatched and not yet computed
        self.running: dict[int, None] = {}  # admission order; the newest is preempted first
        self.prefilling: list[int] = []  # running requests still computing their prompt (or recomputing)
        self.waiting: deque[int] = deque()
        # Async scheduling: requests placed while a batch was being decided or ran, each with
        # the worker iterations completed when a plan first sees it; and the requests that
        # finished in the run that just ended, still running (holding their seats and blocks)
        # while the next batch is planned.
        self.arriving: deque[tuple[int, int]] = deque()
        self.finishing: list[int] = []
        self.cache = PrefixCache(num_blocks) if prefix_caching else None
        self.n_decode = 0
        self.context_base = 0
        self.phase = [0] * block_size
        self.finishes: list[tuple[int, int]] = []  # heap: (iterations when it finishes, request)
        self.blocks_used = 0
        self.iterations = 0  # completed
        # The iteration log, one entry per run: iteration j of a run ends at
        # start + (j + 1) * first + step * j * (j + 1) / 2.
        self.log_start: list[float] = []
        self.log_count: list[int] = []
        self.log_first: list[float] = []
        self.log_step: list[float] = []
        # The run in flight: ``count`` iterations from ``t0``; ``chunks`` lists the prefill
        # chunks (request, tokens) of a single mixed iteration, None for a pure decode run.
        self.busy = False
        self.t0 = 0.0
        self.count = 0
        self.first = 0.0
        self.step = 0.0
        self.chunks: list[tuple[int, int]] | None = None
        self.seq = 0  # the heap entry that ends the run in flight

    def elapsed(self, iterations: int) -> float:
        """Time from the run's start to the end of its first ``iterations`` iterations."""
        return iterations * self.first + self.step * iterations * (iterations - 1) / 2.0


@dataclass
class SimResult:
    """Everything a simulation produced, with token times materialized."""

    ids: list[str]
    arrival: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    requested_output_tokens: np.ndarray
    worker: np.ndarray  # index of the serving worker
    worker_ids: list[str]
    first_prediction: np.ndarray
    preemptions: np.ndarray
    token_offsets: np.ndarray  # request i's token times are token_times[offsets[i]:offsets[i+1]]
    token_times: np.ndarray
    iterations: int
    central_queue_peak: int
    central_queued: int  # requests that waited in the central queue at least once
    prediction_error_by_worker: dict[str, dict[str, Any]]
    wall_seconds: float
    slos: list[tuple[str | None, float | None, float | None]] | None = None  # per request: tier, ttft, atgt
    scaling: ScalingLog | None = None  # autoscaling: GPU-hours, worker counts over time
    worker_perfs: list[PerfModel] | None = None  # each worker's model, by index (so which model served each request)

    def times_of(self, i: int) -> np.ndarray:
        return self.token_times[self.token_offsets[i] : self.token_offsets[i + 1]]

    @property
    def first_token(self) -> np.ndarray:
        return self.token_times[self.token_offsets[:-1]]

    @property
    def last_token(self) -> np.ndarray:
        return self.token_times[self.token_offsets[1:] - 1]

    @property
    def ttft(self) -> np.ndarray:
        return self.first_token - self.arrival

    @property
    def atgt(self) -> np.ndarray:
        """(last - first token) / (output - 1); NaN for one-token outputs."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(
                self.output_tokens > 1,
                (self.last_token - self.first_token) / (self.output_tokens - 1),
                np.nan,
            )

    def targets(self, ttft_slo: float, atgt_slo: float) -> tuple[np.ndarray | float, np.ndarray | float]:
        """Each request's TTFT and ATGT targets: its own (--slo-tiers) where it has one, else the run's."""
        if not self.slos:
            return ttft_slo, atgt_slo
        ttft = np.array([ttft_slo if t is None else t for _, t, _ in self.slos], dtype=float)
        atgt = np.array([atgt_slo if a is None else a for _, _, a in self.slos], dtype=float)
        return ttft, atgt

    def has_slo(self, ttft_slo: float, atgt_slo: float) -> bool:
        """Whether any request has a finite SLO to attain (the run's or its own)."""
        ttft, atgt = self.targets(ttft_slo, atgt_slo)
        return bool(np.isfinite(ttft).any() or np.isfinite(atgt).any())

    def attainment(self, ttft_slo: float, atgt_slo: float) -> float:
        """Fraction meeting both SLOs, each request's own where it has them (a one-token output
        has no ATGT to miss)."""
        ttft, atgt_target = self.targets(ttft_slo, atgt_slo)
        atgt = np.nan_to_num(self.atgt, nan=0.0)
        return float(np.mean((self.ttft <= ttft) & (atgt <= atgt_target)))

    def records(self) -> Iterator[RequestRecord]:
        """The requests as RequestRecord objects (the slow path; ``write`` is the fast one)."""
        for i, request_id in enumerate(self.ids):
            times = self.times_of(i).tolist()
            yield make_record(
                *(self.slos[i] if self.slos else ()),
                id=request_id,
                scheduled=float(self.arrival[i]),
                requested_output_tokens=int(self.requested_output_tokens[i]),
                dispatched=float(self.arrival[i]),
                sent=float(self.arrival[i]),
                first_byte=times[0],
                chunk_times=times,
                chunk_tokens=[1] * len(times),
                done=times[-1],
                prompt_tokens=int(self.prompt_tokens[i]),
                output_tokens=int(self.output_tokens[i]),
                expected_prompt_tokens=int(self.prompt_tokens[i]),
                status=200,
                outcome=OK,
                worker=self.worker_ids[self.worker[i]],
            )

    def summary(self, ttft_slo: float, atgt_slo: float) -> dict[str, Any]:
        n = len(self.ids)
        ttft, atgt = self.ttft, self.atgt

        def pct(values: np.ndarray) -> dict[str, float | None]:
            values = values[np.isfinite(values)]
            if values.size == 0:
                return {"p50_s": None, "p90_s": None, "p99_s": None, "mean_s": None}
            p50, p90, p99 = np.percentile(values, [50, 90, 99])
            return {"p50_s": float(p50), "p90_s": float(p90), "p99_s": float(p99), "mean_s": float(values.mean())}

        end = float(self.last_token.max()) if n else 0.0
        return {
            "requests": n,
            "finished": n,
            "unfinished": 0,
            "ok": n,
            "error": 0,
            "timeout": 0,
            "simulated_seconds": end,
            "wall_seconds": self.wall_seconds,
            "simulated_per_wall_second": end / self.wall_seconds if self.wall_seconds > 0 else None,
            "iterations": self.iterations,
            "preemptions": int(self.preemptions.sum()),
            "preempted_requests": int((self.preemptions > 0).sum()),
            "central_queue_peak": self.central_queue_peak,
            "central_queued_requests": self.central_queued,
            "ttft": pct(ttft),
            "atgt": pct(atgt),
            "slo_attainment": self.attainment(ttft_slo, atgt_slo) if n and self.has_slo(ttft_slo, atgt_slo) else None,
            "prediction_error": prediction_errors(self.first_prediction, self.output_tokens).to_dict() if n else None,
            "prediction_error_by_worker": self.prediction_error_by_worker,
            **({"workers": self.by_worker(ttft_slo, atgt_slo)} if self.heterogeneous else {}),
        }

    @property
    def heterogeneous(self) -> bool:
        """Whether the workers ran different models."""
        return bool(self.worker_perfs) and any(p != self.worker_perfs[0] for p in self.worker_perfs)

    def by_worker(self, ttft_slo: float, atgt_slo: float) -> dict[str, dict[str, Any]]:
        """Per worker: its model (profile, hardware, GPUs), requests served and their attainment."""
        ttft, atgt_target = self.targets(ttft_slo, atgt_slo)
        met = (self.ttft <= ttft) & (np.nan_to_num(self.atgt, nan=0.0) <= atgt_target)
        out = {}
        for index, worker_id in enumerate(self.worker_ids):
            served = self.worker == index
            meta = self.worker_perfs[index].meta if self.worker_perfs else {}
            out[worker_id] = {
                "profile": meta.get("path"), "hardware": meta.get("hardware"), "gpus_per_worker": meta.get("gpus_per_worker"),
                "requests": int(served.sum()),
                "slo_attainment": float(met[served].mean()) if served.any() and self.has_slo(ttft_slo, atgt_slo) else None,
            }
        return out

    def write(self, output: str | Path, *, label: str | None = None, params: dict[str, Any] | None = None,
              ttft_slo: float = math.inf, atgt_slo: float = math.inf) -> Path:
        """Write ``requests.jsonl`` and ``run.json`` into ``output`` (created; must hold no run)."""
        output = Path(output)
        refuse_existing_run(output)
        output.mkdir(parents=True, exist_ok=True)
        self._write_records(output / "requests.jsonl")
        run = {
            "schema": RUN_SCHEMA_VERSION,
            "status": "finished",
            "label": label or output.name,
            "start_epoch": 0,
            "simulated": True,
            "params": params or {},
            "summary": self.summary(ttft_slo, atgt_slo),
        }
        partial = output / "run.json.partial"
        partial.write_text(json.dumps(_jsonable(run), indent=2) + "\n", encoding="utf-8")
        os.replace(partial, output / "run.json")
        return output

    def _write_records(self, path: Path) -> None:
        """Compact lines exactly as RecordWriter writes them, formatted in bulk.

        Times are rounded to the microsecond; repr() of a float is the shortest round-trip
        text, the same json.dumps writes.
        """
        times = np.round(self.token_times, 6).tolist()
        offsets = self.token_offsets.tolist()
        arrival = self.arrival.tolist()
        prompts = self.prompt_tokens.tolist()
        outputs = self.output_tokens.tolist()
        requested = self.requested_output_tokens.tolist()
        workers = [json.dumps(w) for w in self.worker_ids]
        worker = self.worker.tolist()
        slos = [  # SLORecord's keys, after schema; none for a request without SLOs (a plain RequestRecord)
            f',"slo_tier":{json.dumps(tier)},"ttft_slo":{json.dumps(ttft)},"atgt_slo":{json.dumps(atgt)}'
            if (tier, ttft, atgt) != (None, None, None) else ""
            for tier, ttft, atgt in self.slos
        ] if self.slos else None
        with open(path, "w", encoding="utf-8") as fh:
            lines = []
            for i, request_id in enumerate(self.ids):
                chunk = times[offsets[i] : offsets[i + 1]]
                sent = arrival[i]
                lines.append(
                    f'{{"id":{json.dumps(request_id)},"scheduled":{sent!r},'
                    f'"requested_output_tokens":{requested[i]},"dispatched":{sent!r},"sent":{sent!r},'
                    f'"first_byte":{chunk[0]!r},"chunk_times":[{",".join(map(repr, chunk))}],'
                    f'"chunk_tokens":[{("1," * len(chunk))[:-1]}],"done":{chunk[-1]!r},'
                    f'"prompt_tokens":{prompts[i]},"output_tokens":{outputs[i]},'
                    f'"expected_prompt_tokens":{prompts[i]},"status":200,"outcome":"ok","error":null,'
                    f'"worker":{workers[worker[i]]},"client":null,"schema":{SCHEMA_VERSION}{slos[i] if slos else ""}}}\n'
                )
                if len(lines) == 4096:
                    fh.write("".join(lines))
                    lines.clear()
            fh.write("".join(lines))


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars as Python numbers, infinities (no SLO) as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ClusterSimulator:
    """Replays a schedule on ``num_workers`` workers; ``run`` returns a SimResult.

    ``perf`` is every worker's model, or one per decode worker (a heterogeneous pool: each
    worker's iteration times, KV blocks, limits, front end and async scheduling are its own).

    The engines are simulated here; every placement, queueing, prediction and re-prediction
    decision is the scheduler core's (core.lifecycle.Scheduler), driven by the engines'
    events exactly as the router and the in-engine plugin drive it. ``policy`` (a spec)
    overrides ``config.policy`` (a registry name). A simulator runs once: the predictor learns.
    """

    def __init__(self, perf: PerfModel | Sequence[PerfModel], config: SimConfig, policy: PolicySpec | None = None):
        config.validate()
        perfs = [perf] * config.num_workers if isinstance(perf, PerfModel) else list(perf)
        if len(perfs) != config.num_workers:
            raise AladdinError(f"{len(perfs)} worker models for {config.num_workers} decode workers; give one per worker")
        for model in perfs:
            if model.max_batched_tokens < model.max_num_seqs:
                raise AladdinError(
                    f"max_batched_tokens {model.max_batched_tokens} is below max_num_seqs {model.max_num_seqs}; "
                    "vLLM refuses that too"
                )
        self.config = config
        self.policy = policy if policy is not None else named_policy(config.policy, config.headroom, config.seed)
        width = len(str(config.num_workers - 1))
        self.prefix_caching = config.prefix_caching
        self.decode_workers = [self._new_worker(i, f"w{i:0{width}d}", perfs[i]) for i in range(config.num_workers)]
        width = len(str(config.prefill_workers - 1))
        self.prefill_pool = [  # split-phase prefill workers run the first decode worker's model
            self._new_worker(config.num_workers + i, f"p{i:0{width}d}", perfs[0], prefill_only=True)
            for i in range(config.prefill_workers)
        ]
        self.workers = self.decode_workers + self.prefill_pool  # by index
        # a request reaches the cluster after the fastest front end, and an engine with a slower one later
        self._frontend = min(w.frontend for w in self.workers)
        self._by_id = {w.id: w for w in self.decode_workers}  # what placement chooses from
        pipeline = self.policy.build()
        # autoscaling: starting and draining workers take no placements, whatever the policy
        self.available = Available(config.num_workers) if config.autoscale else None
        if self.available is not None:
            pipeline = replace(pipeline, filters=[self.available, *pipeline.filters])
        self._autoscaler: Autoscaler | None = None
        self.scheduler = Scheduler(
            [(w.id, w.perf) for w in self.decode_workers],
            pipeline,
            LengthPredictor(config.predictor),
            SchedulerConfig(queue=config.queue, frontend_paid=True, oracle_lengths=config.oracle_lengths,
                            error_feedback=config.error_feedback),
        )
        self.track_overruns = self.scheduler.track_overruns
        self._states = [self.scheduler.worker(w.id) for w in self.decode_workers]  # by decode worker index
        # (time, request, -1): split-phase, its KV reaches the decode pool; (time, request, worker):
        # it reaches that worker's engine, whose front end is slower than the fastest
        self._handoffs: list[tuple[float, int, int]] = []
        self._heap: list[tuple[float, int, int]] = []
        self._seq = 0
        self._handling: _Worker | None = None
        self._idle_placed: list[_Worker] | None = None  # while arrivals of one instant are placed: idle workers to plan
        self._spans: list[tuple[int, int, int, int]] = []  # (request, worker, first iteration, tokens)

    def _new_worker(self, index: int, worker_id: str, perf: PerfModel, prefill_only: bool = False) -> _Worker:
        """A worker running ``perf``, with async scheduling as configured or as on its hardware."""
        config = self.config
        async_scheduling = engine_async_scheduling(perf) if config.async_scheduling is None else config.async_scheduling
        return _Worker(index, worker_id, perf, async_scheduling, prefill_only, self.prefix_caching)

    # ------------------------------------------------------------------ setup and main loop

    def run(self, schedule: Sequence[ScheduledRequest]) -> SimResult:
        started = time.perf_counter()
        if hasattr(self, "ids"):
            raise RuntimeError("a ClusterSimulator runs once; make a new one")
        if not schedule:
            raise AladdinError("the schedule has no requests")
        schedule = sorted(schedule, key=lambda r: r.offset)
        n = len(schedule)
        self.ids = [r.id for r in schedule]
        self._index = {request_id: i for i, request_id in enumerate(self.ids)}
        self.arrival = [float(r.offset) for r in schedule]
        arrivals = [t + self._frontend for t in self.arrival]  # when each request reaches the cluster's engines
        self.prompt = [int(r.spec.prompt_tokens) for r in schedule]
        self.out = [int(r.spec.output_tokens) for r in schedule]
        self._check_lengths()
        config = self.config
        self.slos = [(r.slo_tier, r.ttft_slo, r.atgt_slo) for r in schedule]  # per-request (--slo-tiers)
        self.requests = [
            Request(self.ids[i], self.prompt[i], self.arrival[i],
                    ttft_slo=config.ttft_slo if r.ttft_slo is None else r.ttft_slo,
                    atgt_slo=config.atgt_slo if r.atgt_slo is None else r.atgt_slo,
                    predicted_output_tokens=r.predicted_output_tokens or 0)  # 0: the core predicts
            for i, r in enumerate(schedule)
        ]
        self.gen = [0] * n  # generated tokens of a request that is not decoding
        self.base = [0] * n  # decoding: generated = worker iterations - base
        self.decoding = [False] * n
        self.computed = [0] * n  # prefilling: tokens computed so far
        self.target = [0] * n  # prefilling: tokens to compute (prompt + generated at admission)
        if self.prefix_caching:  # the keys of each prompt's full blocks (none without token ids), per block size
            keys = {bs: [prompt_block_keys(r.spec.prompt_token_ids, self.prompt[i], bs) for i, r in enumerate(schedule)]
                    for bs in {w.block_size for w in self.workers}}
            for worker in self.workers:
                worker.keys = keys[worker.block_size]
        self.span_start = [0] * n  # decoding: the worker iteration of the current span's first token
        self.assigned = [-1] * n
        self.preemptions = [0] * n
        self.kv_ready = [0] * n  # split-phase: prompt tokens whose KV came with the request (until admitted)
        self.first_token = [math.nan] * n
        if config.autoscale is not None:
            self._autoscaler = Autoscaler(config.autoscale, config.num_workers, config.gpus_per_worker, self.arrival)
            self.available.up[:] = [self._autoscaler.up(w) for w in range(config.num_workers)]

        next_arrival = 0
        heap = self._heap
        workers = self.workers
        scheduler = self.scheduler
        handoffs = self._handoffs
        while True:
            arrival_time = arrivals[next_arrival] if next_arrival < n else math.inf
            handoff_time = handoffs[0][0] if handoffs else math.inf
            if self._autoscaler is not None and (heap or handoffs or next_arrival < n):
                due = self._autoscaler.next_time
                if due <= min(arrival_time, handoff_time, heap[0][0] if heap else math.inf):
                    self._scale(due)
                    continue
            if heap and heap[0][0] <= min(arrival_time, handoff_time):
                event_time, seq, index = heapq.heappop(heap)
                worker = workers[index]
                if seq == worker.seq and worker.busy:
                    self._end_run(worker, event_time)
            elif handoffs and handoff_time <= arrival_time:
                _, i, index = heapq.heappop(handoffs)
                if index < 0:  # the request's KV has reached the decode pool
                    self._apply(scheduler.offer(self.requests[i], handoff_time), handoff_time)
                else:  # it has passed its engine's front end, slower than the fastest
                    self._enqueue(workers[index], i, handoff_time)
            elif next_arrival < n:
                # Every request arriving at this instant reaches the engines before an idle one
                # plans its first iteration (vLLM's loop takes all its inputs before a step).
                self._idle_placed = []
                while next_arrival < n and arrivals[next_arrival] == arrival_time:
                    i = next_arrival
                    next_arrival += 1
                    if self.prefill_pool:
                        scheduler.predict(self.requests[i], self.out[i])
                        self._dispatch_prefill(i, arrival_time)
                    else:
                        self._apply(scheduler.arrive(self.requests[i], arrival_time, self.out[i]), arrival_time)
                idle, self._idle_placed = self._idle_placed, None
                for worker in idle:
                    if not worker.busy:
                        self._plan(worker, arrival_time)
            else:
                break
        if len(scheduler.queue):
            raise AladdinError(f"{len(scheduler.queue)} requests were never placed")  # a policy bug, not input
        result = self._result(time.perf_counter() - started)
        if self._autoscaler is not None:
            result.scaling = self._autoscaler.close(float(result.last_token.max()))
        return result

    def _check_lengths(self) -> None:
        prompt, out = np.array(self.prompt), np.array(self.out)
        if (prompt < 1).any() or (out < 1).any():
            raise AladdinError("every request needs at least one prompt and one output token")
        for kv in dict.fromkeys(w.perf.kv for w in self.workers):  # every worker must fit every request
            too_long = np.flatnonzero(kv.blocks(prompt + out - 1) > kv.num_blocks)
            if too_long.size:
                i = int(too_long[0])
                raise AladdinError(
                    f"request {self.ids[i]} needs {prompt[i] + out[i] - 1} KV tokens, more than a worker's "
                    f"{kv.capacity_tokens}; {too_long.size} such request(s) (lower --max-total-tokens)"
                )

    # ------------------------------------------------------------------ placement

    def _apply(self, decisions: list[Decision], now: float) -> None:
        """Carry out the scheduler's placements on the simulated engines."""
        for decision in decisions:
            if not isinstance(decision, Placement):
                raise AladdinError("the simulator places every request; shedding is for a front end")
            self._place(self._index[decision.request.id], self._by_id[decision.worker], now)

    def _dispatch_prefill(self, i: int, now: float) -> None:
        """Split-phase: send a new request to the prefill worker with the fewest prompt tokens
        still to compute (placement policies choose decode workers only)."""
        worker = min(self.prefill_pool, key=lambda w: (w.pending_prefill, w.index))
        worker.pending_prefill += self.prompt[i]
        self._place(i, worker, now)

    def _plan_idle(self, worker: _Worker, now: float) -> None:
        """Plan an idle worker that was just given a request, or, while the other arrivals of
        the same instant are still being placed, once they all are."""
        if self._idle_placed is None:
            self._plan(worker, now)
            return
        if worker not in self._idle_placed:
            self._idle_placed.append(worker)
        if not worker.prefill_only:  # what its plan will report, for the placements still to come
            self._states[worker.index].report_kv(self._first_admissions_blocks(worker) * worker.block_size)

    def _first_admissions_blocks(self, worker: _Worker) -> int:
        """KV blocks an idle worker allocates when it plans: those of the first chunks of the
        queued requests its first iteration admits (the admission loop of ``_plan_iteration``,
        on an empty worker, not counting prefix-cache hits)."""
        bs = worker.block_size
        free, budget, admitted, blocks = worker.num_blocks, worker.perf.max_batched_tokens, 0, 0
        for i in worker.waiting:
            if budget <= 0 or admitted >= worker.perf.max_num_seqs:
                break
            tokens = self.prompt[i] + self.gen[i]
            if -(-tokens // bs) > free:
                break
            take = min(tokens - self.kv_ready[i], budget)
            chunk = -(-(self.kv_ready[i] + take) // bs)
            free -= chunk
            blocks += chunk
            admitted += 1
            budget -= take
        return blocks

    def _hand_off(self, worker: _Worker, i: int, iteration: int, now: float) -> None:
        """Split-phase: request ``i``'s prefill ended with its first token; free its KV here and
        send it to the decode pool once its KV has moved (unless that token was its last)."""
        worker.prefilling.remove(i)
        del worker.running[i]
        self._free_kv(worker, i, self.computed[i])
        self.first_token[i] = now
        self._spans.append((i, worker.index, iteration, 1))
        self.gen[i] = 1
        request = self.requests[i]
        request.first_token_time = now
        request.generated_tokens = 1
        request.computed_tokens = self.prompt[i]
        if self.out[i] == 1:
            self.scheduler.learn(request, 1, worker.id)
        else:
            self.kv_ready[i] = self.prompt[i]
            heapq.heappush(self._handoffs, (now + self.config.kv_transfer_s_per_token * self.prompt[i], i, -1))

    def _place(self, i: int, worker: _Worker, now: float) -> None:
        reached = self.arrival[i] + worker.frontend
        if reached > now:  # its engine's front end is slower than the fastest, which it has passed
            self.assigned[i] = worker.index
            heapq.heappush(self._handoffs, (reached, i, worker.index))
            return
        self._enqueue(worker, i, now)

    def _enqueue(self, worker: _Worker, i: int, now: float) -> None:
        """Queue request ``i`` on ``worker`` for its next plan; with async scheduling, a worker
        that is deciding or running a batch sees it one batch later (vLLM decides batch k+1
        when batch k starts)."""
        self.assigned[i] = worker.index
        handling = worker is self._handling
        if worker.async_scheduling and (worker.busy or handling):
            # the plan after the batch being decided sees it; mid-run, the plan after the batch
            # that starts at the first iteration boundary after ``now``
            seen = worker.iterations + 1 + (0 if handling else self._boundary(worker, now))
            worker.arriving.append((seen, i))
            if not handling and worker.chunks is None and not worker.waiting and len(worker.running) < worker.perf.max_num_seqs:
                self._shorten_run(worker, seen - worker.iterations)
            return
        worker.waiting.append(i)
        if handling:
            return  # its next run is planned right after
        if not worker.busy:
            self._plan_idle(worker, now)
        elif worker.chunks is None and len(worker.waiting) == 1 and len(worker.running) < worker.perf.max_num_seqs:
            # otherwise the run already ignored a blocked queue head
            self._shorten_run(worker, max(self._boundary(worker, now), 1))

    def _boundary(self, worker: _Worker, now: float) -> int:
        """The iterations of the run in flight up to the first boundary at or after ``now``."""
        wanted = now - worker.t0
        if wanted <= 0:
            return 0
        if worker.step == 0:
            count = math.ceil(wanted / worker.first)
        else:
            half = worker.step / 2.0
            linear = worker.first - half
            count = math.ceil((-linear + math.sqrt(linear * linear + 4.0 * half * wanted)) / (2.0 * half))
        count = max(count, 1)
        while count > 1 and worker.elapsed(count - 1) >= wanted:
            count -= 1
        while count < worker.count and worker.elapsed(count) < wanted:
            count += 1
        return count

    def _shorten_run(self, worker: _Worker, count: int) -> None:
        """End the pure decode run in flight after ``count`` iterations, if it was longer."""
        if count < worker.count:
            worker.count = count
            self._schedule_end(worker)

    # ------------------------------------------------------------------ KV blocks

    def _admission_need(self, worker: _Worker, i: int, tokens: int, free: int) -> tuple[int, list]:
        """Free blocks request ``i`` needs to be admitted for ``tokens`` (its whole prompt must
        fit, vLLM's ``scheduler_reserve_full_isl``), and the cached blocks it starts from."""
        blocks = -(-tokens // worker.block_size)
        if worker.cache is None or self.kv_ready[i]:
            return blocks, []
        hits = worker.cache.hits(i, worker.keys[i], tokens, worker.block_size, free)
        return blocks - len(hits) + sum(1 for block in hits if not block.ref), hits

    def _allocate_chunk(self, worker: _Worker, i: int, done: int, take: int, held: int) -> None:
        """Request ``i`` computes tokens ``done`` to ``done + take`` and holds ``held`` blocks:
        allocate the blocks the chunk reaches (and cache the prompt blocks it fills)."""
        worker.blocks_used += -(-(done + take) // worker.block_size) - held
        if worker.cache is not None:
            worker.cache.computed(i, worker.keys[i], done, done + take, worker.block_size,
                                  worker.num_blocks - worker.blocks_used)

    def _free_kv(self, worker: _Worker, i: int, kv_tokens: int, cached_tokens: int | None = None,
                 preempted: bool = False) -> None:
        """Request ``i`` leaves the worker holding ``kv_tokens`` tokens of KV: free its blocks
        (with prefix caching, the full blocks of its first ``cached_tokens``, default all, stay
        cached until evicted; a preempted request may find its own again)."""
        if worker.cache is None:
            worker.blocks_used -= -(-kv_tokens // worker.block_size)
        else:
            worker.blocks_used -= worker.cache.release(
                i, kv_tokens, kv_tokens if cached_tokens is None else cached_tokens, worker.block_size,
                worker.num_blocks - worker.blocks_used, findable=preempted)

    # ------------------------------------------------------------------ planning runs

    def _schedule_end(self, worker: _Worker) -> None:
        self._seq += 1
        worker.seq = self._seq
        heapq.heappush(self._heap, (worker.t0 + worker.elapsed(worker.count), self._seq, worker.index))

    def _start_run(self, worker: _Worker, now: float, count: int, first: float, step: float,
                   chunks: list[tuple[int, int]] | None) -> None:
        worker.busy = True
        worker.t0, worker.count, worker.first, worker.step, worker.chunks = now, count, first, step, chunks
        self._schedule_end(worker)

    def _plan(self, worker: _Worker, now: float) -> None:
        """Plan the worker's next run; the scheduler then sees its KV in use (block ledger)."""
        if worker.async_scheduling:
            self._plan_async(worker, now)
        else:
            self._plan_run(worker, now)
        if not worker.prefill_only:
            self._states[worker.index].report_kv(worker.blocks_used * worker.block_size)

    def _plan_async(self, worker: _Worker, now: float) -> None:
        """AsyncScheduler: the next batch was decided when the batch that just ended started,
        so it sees only requests queued by then, and the requests that just finished still
        hold their seats and blocks (freed right after). A worker that could run nothing decides
        again once the batch in flight is done, seeing everything (vLLM's empty step)."""
        arriving = worker.arriving
        while arriving and arriving[0][0] <= worker.iterations:
            worker.waiting.append(arriving.popleft()[1])
        self._plan_run(worker, now)
        if worker.finishing:
            if worker.cache is not None and worker.busy and worker.chunks is None:
                # the decode run just planned takes its first blocks before the finished requests
                # free theirs (a run counts its blocks when it ends)
                worker.cache.settle(worker.num_blocks - worker.blocks_used - worker.phase[worker.iterations % worker.block_size])
            finished, worker.finishing = worker.finishing, []
            self._handling = worker  # what the scheduler places meanwhile waits for a later plan
            for i in finished:
                self._finish(worker, i, now)
            self._handling = None
            if worker.busy and worker.chunks is None and self._can_admit(worker, worker.num_blocks - worker.blocks_used):
                self._shorten_run(worker, 1)  # the seats and blocks freed admit the queue head next
        if not worker.busy and (worker.waiting or arriving):
            worker.waiting.extend(i for _, i in arriving)
            arriving.clear()
            self._plan_run(worker, now)
        if arriving and worker.chunks is None and not worker.waiting and len(worker.running) < worker.perf.max_num_seqs:
            self._shorten_run(worker, arriving[0][0] - worker.iterations)

    def _plan_run(self, worker: _Worker, now: float) -> None:
        """Choose the worker's next run: a stretch of pure decode iterations, or one mixed iteration."""
        if not worker.running and not worker.waiting:
            worker.busy = False
            return
        free = worker.num_blocks - worker.blocks_used
        if not worker.prefilling and worker.n_decode and not self._can_admit(worker, free):
            count = self._decode_run_length(worker, free)
            if count >= 1:
                decode, n = worker.perf.decode, worker.n_decode
                first = decode.a * n + decode.b * (worker.context_base + n * worker.iterations) + decode.c
                self._start_run(worker, now, count, first, decode.b * n, None)
                return
        self._plan_iteration(worker, now)

    def _can_admit(self, worker: _Worker, free: int) -> bool:
        """Whether the queue head can be admitted now. While only decodes run, what it needs
        never shrinks (evictions only lose hits), so a decode run may ignore it until it ends."""
        if not worker.waiting or len(worker.running) >= worker.perf.max_num_seqs:
            return False
        head = worker.waiting[0]
        return self._admission_need(worker, head, self.prompt[head] + self.gen[head], free)[0] <= free

    def _decode_run_length(self, worker: _Worker, free: int) -> int:
        """Decode iterations until a request finishes, reaches its prediction, or KV runs out."""
        iterations = worker.iterations
        base, decoding = self.base, self.decoding
        finishes = worker.finishes
        out = self.out
        while not (decoding[finishes[0][1]] and base[finishes[0][1]] + out[finishes[0][1]] == finishes[0][0]):
            heapq.heappop(finishes)  # a preempted request's old entry
        count = finishes[0][0] - iterations
        if self.track_overruns and not worker.prefill_only:
            overrun = self._states[worker.index].next_overrun()  # the scheduler re-predicts it then
            if overrun is not None:
                count = min(count, overrun - iterations)
        n, bs = worker.n_decode, worker.block_size
        if n * -(-count // bs) <= free:
            return count
        # Every block_size iterations each decoding request takes exactly one block.
        cycles = free // n
        run, left = cycles * bs, free - cycles * n
        phase = worker.phase
        while run < count and phase[(iterations + run) % bs] <= left:
            left -= phase[(iterations + run) % bs]
            run += 1
        return min(run, count)

    def _plan_iteration(self, worker: _Worker, now: float) -> None:
        """One vLLM-V1 scheduler step: decodes, then the running prefill's chunk (each
        preempting the newest request while its blocks do not fit), then new chunks."""
        perf = worker.perf
        bs = worker.block_size
        slot = worker.iterations % bs
        preempted = False
        while worker.phase[slot] > worker.num_blocks - worker.blocks_used:
            self._preempt_newest(worker)
            preempted = True
        worker.blocks_used += worker.phase[slot]
        n_decode = worker.n_decode
        budget = perf.max_batched_tokens - n_decode
        prefill = perf.prefill
        chunks: list[tuple[int, int]] = []
        work = 0.0
        has_prefill = False
        for r in list(worker.prefilling):
            if budget <= 0:
                break
            done = self.computed[r]
            take = min(self.target[r] - done, budget)
            held = -(-done // bs)
            while -(-(done + take) // bs) - held > worker.num_blocks - worker.blocks_used and r in worker.running:
                self._preempt_newest(worker)
                preempted = True
            if r not in worker.running:
                break  # it preempted itself: vLLM schedules nothing after it
            self._allocate_chunk(worker, r, done, take, held)
            chunks.append((r, take))
            work += prefill.a * take + prefill.q * take * (2 * done + take)
            has_prefill = True
            budget -= take
        if not preempted or (n_decode == 0 and not chunks):
            waiting = worker.waiting
            stale = []  # async scheduling: preempted after its last token, it only waits to finish
            while waiting and budget > 0 and len(worker.running) < perf.max_num_seqs:
                head = waiting[0]
                if head in worker.finishing:
                    stale.append(waiting.popleft())
                    continue
                tokens = self.prompt[head] + self.gen[head]
                need, hits = self._admission_need(worker, head, tokens, worker.num_blocks - worker.blocks_used)
                if need > worker.num_blocks - worker.blocks_used:
                    break
                waiting.popleft()
                done = self._admit(worker, head, tokens, hits)
                take = min(tokens - done, budget)
                self._allocate_chunk(worker, head, done, take, len(hits))
                chunks.append((head, take))
                work += perf.admit_s
                if self.kv_ready[head]:  # its KV came from a prefill worker: only its last token is new, a decode step
                    work += perf.decode.a + perf.decode.b * tokens
                    self.kv_ready[head] = 0
                else:
                    work += prefill.a * take + prefill.q * take * (2 * done + take)
                    has_prefill = True
                budget -= take
            waiting.extendleft(reversed(stale))
        if n_decode == 0 and not chunks:
            worker.busy = False  # nothing can run now (async scheduling: seats and blocks not yet freed)
            return
        self._start_run(worker, now, 1, self._iteration_time(worker, n_decode, work, has_prefill), 0.0, chunks)

    def _iteration_time(self, worker: _Worker, n_decode: int, prefill_work: float, has_prefill: bool) -> float:
        """PerfModel.iteration_time, inlined: this runs once per mixed iteration.

        ``prefill_work`` is the sum of PrefillModel.chunk_work over the chunks; the fixed
        cost is paid once per pass: c_d with decodes in it, else the prefill-only pass cost.
        """
        decode = worker.perf.decode
        if not n_decode:
            return prefill_work + (worker.prefill_pass if has_prefill else decode.c)
        context = worker.context_base + n_decode * worker.iterations
        return decode.a * n_decode + decode.b * context + prefill_work + decode.c

    def _admit(self, worker: _Worker, i: int, tokens: int, hits: list) -> int:
        """Admit request ``i`` to compute ``tokens``, starting from the cached blocks ``hits``;
        returns how many tokens it already holds (cached, or its KV came from a split-phase
        prefill worker; a later preemption recomputes what is no longer cached)."""
        worker.running[i] = None
        worker.prefilling.append(i)
        done = self.kv_ready[i]
        if hits:
            worker.blocks_used += worker.cache.touch(i, hits, worker.keys[i])
            done = len(hits) * worker.block_size
        self.computed[i] = done
        self.target[i] = tokens
        return done

    def _preempt_newest(self, worker: _Worker) -> None:
        """Recompute preemption: free the newest running request's KV and queue it first."""
        i = next(reversed(worker.running))
        del worker.running[i]
        if self.decoding[i]:
            generated = self._stop_decoding(worker, i)
            self.gen[i] = generated
            kv_tokens = self.prompt[i] + generated - 1
            # async scheduling: the batch in flight computes its last token, whose block vLLM
            # caches only when that batch's output comes back to a running request
            self._free_kv(worker, i, kv_tokens, kv_tokens - worker.async_scheduling, preempted=True)
        elif i in worker.finishing:  # async scheduling: vLLM preempts it too; it finishes as its last batch returns
            kv_tokens = self.prompt[i] + self.out[i] - 1
            self._free_kv(worker, i, kv_tokens, kv_tokens - 1)
            self.preemptions[i] += 1
            worker.waiting.appendleft(i)
            return
        else:
            worker.prefilling.remove(i)
            self._free_kv(worker, i, self.computed[i], preempted=True)
        self.preemptions[i] += 1
        worker.waiting.appendleft(i)
        if not worker.prefill_only:
            self.scheduler.preempted(self.ids[i], self.gen[i])

    def _start_decoding(self, worker: _Worker, i: int, iteration: int, now: float) -> None:
        """Request ``i``'s prefill ended in ``iteration`` at ``now``, streaming its next token."""
        worker.prefilling.remove(i)
        if not self.gen[i]:
            self.first_token[i] = now
        base = iteration - self.gen[i]
        self.base[i] = base
        self.decoding[i] = True
        self.span_start[i] = iteration
        worker.n_decode += 1
        worker.context_base += self.prompt[i] - base
        worker.phase[(base + 1 - self.prompt[i]) % worker.block_size] += 1
        heapq.heappush(worker.finishes, (base + self.out[i], i))
        self._apply(self.scheduler.started(self.ids[i], self.gen[i] + 1, now), now)

    def _stop_decoding(self, worker: _Worker, i: int) -> int:
        """Take request ``i`` out of the decode aggregates and close its span; returns its tokens."""
        base = self.base[i]
        generated = worker.iterations - base
        self.decoding[i] = False
        worker.n_decode -= 1
        worker.context_base -= self.prompt[i] - base
        worker.phase[(base + 1 - self.prompt[i]) % worker.block_size] -= 1
        start = self.span_start[i]
        self._spans.append((i, worker.index, start, worker.iterations - start))
        return generated

    # ------------------------------------------------------------------ ending runs

    def _end_run(self, worker: _Worker, now: float) -> None:
        """Apply the run that just ended, retire finished requests, plan the next run.

        The scheduler hears of it as the engine would report it: decode steps, prefill
        progress, first tokens, finishes; what it places meanwhile on this worker waits for
        the run planned at the end.
        """
        worker.busy = False
        count = worker.count
        worker.log_start.append(worker.t0)
        worker.log_count.append(count)
        worker.log_first.append(worker.first)
        worker.log_step.append(worker.step)
        start = worker.iterations
        worker.iterations = start + count
        self._handling = worker
        if not worker.prefill_only:
            self._apply(self.scheduler.advance(worker.id, count, now), now)
        if worker.chunks is None:
            worker.blocks_used += self._blocks_taken(worker, start, count)
        else:
            for i, take in worker.chunks:
                self.computed[i] += take
                if worker.prefill_only:
                    worker.pending_prefill -= take
                    if self.computed[i] == self.target[i]:
                        self._hand_off(worker, i, start, now)
                elif self.computed[i] == self.target[i]:
                    self._start_decoding(worker, i, start, now)
                else:
                    self.scheduler.prefill_progress(self.ids[i], self.computed[i])
        self._retire(worker, now)
        self._handling = None
        self._plan(worker, now)

    def _blocks_taken(self, worker: _Worker, start: int, count: int) -> int:
        """KV blocks the decoding requests took in ``count`` pure decode iterations from ``start``."""
        bs = worker.block_size
        cycles, rest = divmod(count, bs)
        phase = worker.phase
        offset = start + cycles * bs
        return cycles * worker.n_decode + sum(phase[(offset + j) % bs] for j in range(rest))

    def _retire(self, worker: _Worker, now: float) -> None:
        """Take finished requests out of the batch; free them now, or (async scheduling) once
        the next batch is planned."""
        finishes, iterations = worker.finishes, worker.iterations
        base, out, decoding = self.base, self.out, self.decoding
        while finishes and finishes[0][0] <= iterations:
            key, i = heapq.heappop(finishes)
            if not (decoding[i] and base[i] + out[i] == key):
                continue  # a preempted request's old entry
            self.gen[i] = self._stop_decoding(worker, i)
            if worker.async_scheduling:
                worker.finishing.append(i)
            else:
                self._finish(worker, i, now)

    def _finish(self, worker: _Worker, i: int, now: float) -> None:
        """Free a finished request's seat and blocks and tell the scheduler."""
        if i in worker.running:
            del worker.running[i]
            self._free_kv(worker, i, self.prompt[i] + self.out[i] - 1)
        else:  # preempted after its last token (async scheduling): its blocks are free already
            worker.waiting.remove(i)
        self._apply(self.scheduler.finish(self.ids[i], self.out[i], now), now)
        if self._autoscaler is not None and not self._states[worker.index].requests:
            self._autoscaler.empty(now, worker.index)  # released if it was draining

    # ------------------------------------------------------------------ autoscaling

    def _scale(self, now: float) -> None:
        """Carry out the autoscaler's changes due at ``now``: placement follows the up workers, a
        draining worker already empty is released, a worker coming up takes from the queue."""
        scaler = self._autoscaler
        work = {w: self._outstanding_work(w) for w, state in enumerate(scaler.state) if state in (UP, DRAINING)}
        demand = self.scheduler.demand(now) if scaler.config.source == "core" and now >= scaler.next_beat else 0.0
        changes = scaler.advance(now, work, demand)
        for change in changes:
            self.available.up[change.worker] = change.state == UP
            if change.state == DRAINING and not self._states[change.worker].requests:
                scaler.empty(now, change.worker)
        if any(c.state == UP for c in changes):
            self._apply(self.scheduler.tick(now), now)

    def _outstanding_work(self, worker: int) -> float:
        """The core's view of a worker's outstanding work: its residents' predicted tokens still to generate."""
        state = self._states[worker]
        return float(sum(max(r.predicted_output_tokens - state.generated(r), 0) for r in state.requests.values()))

    # ------------------------------------------------------------------ result

    def _result(self, wall_seconds: float) -> SimResult:
        n = len(self.ids)
        out = np.array(self.out, dtype=np.int64)
        # Every worker's iteration end times, one flat array.
        worker_offsets = [0]
        parts = []
        for worker in self.workers:
            counts = np.array(worker.log_count, dtype=np.int64)
            total = int(counts.sum())
            within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
            parts.append(
                np.repeat(worker.log_start, counts)
                + (within + 1) * np.repeat(worker.log_first, counts)
                + np.repeat(worker.log_step, counts) * within * (within + 1) / 2.0
            )
            worker_offsets.append(worker_offsets[-1] + total)
        iteration_times = np.concatenate(parts)
        spans = np.array(self._spans, dtype=np.int64).reshape(-1, 4)
        spans = spans[np.argsort(spans[:, 0], kind="stable")]
        tokens = spans[:, 3]
        span_base = np.asarray(worker_offsets)[spans[:, 1]] + spans[:, 2]
        within = np.arange(int(tokens.sum())) - np.repeat(np.cumsum(tokens) - tokens, tokens)
        token_times = iteration_times[np.repeat(span_base, tokens) + within]
        per_request = np.bincount(spans[:, 0], weights=tokens, minlength=n).astype(np.int64)
        if not np.array_equal(per_request, out):
            raise AssertionError("simulator bookkeeping lost tokens")  # an internal invariant
        return SimResult(
            ids=self.ids,
            arrival=np.array(self.arrival, dtype=float),
            prompt_tokens=np.array(self.prompt, dtype=np.int64),
            output_tokens=out,
            requested_output_tokens=out.copy(),
            worker=np.array(self.assigned, dtype=np.int64),
            worker_ids=[w.id for w in self.workers],
            first_prediction=np.array([r.first_prediction for r in self.requests], dtype=np.int64),
            preemptions=np.array(self.preemptions, dtype=np.int64),
            token_offsets=np.concatenate(([0], np.cumsum(per_request))),
            token_times=token_times,
            iterations=int(worker_offsets[-1]),
            central_queue_peak=self.scheduler.queue.peak,
            central_queued=self.scheduler.queued_requests,
            prediction_error_by_worker=self.scheduler.error_summary(),
            wall_seconds=wall_seconds,
            slos=self.slos if any(x != (None, None, None) for x in self.slos) else None,
            worker_perfs=[w.perf for w in self.workers],
        )


def simulate(schedule: Sequence[ScheduledRequest], perf: PerfModel, config: SimConfig,
             policy: PolicySpec | None = None) -> SimResult:
    """Run one simulation (a new simulator each time: policies and predictors keep state)."""
    return ClusterSimulator(perf, config, policy).run(schedule)
