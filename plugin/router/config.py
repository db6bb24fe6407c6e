"""The router's configuration, in typed frozen dataclasses checked once at start-up.

Kept apart from the CLI so tests and embedders build a router from the same objects the
command line fills in, and every bad value fails with one AladdinError line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aladdin.errors import AladdinError
from aladdin.plugin.core.predictor import RESERVATION_QUANTILE

LOST_TTFT_RULES = ("shed", "best-effort")
LENGTH_PREDICTORS = ("bucket", "text")  # the core's bucket statistic, or aladdin.plugin.predict.text


@dataclass(frozen=True)
class Timeouts:
    """Every wait the router makes is bounded (seconds), so no request hangs.

    ``connect``: opening a connection to a worker; ``first_token``: from sending a request to a
    worker to its response head and first stream event (a non-streaming one: its whole body,
    ``request`` at most); ``read``: between two stream events; ``queue``: waiting in the central
    queue for a worker (then 429); ``health``: one health or state poll.
    """

    connect: float = 5.0
    first_token: float = 300.0
    read: float = 60.0
    request: float = 600.0
    queue: float = 60.0
    health: float = 2.0

    def validate(self) -> None:
        for name in ("connect", "first_token", "read", "request", "queue", "health"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise AladdinError(f"timeout {name} must be > 0 seconds, got {value}")


@dataclass(frozen=True)
class ScalingConfig:
    """How ``aladdin_desired_workers`` is computed (see ``scaling``).

    ``worker_rate``: one worker's sustainable request rate at the SLOs (the knee ``aladdin plan``
    reports); given, the planner's heartbeat rule sizes the fleet from the measured arrival rate.
    Without it the core's own view is used: the predicted fill of every worker plus the queued
    demand, over ``target_fill``.
    """

    worker_rate: float | None = None
    interval_s: float = 60.0
    headroom: float = 0.1
    scale_down_after: int = 3
    min_workers: int = 1
    target_fill: float = 0.8

    def validate(self) -> None:
        if self.worker_rate is not None and not (math.isfinite(self.worker_rate) and self.worker_rate > 0):
            raise AladdinError(f"--worker-rate must be > 0 requests/s, got {self.worker_rate}")
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise AladdinError(f"--scale-interval must be > 0 seconds, got {self.interval_s}")
        if not 0.0 <= self.headroom < 1.0:
            raise AladdinError(f"--scale-headroom must be in [0, 1), got {self.headroom}")
        if self.scale_down_after < 1 or self.min_workers < 0:
            raise AladdinError("--scale-down-after must be >= 1 and --min-workers >= 0")
        if not 0.0 < self.target_fill <= 1.0:
            raise AladdinError(f"target fill must be in (0, 1], got {self.target_fill}")


@dataclass(frozen=True)
class RouterConfig:
    """What one router process serves and how. SLOs are seconds (inf: none); sizes are tokens."""

    workers: tuple[str, ...]
    policy: str = "aladdin"
    profile: str | None = None
    headroom: float | None = None  # of the policy's KV and ATGT filters
    length_quantile: float | None = RESERVATION_QUANTILE  # of past output lengths predicted; None: the mean
    length_predictor: str = "bucket"  # "bucket": from the prompt's length; "text": from its words (predict extra)
    ttft_slo: float = math.inf
    atgt_slo: float = math.inf
    host: str = "127.0.0.1"
    port: int = 8080
    max_queue: int = 256
    max_attempts: int = 3  # workers tried per request (hand-backs and failures before the first byte)
    lost_ttft: str = "shed"  # a queued request whose TTFT is lost: 429 (shed) or placed best-effort
    queue_order: str = "fcfs"
    api_key: str | None = None
    worker_api_key: str | None = None
    max_body_bytes: int = 4 * 2**20
    health_interval_s: float = 1.0
    unhealthy_after: int = 2  # failed health checks in a row before a worker leaves the pool
    state_interval_s: float = 0.25
    tick_s: float = 0.05
    retry_after_s: int = 1
    startup_timeout_s: float = 30.0
    timeouts: Timeouts = field(default_factory=Timeouts)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)

    def validate(self) -> None:
        if not self.workers:
            raise AladdinError("the router needs at least one --worker URL")
        for url in self.workers:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise AladdinError(f"--worker {url!r} is not an http(s)://host:port URL")
        ids = [worker_id(url) for url in self.workers]
        if len(set(ids)) != len(ids):
            raise AladdinError(f"--worker URLs must name distinct servers, got {list(self.workers)}")
        for name in ("ttft_slo", "atgt_slo"):
            if not getattr(self, name) > 0:
                raise AladdinError(f"--{name.replace('_', '-')} must be > 0 seconds, got {getattr(self, name)}")
        if self.length_quantile is not None and not 0.0 < self.length_quantile < 1.0:
            raise AladdinError(f"--length-quantile must be in (0, 1) or 'mean', got {self.length_quantile}")
        if self.length_predictor not in LENGTH_PREDICTORS:
            raise AladdinError(f"--length-predictor must be one of {', '.join(LENGTH_PREDICTORS)}, "
                               f"got {self.length_predictor!r}")
        if self.max_queue < 0 or self.max_attempts < 1 or self.unhealthy_after < 1:
            raise AladdinError("--max-queue must be >= 0, --max-attempts >= 1 and unhealthy-after >= 1")
        if self.lost_ttft not in LOST_TTFT_RULES:
            raise AladdinError(f"--lost-ttft must be one of {', '.join(LOST_TTFT_RULES)}, got {self.lost_ttft!r}")
        if self.max_body_bytes < 1024:
            raise AladdinError(f"--max-body-bytes must be at least 1024, got {self.max_body_bytes}")
        for name in ("health_interval_s", "state_interval_s", "tick_s", "startup_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise AladdinError(f"{name} must be > 0 seconds, got {value}")
        if not 0 < self.port < 65536:
            raise AladdinError(f"--port must be in 1..65535, got {self.port}")
        if self.api_key is not None and not self.api_key:
            raise AladdinError("--api-key must not be empty")
        self.timeouts.validate()
        self.scaling.validate()


def worker_id(url: str) -> str:
    """A worker's name in headers, metrics and state: its host:port."""
    return urlsplit(url).netloc
