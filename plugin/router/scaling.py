"""``aladdin_desired_workers``: how many workers this router's load asks for (for HPA/KEDA).

Two sources, chosen by configuration:

- **The planner** (``--worker-rate R``, one worker's knee from ``aladdin plan``): arrivals are
  counted per ``interval_s`` and the planner's own heartbeat rule
  (``aladdin.plugin.plan.planner.heartbeat_plan``: ceil(rate / (R * (1 - headroom))), scale down
  only after ``scale_down_after`` heartbeats) turns the recent rates into a count.
- **The core's view** (default): the predicted fill of every worker in its binding dimension
  (max of predicted peak KV / capacity and worst predicted ATGT / SLO) plus the KV the queued
  requests would need, divided by ``target_fill``, rounded up.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from aladdin.plugin.router.config import ScalingConfig
from aladdin.plugin.router.placement import Placer


class DesiredWorkers:
    """Counts arrivals and answers the desired worker count at each scrape (see the module docstring)."""

    def __init__(self, config: ScalingConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self._start = clock()
        self._counts: deque[tuple[int, int]] = deque(maxlen=config.scale_down_after + 1)  # (interval index, arrivals)
        self.source = "planner" if config.worker_rate is not None else "core"

    def arrived(self) -> None:
        index = int((self.clock() - self._start) // self.config.interval_s)
        if self._counts and self._counts[-1][0] == index:
            self._counts[-1] = (index, self._counts[-1][1] + 1)
        else:
            self._counts.append((index, 1))

    def rates(self) -> tuple[list[float], list[float]]:
        """Heartbeat times and rates of the recent intervals (the current one so far)."""
        cfg = self.config
        now = self.clock() - self._start
        current = int(now // cfg.interval_s)
        counts = dict(self._counts)
        first = max(0, current - cfg.scale_down_after)
        times, rates = [], []
        for index in range(first, current + 1):
            span = cfg.interval_s if index < current else max(now - index * cfg.interval_s, min(1.0, cfg.interval_s))
            times.append(index * cfg.interval_s)
            rates.append(counts.get(index, 0) / span)
        return times, rates

    def compute(self, placer: Placer, workers_up: int) -> int:
        cfg = self.config
        if cfg.worker_rate is not None:
            from aladdin.plugin.plan.planner import HeartbeatConfig, heartbeat_plan

            times, rates = self.rates()
            beats = heartbeat_plan(times, rates, cfg.worker_rate, 1,
                                   HeartbeatConfig(cfg.interval_s, cfg.headroom, cfg.scale_down_after, cfg.min_workers))
            return beats[-1].workers
        demand = placer.scheduler.demand(placer.clock())
        if demand <= 0:
            return cfg.min_workers
        return max(cfg.min_workers, math.ceil(demand / cfg.target_fill - 1e-9))
