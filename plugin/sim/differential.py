"""Differential harness: the simulator's engine against vLLM's real V1 scheduler, step by step.

The same synthetic requests go to

- vLLM's own ``Scheduler`` (or ``AsyncScheduler``) from the installed vLLM, driven in-process
  the way ``EngineCore`` drives it (``step`` / ``step_with_batch_queue``), with a stand-in for
  the model runner: every scheduled request whose prompt is done gets its next token, a
  partial prefill chunk gets none; no model runs;
- one worker of the cluster simulator (``ClusterSimulator``, one engine, the ``rr`` policy so
  every request is placed at once, the case's prefix caching and async scheduling, the prompts'
  token ids in the schedule), with decode runs cut to one iteration so every step is observable.

Both run on a unit clock (every step takes 1 s; the simulator's worker gets a PerfModel whose
every iteration costs exactly 1 s), so arrivals land in the same step on both sides. After every
scheduling step each side records a :class:`Step`: the requests scheduled and their tokens, the
preemption victims in order, the KV blocks in use (allocated, excluding vLLM's null block) and
the waiting queue in order. :func:`compare` lines the two lists up step by step.

vLLM is imported only inside :func:`run_vllm`; the rest needs no vLLM. Used by
tests/test_sim_vs_vllm_scheduler.py and benchmarks/bench_sim_vs_vllm_scheduler.py; the
differences that remain are in docs/simulator.md.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aladdin.loadgen.datasets import RequestSpec
from aladdin.loadgen.schedule import ScheduledRequest
from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel
from aladdin.plugin.sim.simulator import ClusterSimulator, SimConfig, _Worker

FIELDS = ("scheduled", "preempted", "kv_blocks", "waiting")
SAMPLED_TOKEN = 7  # the stand-in model runner's every output token (never EOS: requests set ignore_eos)
MAX_STEPS = 100_000


@dataclass(frozen=True)
class Req:
    """One synthetic request: arrives at ``arrival`` seconds (steps take 1 s), ``prompt`` tokens
    of which the first ``shared_prefix`` are the same in every request with a shared prefix,
    ``output`` tokens generated (vLLM's ``max_tokens`` with ``ignore_eos``)."""

    id: str
    arrival: float
    prompt: int
    output: int
    shared_prefix: int = 0


@dataclass(frozen=True)
class Case:
    """One engine configuration and workload. ``num_blocks`` is the allocatable KV blocks (the
    simulator's capacity; vLLM gets one more, its null block)."""

    name: str
    requests: tuple[Req, ...]
    num_blocks: int
    block_size: int = 16
    max_num_seqs: int = 8
    max_batched_tokens: int = 64
    prefix_caching: bool = False
    async_scheduling: bool = False
    note: str = ""

    def perf(self) -> PerfModel:
        """A worker model whose every iteration takes exactly 1 s (and no front-end time)."""
        return PerfModel(PrefillModel(0.0, 0.0, 1.0), DecodeModel(0.0, 0.0, 1.0),
                         KVModel(self.block_size, self.num_blocks * self.block_size),
                         max_num_seqs=self.max_num_seqs, max_batched_tokens=self.max_batched_tokens)


@dataclass(frozen=True)
class Step:
    """The state right after one scheduling step (a batch that runs)."""

    scheduled: tuple[tuple[str, int], ...]  # (request, tokens), sorted by request id
    preempted: tuple[str, ...]  # victims, in the order they were preempted
    kv_blocks: int  # allocated blocks, null block excluded
    waiting: tuple[str, ...]  # the waiting queue, head first

    def to_dict(self) -> dict[str, Any]:
        return {"scheduled": dict(self.scheduled), "preempted": list(self.preempted),
                "kv_blocks": self.kv_blocks, "waiting": list(self.waiting)}


def _step(scheduled: dict[str, int], preempted: Sequence[str], kv_blocks: int, waiting: Sequence[str]) -> Step:
    return Step(tuple(sorted(scheduled.items())), tuple(preempted), int(kv_blocks), tuple(waiting))


def prompt_token_ids(req: Req, index: int) -> list[int]:
    """Token ids: a prefix common to every request that shares one, then tokens unique to this
    request (so prefix caching hits only where intended, and vLLM's block hashes differ)."""
    shared = [100 + j for j in range(req.shared_prefix)]
    unique = [1000 + (index * 7919 + j) % 20000 for j in range(req.prompt - req.shared_prefix)]
    return shared + unique


# ---------------------------------------------------------------------- vLLM's scheduler


def build_vllm_scheduler(case: Case, model_dir: str | None = None) -> Any:
    """vLLM's Scheduler (AsyncScheduler with ``async_scheduling``) for ``case``: a VllmConfig
    from the tiny model folder's config.json (no tokenizer, no weights) and a KVCacheConfig of
    one full-attention group of ``num_blocks + 1`` blocks."""
    import torch
    from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    if model_dir is None:
        from aladdin.modeldir import default_model_dir

        model_dir = str(default_model_dir("tiny"))
    max_len = max(r.prompt + r.output for r in case.requests) + 1
    model = ModelConfig(model=model_dir, skip_tokenizer_init=True, max_model_len=max_len)
    blocks = case.num_blocks + 1  # vLLM's null block
    cache = CacheConfig(block_size=case.block_size, enable_prefix_caching=case.prefix_caching)
    cache.num_gpu_blocks = blocks
    sched = SchedulerConfig(max_num_seqs=case.max_num_seqs, max_num_batched_tokens=case.max_batched_tokens,
                            max_model_len=max_len, is_encoder_decoder=False, enable_chunked_prefill=True)
    config = VllmConfig(model_config=model, cache_config=cache, scheduler_config=sched)
    # VllmConfig may adjust these on this platform; the case's values are what is compared.
    config.cache_config.enable_prefix_caching = case.prefix_caching
    kv = KVCacheConfig(num_blocks=blocks, kv_cache_tensors=[], kv_cache_groups=[
        KVCacheGroupSpec(["layer.0"], FullAttentionSpec(block_size=case.block_size, num_kv_heads=1,
                                                        head_size=1, dtype=torch.float32))])
    cls = AsyncScheduler if case.async_scheduling else Scheduler
    return cls(vllm_config=config, kv_cache_config=kv, structured_output_manager=StructuredOutputManager(config),
               block_size=case.block_size, log_stats=False)


def _vllm_requests(case: Case) -> list[Any]:
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.request import Request

    hasher = None
    if case.prefix_caching:
        hash_fn = get_hash_fn_by_name("sha256")
        init_none_hash(hash_fn)
        hasher = get_request_block_hasher(case.block_size, hash_fn)
    out = []
    for i, r in enumerate(case.requests):
        params = SamplingParams(max_tokens=r.output, ignore_eos=True, temperature=0.0)
        out.append(Request(r.id, prompt_token_ids(r, i), params, None, arrival_time=r.arrival, block_hasher=hasher))
    return out


def run_vllm(case: Case, model_dir: str | None = None) -> list[Step]:
    return drive_vllm(case, model_dir)[0]


def drive_vllm(case: Case, model_dir: str | None = None) -> tuple[list[Step], int]:
    """Drive vLLM's scheduler through ``case`` as EngineCore would; one Step per batch that runs.

    Sync: schedule, run (1 s), update from the output. Async (``step_with_batch_queue``, two
    batches in flight): the next batch is scheduled as soon as the previous one is launched,
    before its output is known; a batch starts when the previous one ends and takes 1 s.
    Requests are added before a scheduling call once their arrival time has come. Also returns
    how many arrived exactly at a step boundary of a busy engine (where the two sides' tie rules
    could differ; the default cases have none).
    """
    from vllm.v1.outputs import ModelRunnerOutput

    scheduler = build_vllm_scheduler(case, model_dir)
    pool = scheduler.kv_cache_manager.block_pool
    usable = pool.num_gpu_blocks - 1
    pending = deque(sorted(_vllm_requests(case), key=lambda r: r.arrival_time))
    queue_size = 2 if case.async_scheduling else 1
    batches: deque[tuple[Any, dict[str, bool], float]] = deque()  # (output, samples?, end time)
    steps: list[Step] = []
    now = 0.0
    gpu_free = 0.0  # when the batch in flight ends
    ties = 0
    victims: list[str] = []
    for _ in range(MAX_STEPS):
        if not pending and not scheduler.has_requests() and not batches:
            return steps, ties
        idle = not scheduler.has_requests() and not batches
        if idle:
            now = max(now, pending[0].arrival_time)  # idle: wait for the next arrival
        while pending and pending[0].arrival_time <= now:
            ties += not idle and pending[0].arrival_time == now
            scheduler.add_request(pending.popleft())
        if scheduler.has_requests():
            output = scheduler.schedule()
            samples = {rid: not scheduler.requests[rid].is_prefill_chunk for rid in output.num_scheduled_tokens}
            executed = output.total_num_scheduled_tokens > 0
            end = max(now, gpu_free) + 1.0 if executed else max(now, gpu_free)
            victims += _preempted_in_order(scheduler, output.preempted_req_ids or ())
            if executed:  # an empty batch is no step; its victims count with the next one
                gpu_free = end
                waiting = [r.request_id for r in scheduler.waiting]
                steps.append(_step(dict(output.num_scheduled_tokens), victims,
                                   usable - pool.get_num_free_blocks(), waiting))
                victims = []
            batches.appendleft((output, samples, end))
            if len(batches) < queue_size and (executed or scheduler.has_requests()):
                continue
        if not batches:
            continue
        output, samples, end = batches.pop()
        now = max(now, end)
        ids = list(output.num_scheduled_tokens)
        runner = ModelRunnerOutput(req_ids=ids, req_id_to_index={rid: k for k, rid in enumerate(ids)},
                                   sampled_token_ids=[[SAMPLED_TOKEN] if samples[rid] else [] for rid in ids])
        scheduler.update_from_output(output, runner)
    raise RuntimeError(f"case {case.name}: vLLM did not finish in {MAX_STEPS} steps")


def _preempted_in_order(scheduler: Any, preempted: Sequence[str]) -> list[str]:
    """vLLM reports this step's victims as a set; each was prepended to the waiting queue as it
    was preempted, so the last victim is nearest the head: their waiting order, reversed."""
    position = {r.request_id: k for k, r in enumerate(scheduler.waiting)}
    return sorted(preempted, key=lambda rid: -position.get(rid, -1))


# ---------------------------------------------------------------------- the simulator


class SteppedSimulator(ClusterSimulator):
    """The simulator, one worker, every iteration planned on its own and recorded as a Step.

    Only observation is added: a pure decode run is cut to one iteration (the same iterations
    the fast path takes in one go; tests check both give the same token times).
    """

    def __init__(self, perf: PerfModel, *, prefix_caching: bool = False, async_scheduling: bool = False):
        super().__init__(perf, SimConfig(num_workers=1, policy="rr", oracle_lengths=True,
                                         prefix_caching=prefix_caching, async_scheduling=async_scheduling))
        self.steps: list[Step] = []
        self._victims: list[str] = []

    def _decode_run_length(self, worker: _Worker, free: int) -> int:
        return min(super()._decode_run_length(worker, free), 1)

    def _preempt_newest(self, worker: _Worker) -> None:
        self._victims.append(self.ids[next(reversed(worker.running))])
        super()._preempt_newest(worker)

    def _start_run(self, worker: _Worker, now: float, count: int, first: float, step: float,
                   chunks: list[tuple[int, int]] | None) -> None:
        ids = self.ids
        scheduled = {ids[i]: 1 for i in worker.running if self.decoding[i]}
        blocks = worker.blocks_used
        if chunks is None:  # a decode run: its blocks are counted when it ends
            blocks += worker.phase[worker.iterations % worker.block_size]
        else:
            for i, take in chunks:
                scheduled[ids[i]] = scheduled.get(ids[i], 0) + take
        self.steps.append(_step(scheduled, self._victims, blocks, [ids[i] for i in worker.waiting]))
        self._victims = []
        super()._start_run(worker, now, count, first, step, chunks)


def schedule_of(case: Case) -> list[ScheduledRequest]:
    """The case's requests, with their prompt token ids (what prefix caching matches on)."""
    return [ScheduledRequest(r.id, r.arrival, RequestSpec("x", r.prompt, r.output, None,
                                                          tuple(prompt_token_ids(r, k)), f"s{k}"))
            for k, r in enumerate(case.requests)]


def run_sim(case: Case) -> list[Step]:
    """The simulator's steps for ``case``, with the case's prefix caching and async scheduling."""
    sim = SteppedSimulator(case.perf(), prefix_caching=case.prefix_caching, async_scheduling=case.async_scheduling)
    sim.run(schedule_of(case))
    return sim.steps


# ---------------------------------------------------------------------- comparison


@dataclass
class Comparison:
    case: str
    vllm_steps: int
    sim_steps: int
    agreeing_steps: int
    field_agreement: dict[str, float]
    first_divergence: dict[str, Any] | None
    differences: list[dict[str, Any]] = field(default_factory=list)  # the first few differing steps
    # agreement with vLLM's steps one later (async scheduling decides each batch a step early)
    agreement_vllm_one_step_later: float | None = None

    @property
    def steps(self) -> int:
        return max(self.vllm_steps, self.sim_steps)

    @property
    def agreement(self) -> float:
        return self.agreeing_steps / self.steps if self.steps else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case, "steps": self.steps, "vllm_steps": self.vllm_steps, "sim_steps": self.sim_steps,
                "agreeing_steps": self.agreeing_steps, "agreement": round(self.agreement, 4),
                "field_agreement": {k: round(v, 4) for k, v in self.field_agreement.items()},
                "agreement_vllm_one_step_later": (None if self.agreement_vllm_one_step_later is None
                                                  else round(self.agreement_vllm_one_step_later, 4)),
                "first_divergence": self.first_divergence, "differences": self.differences}


def compare(name: str, vllm: Sequence[Step], sim: Sequence[Step], keep: int = 5) -> Comparison:
    """Step k of one side against step k of the other; a step only one side has differs in every field."""
    steps = max(len(vllm), len(sim))
    agree = dict.fromkeys(FIELDS, 0)
    agreeing = 0
    first = None
    differences = []
    for k in range(steps):
        a = vllm[k] if k < len(vllm) else None
        b = sim[k] if k < len(sim) else None
        differing = [f for f in FIELDS if a is None or b is None or getattr(a, f) != getattr(b, f)]
        for f in FIELDS:
            agree[f] += f not in differing
        if not differing:
            agreeing += 1
            continue
        entry = {"step": k, "fields": differing,
                 "vllm": a.to_dict() if a else None, "sim": b.to_dict() if b else None}
        if first is None:
            first = entry
        if len(differences) < keep:
            differences.append(entry)
    shares = {f: (agree[f] / steps if steps else 1.0) for f in FIELDS}
    return Comparison(name, len(vllm), len(sim), agreeing, shares, first, differences)


def run_case(case: Case, model_dir: str | None = None) -> Comparison:
    vllm, ties = drive_vllm(case, model_dir)
    if ties:
        raise ValueError(f"case {case.name}: {ties} arrival(s) exactly at a step boundary; move them off it")
    sim = run_sim(case)
    result = compare(case.name, vllm, sim)
    if case.async_scheduling:
        result.agreement_vllm_one_step_later = compare(case.name, vllm[1:], sim).agreement
    return result


# ---------------------------------------------------------------------- the cases


def _burst(n: int, prompt: int, output: int, arrival: float = 0.0, prefix: str = "r", **kw: Any) -> list[Req]:
    return [Req(f"{prefix}{i:02d}", arrival, prompt, output, **kw) for i in range(n)]


def _staggered(specs: Sequence[tuple[float, int, int]], prefix: str = "r", shared: int = 0) -> list[Req]:
    return [Req(f"{prefix}{i:02d}", t, p, o, shared) for i, (t, p, o) in enumerate(specs)]


def default_cases() -> list[Case]:
    """The differential cases (issue 13 item 1). Arrivals between steps are at k + 0.5 s."""
    mixed = _staggered([(0.0, 40, 6), (0.5, 100, 4), (1.5, 30, 8), (2.5, 70, 5), (3.5, 20, 3),
                        (6.5, 50, 6), (7.5, 90, 2), (9.5, 10, 7)])
    cases = [
        Case("chunked_prefill_budget", tuple(mixed), num_blocks=256, max_num_seqs=8, max_batched_tokens=64,
             note="staggered prompts of 10-100 tokens under a 64-token budget: decodes and chunks share it"),
        Case("simultaneous_burst", tuple(_burst(4, 24, 5)), num_blocks=256, max_num_seqs=8, max_batched_tokens=64,
             note="four requests arrive at the same instant on an idle engine"),
        Case("max_num_seqs", tuple(_staggered([(0.45 * i, 12 + 3 * i, 4 + i % 5) for i in range(10)])),
             num_blocks=256, max_num_seqs=3, max_batched_tokens=128,
             note="ten short requests, at most three running"),
        Case("prompt_longer_than_budget", tuple(_staggered([(0.0, 300, 4), (0.5, 20, 6), (1.5, 150, 3), (2.5, 40, 5)])),
             num_blocks=256, max_num_seqs=8, max_batched_tokens=64,
             note="prompts of 150 and 300 tokens chunked through a 64-token budget while others decode"),
        Case("kv_exhaustion", tuple(_staggered([(0.45 * i, 40, 60) for i in range(6)])),
             num_blocks=24, max_num_seqs=8, max_batched_tokens=128,
             note="six 40+60-token requests on 24 blocks of 16: decodes outgrow the cache, recompute preemption"),
        Case("kv_exhaustion_prefix_caching", tuple(_staggered([(0.45 * i, 40, 60) for i in range(6)])),
             num_blocks=24, max_num_seqs=8, max_batched_tokens=128, prefix_caching=True,
             note="the same with prefix caching: a preempted request may find its own blocks still cached"),
        Case("shared_prefix_caching_off", tuple(_staggered([(3.0 * i + 0.5 * (i > 0), 96, 4) for i in range(5)],
                                                           shared=64)),
             num_blocks=256, max_num_seqs=8, max_batched_tokens=128,
             note="five requests sharing a 64-token prefix, prefix caching off"),
        Case("shared_prefix_caching_on", tuple(_staggered([(3.0 * i + 0.5 * (i > 0), 96, 4) for i in range(5)],
                                                          shared=64)),
             num_blocks=256, max_num_seqs=8, max_batched_tokens=128, prefix_caching=True,
             note="the same with prefix caching on (vLLM's default): later requests skip the cached prefix"),
        Case("async_scheduling", tuple(mixed), num_blocks=256, max_num_seqs=8, max_batched_tokens=64,
             async_scheduling=True,
             note="the chunked-prefill case under AsyncScheduler with two batches in flight"),
        Case("async_scheduling_max_num_seqs", tuple(_staggered([(0.45 * i, 12 + 3 * i, 4 + i % 5) for i in range(10)])),
             num_blocks=256, max_num_seqs=3, max_batched_tokens=128, async_scheduling=True,
             note="the max_num_seqs case under AsyncScheduler: a finished request frees its slot a step later"),
        Case("random_kv_pressure", tuple(_random_requests(40, seed=1)), num_blocks=40, max_num_seqs=6,
             max_batched_tokens=96,
             note="40 random requests (prompts 1-200, outputs 1-40, ~0.7 per step): chunking, max_num_seqs and preemption together"),
        Case("random_long_prompts_kv_pressure", tuple(_random_requests(30, seed=1, rate=0.5, max_prompt=300,
                                                                        max_output=60)),
             num_blocks=40, max_num_seqs=8, max_batched_tokens=32,
             note="long prompts chunked 32 tokens at a time on a tight cache: a request preempted mid-prefill"),
        Case("random_roomy", tuple(_random_requests(40, seed=2)), num_blocks=400, max_num_seqs=16,
             max_batched_tokens=256, note="40 random requests with KV to spare"),
        Case("random_kv_pressure_async", tuple(_random_requests(40, seed=1)), num_blocks=40, max_num_seqs=6,
             max_batched_tokens=96, async_scheduling=True,
             note="random_kv_pressure under AsyncScheduler: preemptions while a batch is in flight"),
        Case("random_shared_prefixes_gpu_defaults",
             tuple(_random_requests(40, seed=3, rate=1.0, max_prompt=250, shared_prefixes=(0, 16, 48, 100))),
             num_blocks=40, max_num_seqs=6, max_batched_tokens=64, prefix_caching=True, async_scheduling=True,
             note="random prompts sharing prefixes on a tight cache, with vLLM's GPU defaults (prefix caching "
                  "and async scheduling): hits, evictions and recompute from cached blocks"),
    ]
    return cases


def _random_requests(n: int, seed: int, rate: float = 0.7, max_prompt: int = 200, max_output: int = 40,
                     shared_prefixes: Sequence[int] = ()) -> list[Req]:
    """Reproducible random requests; arrival times are random reals, so none falls on a step
    boundary. With ``shared_prefixes``, each request shares a prefix of one of those lengths
    (cut to its prompt) with the others."""
    import random

    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        prompt, output = rng.randint(1, max_prompt), rng.randint(1, max_output)
        shared = min(prompt, rng.choice(shared_prefixes)) if shared_prefixes else 0
        out.append(Req(f"r{i:02d}", round(t, 6), prompt, output, shared))
    return out


def case_named(name: str) -> Case:
    for case in default_cases():
        if case.name == name:
            return case
    raise KeyError(name)


def unit_times(case: Case) -> bool:
    """Whether every iteration of the case's worker model takes exactly 1 s (a sanity check)."""
    perf = case.perf()
    return math.isclose(perf.prefill_pass_s, 1.0) and perf.frontend_s == 0.0
