"""GPU planning: the fewest GPUs that serve an arrival rate within the SLOs, per placement policy.

Aladdin sizes a cluster before it places requests. For each worker configuration (a
profile: one engine on G GPUs), the planner:

1. finds the highest per-worker rate r_G that one worker serves at the target SLO
   attainment, with the simulator (bracket by doubling or halving, then bisection);
2. estimates the cluster size n = ceil(R / r_G) for the cluster rate R;
3. checks n with a full multi-worker simulation for every policy, and moves n up or down to
   the smallest size that meets the target.

Every probe uses the same request lengths and the same unit-rate Poisson arrival pattern,
compressed to the probed rate (common random numbers), so two probes differ only by rate or
size and the noise of attainment near the knee does not make the searches wander.
Split-phase serving (a prefill pool beside a decode pool, placement on the decode pool) is
planned by ``size_split``. ``heartbeat_plan`` turns a time-varying rate into worker counts for
an autoscaler. Choices and limits: docs/placement.md, "Planner".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aladdin.errors import AladdinError
from aladdin.loadgen.arrivals import make_offsets
from aladdin.loadgen.datasets import RequestSpec
from aladdin.loadgen.schedule import ScheduledRequest
from aladdin.plugin.core.perfmodel import PerfModel
from aladdin.plugin.core.policies import ALADDIN_FILTERS, NAMED, PolicySpec, named_policy
from aladdin.plugin.core.predictor import PredictorConfig
from aladdin.plugin.core.queue import QUEUE_ORDERS
from aladdin.plugin.sim.simulator import SimConfig, simulate

FCFS = "fcfs"  # one worker behind any baseline: every request goes to it, in arrival order


# ---------------------------------------------------------------------------------------
# What is planned


@dataclass(frozen=True)
class Variant:
    """A placement policy as planned: a registry name plus, for the SLO-aware ones (aladdin,
    aladdin-spread), a headroom and the length source."""

    policy: str
    headroom: float = 0.0  # SLO-aware policies only
    oracle_lengths: bool = False  # SLO-aware only: place with the true output lengths (the ceiling)
    queue: str = "fcfs"  # SLO-aware only (the baselines never queue): the central queue's order

    def __post_init__(self) -> None:
        if self.policy not in NAMED:
            raise AladdinError(f"unknown placement policy {self.policy!r}; choose one of {', '.join(NAMED)}")
        if not self.slo_aware and (self.headroom or self.oracle_lengths or self.queue != "fcfs"):
            raise AladdinError(f"headroom, queue order and oracle lengths apply to the SLO-aware policies only, "
                               f"not {self.policy}")
        if self.queue not in QUEUE_ORDERS:
            raise AladdinError(f"queue order must be one of {', '.join(QUEUE_ORDERS)}, got {self.queue!r}")
        if not 0.0 <= self.headroom < 1.0:
            raise AladdinError(f"aladdin headroom must be in [0, 1), got {self.headroom}")

    @property
    def slo_aware(self) -> bool:
        return NAMED[self.policy].takes_headroom

    @property
    def family(self) -> str:
        """What the best-per-policy summary groups by: headrooms of one family compete."""
        return f"{self.policy}-oracle" if self.oracle_lengths else self.policy

    @property
    def label(self) -> str:
        if not self.slo_aware:
            return self.policy
        return f"{self.family}(h={self.headroom:g}{', edf' if self.queue == 'edf' else ''})"

    @property
    def single_worker(self) -> str:
        """Variants that behave identically on one worker share its rate search."""
        if not self.slo_aware:
            return FCFS
        # pack and spread pick among the same filters: on one worker they are the same policy
        filters = NAMED[self.policy].filters
        kind = "slo-aware" if filters == ALADDIN_FILTERS else f"slo-aware[{','.join(filters)}]"
        return f"{kind}(h={self.headroom:g}, {self.queue}{', oracle' if self.oracle_lengths else ''})"

    def make(self, seed: int) -> PolicySpec:
        return named_policy(self.policy, self.headroom, seed)


def variants_for(policies: Sequence[str], headrooms: Sequence[float], oracle: bool = False,
                 queues: Sequence[str] = ("fcfs",)) -> list[Variant]:
    """Every baseline once; every SLO-aware policy once per headroom and queue order (and once
    more per headroom with oracle lengths, FCFS)."""
    if not policies:
        raise AladdinError("no placement policy to plan for")
    aware = [p for p in policies if p in NAMED and NAMED[p].takes_headroom]
    if aware and not headrooms:
        raise AladdinError(f"{aware[0]} needs at least one headroom to try")
    out: list[Variant] = []
    for policy in dict.fromkeys(policies):
        if policy in aware:
            out += [Variant(policy, h, queue=q) for q in dict.fromkeys(queues) for h in dict.fromkeys(headrooms)]
            if oracle:
                out += [Variant(policy, h, oracle_lengths=True) for h in dict.fromkeys(headrooms)]
        else:
            out.append(Variant(policy))
    if oracle and not aware:
        raise AladdinError("oracle lengths apply to aladdin; add it to the policies")
    return out


@dataclass(frozen=True)
class WorkerConfig:
    """One worker configuration: an engine's performance model on ``gpus_per_worker`` GPUs."""

    name: str
    perf: PerfModel
    gpus_per_worker: int

    @classmethod
    def from_profile(cls, path: str | Path) -> WorkerConfig:
        from aladdin.plugin.profile.io import load_profile

        perf = load_profile(path)
        return cls(str(path), perf, int(perf.meta["gpus_per_worker"]))


@dataclass(frozen=True)
class PlanConfig:
    """The service target and how hard the searches look."""

    ttft_slo: float  # seconds
    atgt_slo: float  # seconds per token
    attainment: float = 0.99  # share of requests that must meet both SLOs
    num_requests: int = 2000  # per single-worker probe
    check_requests: int | None = None  # per worker's worth of load in a cluster check; None: num_requests
    rate_tolerance: float = 0.02  # the rate search stops when its bracket is this narrow (relative)
    seed: int = 0
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    split_phase: bool = False  # plan a prefill pool and a decode pool instead of colocated workers
    kv_transfer_s_per_token: float = 0.0  # split-phase: KV hand-off time per prompt token

    def validate(self) -> None:
        for name, value in (("--ttft-slo", self.ttft_slo), ("--atgt-slo", self.atgt_slo)):
            if not (math.isfinite(value) and value > 0):
                raise AladdinError(f"{name} must be a positive number of seconds, got {value}")
        if not 0.0 < self.attainment <= 1.0:
            raise AladdinError(f"--attainment must be in (0, 1], got {self.attainment}")
        if self.num_requests < 50:
            raise AladdinError(f"--num-requests must be at least 50 for a meaningful attainment, got {self.num_requests}")
        if self.check_requests is not None and self.check_requests < 10:
            raise AladdinError(f"--check-requests must be at least 10, got {self.check_requests}")
        if not 0.0 < self.rate_tolerance < 1.0:
            raise AladdinError(f"rate tolerance must be in (0, 1), got {self.rate_tolerance}")
        if not (math.isfinite(self.kv_transfer_s_per_token) and self.kv_transfer_s_per_token >= 0):
            raise AladdinError(f"KV transfer time per token must be >= 0 seconds, got {self.kv_transfer_s_per_token}")


# ---------------------------------------------------------------------------------------
# The workload every probe shares


class Workload:
    """Request lengths and one unit-rate Poisson arrival pattern, shared by every probe.

    Request i has the sample's lengths i for i below the sample size; beyond it, lengths are
    drawn from the sample with replacement (seeded), so a run of any size is a prefix of one
    fixed request sequence. A schedule at rate r divides the unit-rate offsets by r.
    """

    def __init__(self, prompt_tokens: Sequence[int], output_tokens: Sequence[int], seed: int = 0):
        self.prompts = np.asarray(prompt_tokens, dtype=np.int64)
        self.outputs = np.asarray(output_tokens, dtype=np.int64)
        if self.prompts.size == 0 or self.prompts.shape != self.outputs.shape:
            raise AladdinError("the workload needs equal, non-empty lists of prompt and output lengths")
        self.seed = seed
        self._picks = np.arange(self.prompts.size)
        self._unit_offsets = np.zeros(0)
        self._last: tuple[float, int, list[ScheduledRequest]] | None = None  # checks of one rate share it

    @classmethod
    def sharegpt(cls, count: int, seed: int = 0, path: str | Path | None = None,
                 tokenizer_dir: str | Path | None = None) -> Workload:
        """``count`` ShareGPT conversations (the simulate command's default length filters),
        counted with the tiny model's tokenizer unless ``tokenizer_dir`` is given."""
        from aladdin.loadgen.datasets import load_tokenizer
        from aladdin.loadgen.schedule import WorkloadConfig, load_specs
        from aladdin.modeldir import default_model_dir

        config = WorkloadConfig(dataset="sharegpt", dataset_path=str(path) if path else None,
                                num_requests=count, seed=seed)
        specs = load_specs(config, load_tokenizer(tokenizer_dir or default_model_dir("tiny")))
        return cls([s.prompt_tokens for s in specs], [s.output_tokens for s in specs], seed)

    def _grow(self, count: int) -> None:
        if count > self._picks.size:
            extra = np.random.default_rng([self.seed, 1]).integers(0, self.prompts.size, count - self.prompts.size)
            self._picks = np.concatenate([np.arange(self.prompts.size), extra])
        if count > self._unit_offsets.size:
            self._unit_offsets = make_offsets("poisson", max(count, 2 * self._unit_offsets.size), rate=1.0,
                                              seed=self.seed)

    def schedule(self, rate: float, count: int) -> list[ScheduledRequest]:
        """The first ``count`` requests of the sequence, Poisson at ``rate`` requests/s."""
        if self._last is not None and self._last[:2] == (rate, count):
            return self._last[2]
        self._grow(count)
        picks = self._picks[:count]
        offsets = (self._unit_offsets[:count] / rate).tolist()
        prompts, outputs = self.prompts[picks].tolist(), self.outputs[picks].tolist()
        schedule = [
            ScheduledRequest(f"r{i}", offsets[i], RequestSpec("", prompts[i], outputs[i], None, None, str(picks[i])))
            for i in range(count)
        ]
        self._last = (rate, count, schedule)
        return schedule


def unloaded_latency(perf: PerfModel, workload: Workload) -> tuple[float, float]:
    """(TTFT, seconds per output token) of the workload's median request alone on an idle worker.

    TTFT is the median prompt's ``PerfModel.ttft_alone`` (front end, then chunks of
    ``max_batched_tokens``); the per-token time is the model's ATGT of that request decoding
    alone (batch 1) to the median output. SLOs are usually set as multiples of these two.
    """
    prompt = int(np.median(workload.prompts))
    output = int(np.median(workload.outputs))
    ttft = float(perf.ttft_alone(prompt))
    per_token = float(perf.decode.predicted_atgt([prompt], [max(output - 1, 1)])[0])
    return ttft, per_token


# ---------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Probe:
    """One simulation: ``workers`` workers (split-phase: decode workers, beside
    ``prefill_workers``) at cluster ``rate``."""

    workers: int
    rate: float
    requests: int
    attainment: float
    workers_used: int
    wall_s: float
    prefill_workers: int = 0
    ttft_attainment: float = math.nan  # share meeting the TTFT SLO alone


@dataclass
class RateSearch:
    """The highest per-worker rate one worker serves at the target, and how it was found."""

    config: str  # WorkerConfig.name
    gpus_per_worker: int
    variant: str  # Variant.single_worker
    rate: float  # per worker, requests/s
    probes: list[Probe]

    @property
    def horizon_s(self) -> float:
        return self.probes[0].requests / self.rate


@dataclass
class SizeCheck:
    """The smallest cluster that met the target at ``rate`` for one (configuration, policy)."""

    config: str
    gpus_per_worker: int
    variant: Variant
    rate: float  # whole cluster, requests/s
    worker_rate: float  # the single-worker rate the estimate came from
    estimate: int  # ceil(rate / worker_rate)
    start: int  # where the size search began
    workers: int | None  # None: not met up to the search limit; split-phase: decode workers
    attainment: float | None  # at ``workers`` (None when not met)
    probes: list[Probe]
    prefill_workers: int = 0  # split-phase: the prefill pool beside ``workers``

    @property
    def gpus(self) -> int | None:
        return None if self.workers is None else (self.workers + self.prefill_workers) * self.gpus_per_worker

    @property
    def shape(self) -> str:
        """The cluster in words, e.g. '3 x G1' or '1 prefill + 3 decode x G1'."""
        if self.workers is None:
            return "-"
        if self.prefill_workers:
            return f"{self.prefill_workers} prefill + {self.workers} decode x G{self.gpus_per_worker}"
        return f"{self.workers} x G{self.gpus_per_worker}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config, "gpus_per_worker": self.gpus_per_worker, "policy": self.variant.policy,
            "family": self.variant.family, "label": self.variant.label, "headroom": self.variant.headroom,
            "oracle_lengths": self.variant.oracle_lengths, "rate": self.rate, "worker_rate": self.worker_rate,
            "estimate": self.estimate, "start": self.start, "workers": self.workers,
            "prefill_workers": self.prefill_workers, "gpus": self.gpus, "attainment": self.attainment,
            "probes": [asdict(p) for p in self.probes],
        }


@dataclass
class Plan:
    """Every check of a planning run, with the best configuration per rate and policy family."""

    config: PlanConfig
    searches: list[RateSearch]
    checks: list[SizeCheck]
    wall_s: float

    @property
    def rates(self) -> list[float]:
        return list(dict.fromkeys(c.rate for c in self.checks))

    def best(self, rate: float) -> dict[str, SizeCheck | None]:
        """Per policy family, the met check with the fewest GPUs (ties: fewer workers, then
        the earlier configuration and headroom); None when no configuration met the target."""
        out: dict[str, SizeCheck | None] = {}
        for check in (c for c in self.checks if c.rate == rate):
            current = out.get(check.variant.family)
            if check.gpus is not None and (current is None or (check.gpus, check.workers) < (current.gpus, current.workers)):
                out[check.variant.family] = check
            else:
                out.setdefault(check.variant.family, None)
        return out

    def to_dict(self) -> dict[str, Any]:
        config = asdict(self.config)
        return {
            "config": config,
            "wall_s": self.wall_s,
            "searches": [
                {"config": s.config, "gpus_per_worker": s.gpus_per_worker, "variant": s.variant, "rate": s.rate,
                 "horizon_s": s.horizon_s, "probes": [asdict(p) for p in s.probes]}
                for s in self.searches
            ],
            "checks": [c.to_dict() for c in self.checks],
            "best": [
                {"rate": rate, "policy": family, **({"config": b.config, "gpus_per_worker": b.gpus_per_worker,
                 "label": b.variant.label, "workers": b.workers, "prefill_workers": b.prefill_workers,
                 "gpus": b.gpus, "attainment": b.attainment}
                 if b else {"gpus": None})}
                for rate in self.rates for family, b in self.best(rate).items()
            ],
        }


# ---------------------------------------------------------------------------------------
# The searches


def search_rate(meets: Callable[[float], bool], guess: float, tolerance: float,
                lowest: float | None = None) -> float:
    """The highest rate with ``meets(rate)``, assuming it holds below some knee and fails above.

    Brackets the knee by doubling (or halving) from ``guess``, then bisects geometrically
    until the bracket is within ``tolerance`` (relative), and returns its lower end. Fails
    when even ``lowest`` (default guess / 1024) does not meet the target, or 1024 x guess still does.
    """
    lowest = guess / 1024 if lowest is None else lowest
    if meets(guess):
        low, high = guess, 2 * guess
        while meets(high):
            if high > 1024 * guess:
                raise AladdinError(
                    f"the target is still met at {high:.3g} requests/s per worker; the SLOs are too loose to plan with"
                )
            low, high = high, 2 * high
    else:
        low, high = guess / 2, guess
        while not meets(low):
            if low < lowest:
                raise AladdinError(
                    f"the target is not met even at {low:.3g} requests/s per worker; the SLOs are probably "
                    "below what one request alone achieves"
                )
            low, high = low / 2, low
    while high / low - 1 > tolerance:
        middle = math.sqrt(low * high)
        if meets(middle):
            low = middle
        else:
            high = middle
    return low


def search_size(meets: Callable[[int], bool], estimate: int, limit: int) -> int | None:
    """The smallest worker count with ``meets(n)``, assuming more workers never hurt.

    Starts at ``estimate``; steps down (or up) by 1, 2, 4, ... until the answer changes,
    then bisects. None when ``limit`` workers still fail.
    """
    estimate = max(1, min(estimate, limit))
    if meets(estimate):
        good, bad, step = estimate, 0, 1
        while good > 1:
            n = max(good - step, 1)
            if not meets(n):
                bad = n
                break
            good, step = n, 2 * step
    else:
        bad, step = estimate, 1
        while True:
            if bad >= limit:
                return None
            n = min(bad + step, limit)
            if meets(n):
                good = n
                break
            bad, step = n, 2 * step
    while good - bad > 1:
        middle = (good + bad) // 2
        if meets(middle):
            good = middle
        else:
            bad = middle
    return good


def cluster_size(rate: float, worker_rate: float) -> int:
    """ceil(rate / worker_rate), at least 1; a ratio within 1e-9 of an integer is that integer."""
    return max(1, math.ceil(rate / worker_rate - 1e-9))


def capacity_guess(perf: PerfModel, workload: Workload, atgt_slo: float) -> float:
    """A rough single-worker rate to start the search from: the decode throughput of the largest
    batch that the KV cache, ``max_num_seqs`` and the ATGT SLO allow, in requests/s."""
    prompt, output = float(workload.prompts.mean()), float(workload.outputs.mean())
    context = prompt + output / 2
    batch = np.arange(1, perf.max_num_seqs + 1)
    step = perf.decode.time(batch, batch * context)
    allowed = (batch * context <= perf.kv.capacity_tokens) & (step <= atgt_slo)
    size = int(batch[allowed][-1]) if allowed.any() else 1
    per_request = output * float(perf.decode.time(size, size * context)) / size
    return 1.0 / (per_request + float(perf.prefill.time_single(prompt)))


class Planner:
    """Searches per-worker rates and cluster sizes with the simulator; caches every search.

    ``log`` receives one line per simulation (the CLI prints them as progress).
    """

    def __init__(self, configs: Sequence[WorkerConfig], variants: Sequence[Variant], config: PlanConfig,
                 workload: Workload, log: Callable[[str], None] | None = None):
        config.validate()
        if not configs:
            raise AladdinError("no worker configuration (profile) to plan for")
        if not variants:
            raise AladdinError("no placement policy to plan for")
        self.configs = list(configs)
        self.variants = list(variants)
        self.config = config
        self.workload = workload
        self.log = log or (lambda line: None)
        self._searches: dict[tuple[str, str], RateSearch] = {}

    def _simulate(self, worker: WorkerConfig, variant: Variant, label: str, workers: int, rate: float,
                  count: int, prefill_workers: int = 0) -> Probe:
        config = self.config
        sim_config = SimConfig(
            num_workers=workers, policy=variant.policy, ttft_slo=config.ttft_slo, atgt_slo=config.atgt_slo,
            oracle_lengths=variant.oracle_lengths, predictor=config.predictor, seed=config.seed,
            gpus_per_worker=worker.gpus_per_worker, prefill_workers=prefill_workers,
            kv_transfer_s_per_token=config.kv_transfer_s_per_token, queue=variant.queue,
        )
        started = time.perf_counter()
        result = simulate(self.workload.schedule(rate, count), worker.perf, sim_config, variant.make(config.seed))
        used = np.unique(result.worker)
        probe = Probe(workers, rate, count, result.attainment(config.ttft_slo, config.atgt_slo),
                      int((used < workers).sum()), time.perf_counter() - started, prefill_workers,
                      float(np.mean(result.ttft <= config.ttft_slo)))
        pools = f"{prefill_workers} prefill + {workers} decode" if prefill_workers else f"{workers}"
        self.log(f"  {worker.name} {label}: {pools} worker(s) "
                 f"at {rate:.4g} req/s, {count} requests -> attainment {probe.attainment:.4f} "
                 f"({probe.workers_used} used, {probe.wall_s:.1f}s)")
        return probe

    def worker_rate(self, worker: WorkerConfig, variant: Variant) -> RateSearch:
        """The highest rate one worker of ``worker`` serves at the target under ``variant``."""
        key = (worker.name, variant.single_worker)
        if key in self._searches:
            return self._searches[key]
        probes: list[Probe] = []

        def meets(rate: float) -> bool:
            probes.append(self._simulate(worker, variant, variant.single_worker, 1, rate, self.config.num_requests))
            return probes[-1].attainment >= self.config.attainment

        guess = capacity_guess(worker.perf, self.workload, self.config.atgt_slo)
        rate = search_rate(meets, guess, self.config.rate_tolerance)
        search = RateSearch(worker.name, worker.gpus_per_worker, variant.single_worker, rate, probes)
        self._searches[key] = search
        return search

    def horizon(self, worker: WorkerConfig) -> float:
        """Simulated seconds of every check on ``worker``: ``check_requests`` requests at the FCFS
        knee (by default the span of the knee probe itself). Every policy and size checked at one
        rate replays the same requests."""
        knee = self.worker_rate(worker, Variant("jsq"))
        return (self.config.check_requests or self.config.num_requests) / knee.rate

    def size(self, worker: WorkerConfig, variant: Variant, rate: float, start: int | None = None,
             prefill_workers: int = 0) -> SizeCheck:
        """The smallest number of ``worker`` workers that meets the target at cluster ``rate``.

        The search starts at ``start`` when given (e.g. extrapolated from a lower rate's
        answer), else at the estimate ceil(rate / single-worker rate). With ``prefill_workers``
        it sizes the decode pool of a split-phase cluster with that prefill pool.
        """
        if not (math.isfinite(rate) and rate > 0):
            raise AladdinError(f"arrival rate must be > 0 requests/s, got {rate}")
        horizon = self.horizon(worker)
        worker_rate = self.worker_rate(worker, variant).rate
        count = max(10, round(rate * horizon))
        estimate = cluster_size(rate, worker_rate)
        start = estimate if start is None else max(1, start)
        probes: dict[int, Probe] = {}
        # aladdin leaves surplus workers idle, and idle workers beyond the first never change its
        # choices: a run on n workers that used u < n is the run on u workers, and on any more.
        shortcut = NAMED[variant.policy].pick == "max" and variant.slo_aware  # packing only: spreading uses every worker

        def run(n: int) -> Probe:
            if n not in probes:
                probes[n] = self._simulate(worker, variant, variant.label, n, rate, count, prefill_workers)
                used = probes[n].workers_used
                if shortcut and used < n:
                    for m in range(used, n):
                        probes.setdefault(m, Probe(m, rate, count, probes[n].attainment, used, 0.0, prefill_workers,
                                                   probes[n].ttft_attainment))
            return probes[n]

        def meets(n: int) -> bool:
            probe = run(n)
            if shortcut and probe.workers_used < n and probe.attainment < self.config.attainment:
                raise _Unmeetable
            return probe.attainment >= self.config.attainment

        try:
            workers = search_size(meets, start, limit=2 * max(estimate, start) + 2)
        except _Unmeetable:
            workers = None
        return SizeCheck(
            worker.name, worker.gpus_per_worker, variant, rate, worker_rate, estimate, start, workers,
            probes[workers].attainment if workers is not None else None,
            [p for _, p in sorted(probes.items()) if p.wall_s > 0], prefill_workers,
        )

    def size_split(self, worker: WorkerConfig, variant: Variant, rate: float, start: int | None = None) -> SizeCheck:
        """The split-phase cluster with the fewest GPUs: a prefill pool and a decode pool of ``worker``.

        Every first token comes from the prefill pool, so TTFT does not depend on the decode
        pool: the prefill pool starts at the smallest size whose TTFT attainment meets the
        target (sized with the decode pool at its estimate). The decode pool is then sized by
        ``size`` for that pool and for one more prefill worker (a faster first token leaves
        the joint target more room); the cheaper cluster wins.
        """
        horizon = self.horizon(worker)
        count = max(10, round(rate * horizon))
        decode_start = start or cluster_size(rate, self.worker_rate(worker, variant).rate)
        tried: dict[int, Probe] = {}

        def prefill_meets(n: int) -> bool:
            if n not in tried:
                tried[n] = self._simulate(worker, variant, variant.label, decode_start, rate, count, prefill_workers=n)
            return tried[n].ttft_attainment >= self.config.attainment

        prompt = float(self.workload.prompts.mean())
        busy = rate * float(worker.perf.prefill.time_single(prompt))  # prefill workers kept busy, on average
        pool = search_size(prefill_meets, max(1, math.ceil(busy)), limit=4 * max(1, math.ceil(busy)) + 4)
        if pool is None:
            return SizeCheck(worker.name, worker.gpus_per_worker, variant, rate, 0.0, decode_start, decode_start,
                             None, None, list(tried.values()), 0)
        candidates = [self.size(worker, variant, rate, decode_start, prefill_workers=n) for n in (pool, pool + 1)]
        met = [c for c in candidates if c.gpus is not None]
        best = min(met, key=lambda c: (c.gpus, c.prefill_workers)) if met else candidates[0]
        best.probes[:0] = list(tried.values())
        return best

    def plan(self, rates: Sequence[float]) -> Plan:
        """Size every (configuration, policy variant) for every rate, lowest rate first.

        From the second rate on, a size search starts at the cluster size extrapolated from
        the previous rate's answer (the same requests/s per worker), which is usually closer
        than the single-worker estimate because larger clusters pool their load.
        """
        started = time.perf_counter()
        for rate in rates:
            if not (math.isfinite(rate) and rate > 0):
                raise AladdinError(f"arrival rate must be > 0 requests/s, got {rate}")
        previous: dict[tuple[str, Variant], tuple[float, int]] = {}
        checks = []
        for rate in sorted(dict.fromkeys(rates)):
            for worker in self.configs:
                for variant in self.variants:
                    before = previous.get((worker.name, variant))
                    start = cluster_size(rate, before[0] / before[1]) if before else None
                    size = self.size_split if self.config.split_phase else self.size
                    check = size(worker, variant, rate, start)
                    if check.workers is not None:
                        previous[(worker.name, variant)] = (rate, check.workers)
                    checks.append(check)
        return Plan(self.config, list(self._searches.values()), checks, time.perf_counter() - started)


class _Unmeetable(Exception):
    """A policy missed the target while leaving workers idle: more workers cannot help."""


# ---------------------------------------------------------------------------------------
# Heartbeat re-planning


@dataclass(frozen=True)
class HeartbeatConfig:
    """How worker counts follow a time-varying rate.

    ``headroom``: plan each heartbeat for rate / (1 - headroom), so the fleet runs below the
    measured per-worker knee and absorbs the rate rising within the interval. A lower count
    is adopted only once it has been wanted for ``scale_down_after`` heartbeats in a row
    (the count is the maximum wanted over that window); scaling up is immediate.
    """

    interval_s: float = 60.0
    headroom: float = 0.1
    scale_down_after: int = 3
    min_workers: int = 1

    def validate(self) -> None:
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise AladdinError(f"--interval must be > 0 seconds, got {self.interval_s}")
        if not 0.0 <= self.headroom < 1.0:
            raise AladdinError(f"--scale-headroom must be in [0, 1), got {self.headroom}")
        if self.scale_down_after < 1:
            raise AladdinError(f"--scale-down-after must be at least 1 heartbeat, got {self.scale_down_after}")
        if self.min_workers < 0:
            raise AladdinError(f"--min-workers must be >= 0, got {self.min_workers}")


@dataclass(frozen=True)
class Heartbeat:
    time_s: float
    rate: float  # requests/s planned for the interval starting at time_s
    wanted: int  # workers this rate alone asks for
    workers: int  # after hysteresis: what the autoscaler should run
    gpus: int


def step_rates(times: Sequence[float], rates: Sequence[float], interval_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Heartbeat times and rates of a step function (rate ``rates[i]`` from ``times[i]`` on).

    A heartbeat plans for the highest rate during its interval, so a step up between two
    heartbeats is provisioned at the earlier one. Heartbeats run from the first time to the last.
    """
    times_a, rates_a = np.asarray(times, dtype=float), np.asarray(rates, dtype=float)
    if times_a.size == 0:
        raise AladdinError("the rate file has no rows")
    if not np.isfinite(times_a).all() or (np.diff(times_a) <= 0).any():
        raise AladdinError("rate file times must be finite and strictly increasing")
    if not np.isfinite(rates_a).all() or (rates_a < 0).any():
        raise AladdinError("rate file rates must be finite and >= 0")
    beats = times_a[0] + interval_s * np.arange(max(1, math.ceil((times_a[-1] - times_a[0]) / interval_s) + 1))
    first = np.searchsorted(times_a, beats, side="right") - 1  # the step in force at each heartbeat
    last = np.searchsorted(times_a, beats + interval_s, side="left") - 1  # the last step starting before the next
    peak = np.array([rates_a[a : b + 1].max() for a, b in zip(first, np.maximum(first, last))])
    return beats, peak


def binned_rates(arrivals: Sequence[float], interval_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Heartbeat times and rates of a trace: arrivals counted per interval, divided by its length."""
    offsets = np.asarray(arrivals, dtype=float)
    if offsets.size == 0:
        raise AladdinError("the trace has no requests")
    bins = max(1, math.ceil(float(offsets.max()) / interval_s + 1e-12))
    counts = np.bincount(np.minimum((offsets // interval_s).astype(np.int64), bins - 1), minlength=bins)
    return interval_s * np.arange(bins), counts / interval_s


def heartbeat_plan(times: Sequence[float], rates: Sequence[float], worker_rate: float, gpus_per_worker: int,
                   config: HeartbeatConfig) -> list[Heartbeat]:
    """The worker count per heartbeat for a per-worker knee of ``worker_rate`` requests/s."""
    config.validate()
    if not worker_rate > 0:
        raise AladdinError(f"per-worker rate must be > 0, got {worker_rate}")
    rates_a = np.asarray(rates, dtype=float)
    wanted = np.maximum(np.ceil(rates_a / (worker_rate * (1.0 - config.headroom)) - 1e-9), config.min_workers)
    wanted = wanted.astype(np.int64)  # a zero rate wants min_workers
    window = config.scale_down_after
    out = []
    for i, (t, rate) in enumerate(zip(np.asarray(times, dtype=float).tolist(), rates_a.tolist())):
        workers = int(wanted[max(0, i - window + 1) : i + 1].max())
        out.append(Heartbeat(t, rate, int(wanted[i]), workers, workers * gpus_per_worker))
    return out
