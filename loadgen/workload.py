"""What a replay sends and when, as plain data: the workload's names, defaults and checks.

Kept free of numpy, pandas and gevent: the CLI takes its choices and defaults from here, and
``aladdin --help`` must not pay for importing them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aladdin.errors import AladdinError

DATASETS = ("sharegpt", "synthetic", "trace")
ARRIVAL_KINDS = ("poisson", "gamma", "constant", "trace")
DEFAULT_REQUESTS = 100  # of a dataset other than a trace
DEFAULT_RATE = 1.0  # requests/s of an arrival process other than the trace's timestamps


@dataclass(frozen=True)
class LengthLimits:
    """Token-length filters for sampled requests (inclusive)."""

    min_prompt_tokens: int = 4
    max_prompt_tokens: int = 1024
    min_output_tokens: int = 4
    max_output_tokens: int = 1024
    max_total_tokens: int = 2048

    def admits(self, prompt_tokens: int, output_tokens: int) -> bool:
        return (
            self.min_prompt_tokens <= prompt_tokens <= self.max_prompt_tokens
            and self.min_output_tokens <= output_tokens <= self.max_output_tokens
            and prompt_tokens + output_tokens <= self.max_total_tokens
        )


@dataclass
class WorkloadConfig:
    """What to send and when. Everything needed to rebuild the exact same schedule."""

    dataset: str = "sharegpt"
    dataset_path: str | None = None  # ShareGPT-format file or trace file; default: packaged ShareGPT
    # None takes the dataset's default (__post_init__): a trace keeps all its requests and its
    # own timestamps; other datasets draw DEFAULT_REQUESTS at DEFAULT_RATE, Poisson.
    num_requests: int | None = None  # None after __post_init__: the whole trace
    arrival: str | None = None
    rate: float | None = None  # requests/s (None after __post_init__ for arrival=trace: not used)
    cv: float = 1.0  # gamma burstiness: coefficient of variation of inter-arrival times
    seed: int = 0
    time_scale: float = 1.0  # trace timestamps are multiplied by this
    min_prompt_tokens: int = LengthLimits.min_prompt_tokens
    max_prompt_tokens: int = LengthLimits.max_prompt_tokens
    min_output_tokens: int = LengthLimits.min_output_tokens
    max_output_tokens: int = LengthLimits.max_output_tokens
    max_total_tokens: int = LengthLimits.max_total_tokens
    prompt_tokens: tuple[int, int] = (128, 128)  # synthetic: (lo, hi) uniform, lo == hi fixed
    output_tokens: tuple[int, int] = (128, 128)
    tokenizer: str | None = None  # model folder whose tokenizer counts tokens; default: the tiny model
    slo_tiers: str | None = None  # --slo-tiers spec (loadgen.slo); None: no per-request SLOs
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        trace = self.dataset == "trace"
        if self.num_requests is None and not trace:
            self.num_requests = DEFAULT_REQUESTS
        if self.arrival is None:
            self.arrival = "trace" if trace else "poisson"
        if self.rate is None and self.arrival != "trace":
            self.rate = DEFAULT_RATE

    @classmethod
    def from_jsonable(cls, data: dict) -> WorkloadConfig:
        """The config back from ``asdict`` after a JSON round trip (run.json, the Locust child's flag)."""
        return cls(**{**data, "prompt_tokens": tuple(data["prompt_tokens"]), "output_tokens": tuple(data["output_tokens"])})

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise AladdinError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.arrival not in ARRIVAL_KINDS:
            raise AladdinError(f"unknown arrival process {self.arrival!r}; choose one of {', '.join(ARRIVAL_KINDS)}")
        if self.num_requests is not None and self.num_requests < 1:
            raise AladdinError(f"--num-requests must be at least 1, got {self.num_requests}")
        if self.arrival != "trace" and (self.rate is None or not self.rate > 0):
            raise AladdinError(f"--rate must be > 0 requests/s, got {self.rate}")
        if self.arrival == "gamma" and not self.cv > 0:
            raise AladdinError(f"--cv must be > 0, got {self.cv}")
        if self.arrival == "trace" and self.dataset != "trace":
            raise AladdinError("--arrival trace needs --dataset trace (timestamps come from the trace file)")
        if self.dataset == "trace" and not self.dataset_path:
            raise AladdinError("--dataset trace needs --dataset-path FILE")
        if not self.time_scale > 0:
            raise AladdinError(f"--time-scale must be > 0, got {self.time_scale}")
        if self.slo_tiers is not None:
            from aladdin.loadgen.slo import parse_slo_tiers

            parse_slo_tiers(self.slo_tiers)
