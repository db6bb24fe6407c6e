"""Measure a live vLLM and fit the performance models; validate a profile on held-out requests.

Experiments reuse the load generator's client and dispatcher (gevent, in this process), so a
profile is measured with exactly the timing the replayer is measured with:
- prefill: lone requests of swept prompt lengths with one output token; T_pre = TTFT from send;
- decode: B concurrent requests of prompt length L streaming K tokens; each gap between two
  tokens of a request, taken after every request of the batch has its first token, is one
  decode iteration of the requests still running, with their context at that moment;
- KV: ``/metrics`` scraped while a batch decodes; usage x capacity vs the block-rounded sum of
  prompt + generated tokens of the requests in the engine;
- admission: lone prompts joining a steady decode batch (AdmissionPlan); what they add to its
  steps beyond their prefill work.
Capacity is read from the engine (``vllm:cache_config_info``), never guessed.
"""

from __future__ import annotations

import json
import re
import urllib.request
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import gevent
import numpy as np
from geventhttpclient import HTTPClient

from aladdin.loadgen.client import Endpoint, RunClock, StreamingClient
from aladdin.loadgen.datasets import RequestSpec
from aladdin.loadgen.dispatcher import Dispatcher
from aladdin.loadgen.records import OK, RequestRecord
from aladdin.loadgen.schedule import ScheduledRequest
from aladdin.plugin.core.perfmodel import KVModel, PerfModel
from aladdin.plugin.profile.fit import error_summary, fit_decode, fit_prefill

_INFO_LINE = re.compile(r"^vllm:cache_config_info\{(?P<labels>[^}]*)\}", re.M)
# No vLLM step is this fast (its per-step CPU work alone takes longer): a segment whose tokens
# came faster was a burst of queued tokens delivered at once, not engine time.
MIN_ITERATION_S = 2e-4
_USAGE_LINE = re.compile(r"^vllm:kv_cache_usage_perc\{[^}]*\}\s+(?P<value>\S+)", re.M)


@dataclass(frozen=True)
class EngineInfo:
    """What the engine itself says about its KV cache and version."""

    num_gpu_blocks: int
    block_size: int
    vllm_version: str

    @property
    def usable_blocks(self) -> int:
        """vLLM keeps block 0 as a null block; usage is reported against the rest."""
        return self.num_gpu_blocks - 1

    def kv_model(self) -> KVModel:
        return KVModel(block_size=self.block_size, capacity_tokens=self.usable_blocks * self.block_size)


def parse_cache_info(metrics_text: str) -> tuple[int, int]:
    match = _INFO_LINE.search(metrics_text)
    if not match:
        raise ValueError("the server's /metrics has no vllm:cache_config_info (is it vLLM?)")
    labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group("labels")))
    return int(labels["num_gpu_blocks"]), int(labels["block_size"])


def parse_kv_usage(metrics_text: str) -> float:
    match = _USAGE_LINE.search(metrics_text)
    if not match:
        raise ValueError("the server's /metrics has no vllm:kv_cache_usage_perc")
    return float(match.group("value"))


def read_engine_info(base_url: str, timeout_s: float = 10.0) -> EngineInfo:
    base = base_url.rstrip("/")
    with urllib.request.urlopen(base + "/metrics", timeout=timeout_s) as resp:
        blocks, block_size = parse_cache_info(resp.read().decode())
    try:
        with urllib.request.urlopen(base + "/version", timeout=timeout_s) as resp:
            version = json.loads(resp.read()).get("version", "unknown")
    except (OSError, ValueError):
        version = "unknown"
    return EngineInfo(blocks, block_size, version)


@dataclass(frozen=True)
class AdmissionPlan:
    """The admission-cost experiment: lone prompts join a steady decode batch, one every
    ``spacing_steps`` steps, and leave it ``join_output_tokens`` steps later. A lone prompt
    cannot show the cost, since its TTFT includes the front end too; in a running batch, every
    step its admission slows is seen in the other requests' token gaps (docs/perfmodel.md,
    "Admission cost")."""

    batch_sizes: tuple[int, ...]
    batch_prompt_tokens: int
    join_prompt_tokens: tuple[int, ...]
    joins_per_length: int
    join_output_tokens: int = 16  # each join decodes with the batch for this many steps, then leaves
    spacing_steps: int = 32  # > join_output_tokens + both windows: no window sees two joins

    @classmethod
    def full(cls) -> "AdmissionPlan":
        """ShareGPT-like join lengths into a small and a larger batch (about 40 s on an H200)."""
        return cls((16, 64), 256, (16, 128, 512), 12)

    @classmethod
    def quick(cls) -> "AdmissionPlan":
        return cls((4,), 64, (32,), 8)


@dataclass(frozen=True)
class ProfilePlan:
    """The experiments of one profile run."""

    prefill_lengths: tuple[int, ...]
    prefill_repeats: int
    decode_batch_sizes: tuple[int, ...]
    decode_prompt_lengths: tuple[int, ...]
    decode_output_tokens: int
    # Tokens each lone prefill request asks for (its TTFT is the time to the first). Real requests
    # ask for many; on vLLM 0.26 on an H100, 1, 2 and 8 gave the same TTFT (scripts/gpu/ttft_check.py).
    prefill_output_tokens: int = 1
    admission: AdmissionPlan | None = None

    @classmethod
    def full(cls, max_prompt_tokens: int = 2048, decode_output_tokens: int = 64,
             prefill_output_tokens: int = 1) -> "ProfilePlan":
        """Prompts up to ``max_prompt_tokens`` (keep it under the server's --max-model-len);
        decode batches up to 256, of which ``decode_grid`` keeps those the engine holds.

        A large batch reaches the engine over many iterations (its prompts are tokenized and
        prefilled in turn), so its requests decode all together for only part of their tokens:
        on a GPU with hundreds of sequences, ``decode_output_tokens`` of 128 leaves the large
        batches as many pure-decode samples as the small ones. With the defaults and an engine
        of at most 64 sequences this is the CPU plan.
        """
        lengths = [n for n in (16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072) if n < max_prompt_tokens]
        decode_lengths = [n for n in (32, 256, 1024) if n < max_prompt_tokens]
        if max_prompt_tokens // 2 > 1024:  # long contexts get a decode sweep of their own
            decode_lengths.append(max_prompt_tokens // 2)
        return cls(tuple(lengths) + (max_prompt_tokens,), 3,
                   (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256), tuple(decode_lengths),
                   decode_output_tokens, prefill_output_tokens, AdmissionPlan.full())

    @classmethod
    def quick(cls) -> "ProfilePlan":
        return cls((32, 128, 256, 512, 1024), 2, (1, 4, 8, 16), (64, 512), 64, admission=AdmissionPlan.quick())

    def decode_grid(self, kv: KVModel, max_num_seqs: int) -> list[tuple[int, int]]:
        """(batch, prompt length) pairs that fit the engine without preemption (90% of KV)."""
        grid = []
        for length in self.decode_prompt_lengths:
            for batch in self.decode_batch_sizes:
                peak = kv.tokens_held(np.full(batch, length + self.decode_output_tokens))
                if batch <= max_num_seqs and peak <= 0.9 * kv.capacity_tokens:
                    grid.append((batch, length))
        return grid


@dataclass
class KVProbe:
    """One /metrics scrape during a batch: when, and the usage the engine reported."""

    time: float
    usage: float


@dataclass
class BatchResult:
    records: list[RequestRecord]
    probes: list[KVProbe] = field(default_factory=list)


class LiveEngine:
    """Runs batches of requests on one server through the replayer's client, in this process."""

    def __init__(self, base_url: str, model: str, timeout_s: float = 600.0):
        self.base_url = base_url.rstrip("/")
        self.endpoint = Endpoint(self.base_url, model=model, timeout_s=timeout_s)
        self.info = read_engine_info(self.base_url)

    def run_batch(self, specs: Sequence[RequestSpec], kv_probe_period_s: float | None = None,
                  offsets: Sequence[float] | None = None) -> BatchResult:
        """Send all ``specs`` at once (or each at its offset in seconds) and wait for them;
        optionally scrape KV usage meanwhile."""
        offsets = [0.0] * len(specs) if offsets is None else list(offsets)
        clock = RunClock(__import__("time").time() + 0.05)
        client = StreamingClient(self.endpoint, clock, client_name="profiler")
        records: list[RequestRecord] = []
        dispatcher = Dispatcher(client, clock, records.append)
        result = BatchResult(records)
        prober = gevent.spawn(self._probe_kv, clock, kv_probe_period_s, result.probes) if kv_probe_period_s else None
        try:
            dispatcher.run([ScheduledRequest(f"p{i}", at, spec) for i, (at, spec) in enumerate(zip(offsets, specs))])
        finally:
            if prober is not None:
                prober.kill()
            client.close()
        failed = [r for r in records if r.outcome != OK]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(records)} profiling requests failed: {failed[0].error}")
        records.sort(key=lambda r: int(r.id[1:]))
        return result

    def _probe_kv(self, clock: RunClock, period_s: float, out: list[KVProbe]) -> None:
        http = HTTPClient.from_url(self.base_url + "/metrics", concurrency=1, network_timeout=10)
        try:
            while True:
                gevent.sleep(period_s)
                t = clock.now()
                response = http.get("/metrics")
                out.append(KVProbe(t, parse_kv_usage(response.read().decode())))
        finally:
            http.close()


# ---------------------------------------------------------------------------------------
# Turning token timelines into model samples (pure functions, shared by profile and validate)


def prefill_samples(records: Sequence[RequestRecord]) -> tuple[np.ndarray, np.ndarray]:
    """(prompt tokens, TTFT from send) of lone requests."""
    prompts = np.array([r.prompt_tokens for r in records], dtype=float)
    ttft = np.array([r.chunk_times[0] - r.sent for r in records])
    return prompts, ttft


def token_times(record: RequestRecord) -> np.ndarray:
    """Arrival time of every output token (a chunk of k tokens gives its time to all k)."""
    return np.repeat(np.asarray(record.chunk_times), record.chunk_tokens)


def decode_samples(
    records: Sequence[RequestRecord], min_iterations: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(batch size, mean total context tokens, mean iteration time) of pure-decode segments.

    Segments are cut at every request's first token (a prefill shares that iteration) and last
    token (the batch shrinks), so the set of decoding requests is constant inside one. Every
    decoding request gets one token per iteration, so a segment (a, b] holds as many iterations
    as each request got tokens in it; the median over the requests is taken, because when
    vLLM's front end (or a busy client) falls behind, one request's tokens arrive in a late
    burst and shift out of or into the segment. Mean iteration time = (b - a) / iterations, at
    the segment's mean context (context grows linearly, so a linear model fits it exactly).
    """
    times = [token_times(r) for r in records]
    firsts = np.array([t[0] for t in times])
    lasts = np.array([t[-1] for t in times])
    prompts = np.array([r.prompt_tokens for r in records], dtype=float)
    events = np.unique(np.concatenate([firsts, lasts]))
    batch, context, mean_time = [], [], []

    def iterations_in(active, a, b) -> float:
        return float(np.median([
            np.searchsorted(times[i], b, side="right") - np.searchsorted(times[i], a, side="right") for i in active
        ]))

    for start, end in zip(events[:-1], events[1:]):
        active = np.flatnonzero((firsts <= start) & (lasts >= end))
        if active.size == 0:
            continue
        # Long segments are cut into pieces of about 2 x min_iterations: more samples, each robust.
        pieces = max(1, int(iterations_in(active, start, end) // (2 * min_iterations)))
        bounds = np.linspace(start, end, pieces + 1)
        for a, b in zip(bounds[:-1], bounds[1:]):
            iterations = iterations_in(active, a, b)
            if iterations < min_iterations:
                continue
            mid = 0.5 * (a + b)
            generated = np.array([np.searchsorted(times[i], mid, side="right") for i in active])
            if (b - a) / iterations < MIN_ITERATION_S:
                continue  # a delivery burst, not engine time
            mean_time.append((b - a) / iterations)
            batch.append(active.size)
            context.append(float(np.sum(prompts[active] + generated)))
    return np.array(batch, dtype=float), np.array(context), np.array(mean_time)


def drop_bursts(sizes: np.ndarray, contexts: np.ndarray, gaps: np.ndarray) -> tuple[np.ndarray, ...]:
    """Drop decode samples faster than half the typical iteration of the smallest batch measured.

    No iteration of a larger batch is faster than a lone request's, so such a segment was a
    burst of late-delivered tokens (seen on a GPU, where an iteration takes ~6 ms and a
    large batch's stream falls behind), not engine time.
    """
    counts = {b: int(np.sum(sizes == b)) for b in np.unique(sizes)}
    reference = [b for b in sorted(counts) if counts[b] >= 3]  # a burst alone is no reference
    if not reference:
        return sizes, contexts, gaps
    keep = gaps >= 0.5 * np.median(gaps[sizes == reference[0]])
    return sizes[keep], contexts[keep], gaps[keep]


def kv_samples(result: BatchResult, kv: KVModel, settle_s: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, measured) KV tokens held at each probe of a batch.

    The engine's usage gauge is from its last step, the token stream reaches the client a
    moment later; probes within ``settle_s`` of a request's last token are skipped, since there
    the two legitimately disagree about whether that request still holds blocks.
    """
    predicted, measured = [], []
    ends = np.array([r.chunk_times[-1] for r in result.records])
    for probe in result.probes:
        if np.any(np.abs(ends - probe.time) < settle_s):
            continue  # a request ending: the scrape and the token stream may disagree
        contexts = [
            r.prompt_tokens + int(np.searchsorted(token_times(r), probe.time, side="right"))
            for r in result.records
            if r.sent <= probe.time and r.chunk_times and r.chunk_times[-1] > probe.time
        ]
        if not contexts:
            continue
        predicted.append(kv.tokens_held(contexts))
        measured.append(probe.usage * kv.capacity_tokens)
    return np.array(predicted, dtype=float), np.array(measured)


def noise_floor(groups: Sequence[np.ndarray]) -> float | None:
    """Median absolute % deviation of repeated identical-shape measurements from their median."""
    devs = [np.abs(g - np.median(g)) / np.median(g) * 100 for g in groups if len(g) > 1]
    return float(np.median(np.concatenate(devs))) if devs else None


# Gaps around a join that its admission may slow: the step before it (async scheduling plans
# the join while that step runs), the step that prefills it, and the step after (its release).
JOIN_WINDOW_STEPS = 3
JOIN_REFERENCE_STEPS = 5  # clean gaps on each side of the window, the step time without the join


@dataclass(frozen=True)
class AdmissionFit:
    """The measured admission cost and how it was found (stored in the profile's ``admission``)."""

    cost_s: float
    samples: dict  # per join: batch size, prompt tokens, excess at joining and at leaving, cost

    def to_dict(self) -> dict:
        cost = np.asarray(self.samples["cost_s"])
        lengths = np.asarray(self.samples["prompt_tokens"])
        q1, q3 = np.percentile(cost, [25, 75])
        return {
            "n_samples": int(cost.size),
            "iqr_s": [float(q1), float(q3)],
            "by_prompt_tokens": {str(int(n)): float(np.median(cost[lengths == n])) for n in np.unique(lengths)},
            "join_excess_median_s": float(np.median(self.samples["join_excess_s"])),
            "leave_excess_median_s": float(np.median(self.samples["leave_excess_s"])),
            "method": "joins into a steady decode batch",
        }


def _step_excess(times: list[np.ndarray], instant: float) -> float | None:
    """What the steps around ``instant`` took beyond clean steps, for a batch decoding steadily
    (each array: one request's token times within the steady part); None unless most saw it."""
    per_request = []
    for t in times:
        k = int(np.argmin(np.abs(t - instant))) if t.size else -1
        start, end = k - 2, k + 1  # the window's gaps t[k-2] -> t[k-1] -> t[k] -> t[k+1]
        if start - JOIN_REFERENCE_STEPS < 0 or end + JOIN_REFERENCE_STEPS >= t.size:
            continue
        gaps = np.diff(t)
        reference = np.median(np.concatenate([gaps[start - JOIN_REFERENCE_STEPS:start],
                                              gaps[end:end + JOIN_REFERENCE_STEPS]]))
        if abs(t[k] - instant) > 0.5 * reference:
            continue  # no step of this request ended then
        per_request.append(t[end] - t[start] - JOIN_WINDOW_STEPS * reference)
    return float(np.median(per_request)) if len(per_request) * 2 >= len(times) else None


def admission_samples(batch: Sequence[RequestRecord], joins: Sequence[RequestRecord],
                      prefill_work: Callable[[float], float]) -> dict:
    """Per join, the engine time it added beyond its prefill work, when it joined and when it left.

    While the ``batch`` decodes steadily, each of its requests gets one token per step; its
    token nearest a join's first token closes the step that prefilled the join, the one nearest
    the join's last token the step that ended it. The gaps of the JOIN_WINDOW_STEPS around
    each, less as many clean steps (the median of the JOIN_REFERENCE_STEPS gaps on either side),
    is what the join added then (the median over the batch's requests). Its cost: both, less
    its ``prefill_work(prompt tokens)`` (PrefillModel.chunk_work). Joins outside the steady
    part, or too close to its ends, are skipped.
    """
    times = [token_times(r) for r in batch]
    steady_from = max(t[0] for t in times)
    steady_to = min(t[-1] for t in times)
    times = [t[(t >= steady_from) & (t <= steady_to)] for t in times]
    lengths, joined, left, costs = [], [], [], []
    for join in joins:
        if not join.chunk_times:
            continue
        at_join = _step_excess(times, join.chunk_times[0])
        # a one-token join leaves in the step that prefilled it: that window holds both
        at_leave = _step_excess(times, join.chunk_times[-1]) if sum(join.chunk_tokens) > 1 else 0.0
        if at_join is None or at_leave is None:
            continue
        lengths.append(join.prompt_tokens)
        joined.append(at_join)
        left.append(at_leave)
        costs.append(at_join + at_leave - prefill_work(join.prompt_tokens))
    return {"prompt_tokens": np.array(lengths, dtype=float), "join_excess_s": np.array(joined),
            "leave_excess_s": np.array(left), "cost_s": np.array(costs)}


def run_admission(engine: LiveEngine, synthesize: Callable[[int, int, int, int], list[RequestSpec]],
                  perf: PerfModel, plan: AdmissionPlan, seed: int = 50_000,
                  progress: Callable[[str], None] = lambda _msg: None) -> AdmissionFit:
    """Measure ``PerfModel.admit_s`` with ``perf``'s prefill and decode models (fitted already).

    Per batch size, the batch starts together and streams long enough (from the decode model,
    with a 1.5x margin) for every join to land in its steady part; joins of the plan's lengths,
    interleaved, arrive ``spacing_steps`` predicted steps apart once the batch's prefills are done.
    """
    parts = []
    for batch in plan.batch_sizes:
        lead = 2.0 * float(perf.ttft_alone(batch * plan.batch_prompt_tokens)) + 0.2
        for per_length in range(plan.joins_per_length, 0, -1):  # fewer joins where the cache is too small
            n_joins = per_length * len(plan.join_prompt_tokens)
            step = float(perf.decode.time(batch, batch * (plan.batch_prompt_tokens + plan.spacing_steps * n_joins / 2)))
            output = int(1.5 * (lead / step + (n_joins + 2) * plan.spacing_steps)) + 16
            if perf.kv.tokens_held(np.full(batch, plan.batch_prompt_tokens + output)) <= 0.9 * perf.kv.capacity_tokens:
                break
        else:
            progress(f"admission: a batch of {batch} does not fit the KV cache; skipped")
            continue
        seed += 1
        specs = synthesize(batch, plan.batch_prompt_tokens, output, seed)
        offsets = [0.0] * batch
        for j in range(n_joins):
            seed += 1
            specs += synthesize(1, plan.join_prompt_tokens[j % len(plan.join_prompt_tokens)], plan.join_output_tokens,
                                seed)
            offsets.append(lead + (j + 1) * plan.spacing_steps * step)
        records = engine.run_batch(specs, offsets=offsets).records
        part = admission_samples(records[:batch], records[batch:], lambda n: float(perf.prefill.chunk_work(n, 0)))
        parts.append({"batch_size": np.full(part["cost_s"].size, float(batch)), **part})
        progress(f"admission: joins into a batch of {batch}")
    if not parts:
        raise ValueError("no admission batch fits the KV cache")
    samples = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    if samples["cost_s"].size < 3:
        raise ValueError(f"only {samples['cost_s'].size} joins landed in a steady decode batch (need 3)")
    return AdmissionFit(max(float(np.median(samples["cost_s"])), 0.0), samples)


# ---------------------------------------------------------------------------------------
# The profile run


@dataclass
class ProfileRun:
    perf: PerfModel
    prefill_fit: object
    decode_fit: object
    samples: dict


def run_profile(
    engine: LiveEngine,
    synthesize: Callable[[int, int, int, int], list[RequestSpec]],
    plan: ProfilePlan,
    max_num_seqs: int,
    max_batched_tokens: int,
    progress: Callable[[str], None] = lambda _msg: None,
) -> ProfileRun:
    """Run the plan's experiments and fit the models.

    ``synthesize(n, prompt_tokens, output_tokens, seed)`` makes distinct exact-length prompts
    (distinct so the prefix cache never shortens a measured prefill).
    """
    kv = engine.info.kv_model()
    engine.run_batch(synthesize(4, 64, 16, 10_000))  # warm-up: first requests pay one-off costs
    seed = 0
    prefill_records: list[RequestRecord] = []
    for length in plan.prefill_lengths:
        for _ in range(plan.prefill_repeats):
            seed += 1
            prefill_records += engine.run_batch(synthesize(1, length, plan.prefill_output_tokens, seed)).records
        progress(f"prefill {length} tokens")
    prompts, ttft = prefill_samples(prefill_records)
    # Fit the per-length medians: one stalled repeat must not bend the curve.
    lengths = np.unique(prompts)
    medians = np.array([np.median(ttft[prompts == n]) for n in lengths])
    prefill, prefill_fit = fit_prefill(lengths, lengths**2, medians)

    decode_parts = []
    for batch, length in plan.decode_grid(kv, max_num_seqs):
        seed += 1
        result = engine.run_batch(synthesize(batch, length, plan.decode_output_tokens, seed))
        decode_parts.append(decode_samples(result.records))
        progress(f"decode batch {batch} x {length} tokens")
    sizes, contexts, gaps = drop_bursts(*(np.concatenate(parts) for parts in zip(*decode_parts)))
    decode, decode_fit = fit_decode(sizes, contexts, gaps)

    perf = PerfModel(prefill, decode, kv, max_num_seqs=max_num_seqs, max_batched_tokens=max_batched_tokens)
    samples = {
        "prefill": {"prompt_tokens": prompts, "time": ttft},
        "decode": {"batch_size": sizes, "total_context": contexts, "time": gaps},
    }
    if plan.admission is not None:
        admission = run_admission(engine, synthesize, perf, plan.admission, progress=progress)
        perf = with_admission(perf, admission)
        samples["admission"] = admission.samples
    return ProfileRun(perf, prefill_fit, decode_fit, samples)


def with_admission(perf: PerfModel, admission: AdmissionFit, **provenance: str) -> PerfModel:
    """``perf`` with the measured admission cost, and how it was measured in ``meta["admission"]``."""
    return replace(perf, admit_s=admission.cost_s, meta={**perf.meta, "admission": {**admission.to_dict(), **provenance}})


# ---------------------------------------------------------------------------------------
# Validation on held-out requests


def validate_profile(
    engine: LiveEngine,
    perf: PerfModel,
    prefill_specs: Sequence[RequestSpec],
    decode_groups: Sequence[Sequence[RequestSpec]],
    noise_specs: Callable[[int, int, int, int], list[RequestSpec]],
    progress: Callable[[str], None] = lambda _msg: None,
) -> dict:
    """Prediction error of each model on held-out requests, next to the measurement noise floor.

    Prefill: held-out prompts sent alone. Decode and KV: held-out groups launched together,
    each with its real output length. Noise floor: identical-shape requests repeated (distinct
    token ids, so the prefix cache cannot help), i.e. what the same prediction would score
    against the server's own run-to-run variation.
    """
    prefill_records = []
    for spec in prefill_specs:
        prefill_records += engine.run_batch([spec]).records
    progress("prefill: held-out prompts")
    prompts, ttft = prefill_samples(prefill_records)

    decode_parts, kv_parts = [], []
    for group in decode_groups:
        result = engine.run_batch(group, kv_probe_period_s=0.05)
        decode_parts.append(decode_samples(result.records))
        kv_parts.append(kv_samples(result, perf.kv))
        progress(f"decode: held-out group of {len(group)}")
    sizes, contexts, gaps = (np.concatenate(parts) for parts in zip(*decode_parts))
    kv_pred, kv_meas = (np.concatenate(parts) for parts in zip(*kv_parts))

    repeats = [engine.run_batch(noise_specs(1, 256, 1, 1000 + i)).records[0] for i in range(6)]
    prefill_noise = noise_floor([prefill_samples(repeats)[1]])
    # The same decode batch (8 requests, 256-token prompts, 48 tokens) run 5 times: its mean
    # iteration time varies from run to run by this much whatever any model says.
    batch_means = []
    for i in range(5):
        b, _, g = decode_samples(engine.run_batch(noise_specs(8, 256, 48, 2000 + i)).records)
        if len(g):
            batch_means.append(float(np.mean(g[b == b.max()])))
    decode_noise = noise_floor([np.array(batch_means)])
    progress("noise floor")

    return {
        "prefill": prediction_errors(perf.prefill.time_single(prompts), ttft, prefill_noise),
        "decode": prediction_errors(perf.decode.time(sizes, contexts), gaps, decode_noise),
        "kv": prediction_errors(kv_pred, kv_meas, None),
    }


def prediction_errors(predicted: np.ndarray, actual: np.ndarray, noise_floor_pct: float | None) -> dict:
    """One model's entry of the validation report (also used to re-validate a refitted model
    on stored held-out samples): error summary over the measurements > 0, and the noise floor."""
    keep = np.asarray(actual) > 0
    if not keep.any():  # e.g. every KV probe fell on a request's end
        return {"n": 0, "median_pct": None, "p90_pct": None, "max_pct": None, "noise_floor_pct": noise_floor_pct}
    summary = error_summary(np.asarray(predicted)[keep], np.asarray(actual)[keep]).to_dict()
    return {**summary, "noise_floor_pct": noise_floor_pct}
