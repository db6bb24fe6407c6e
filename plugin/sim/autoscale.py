"""Autoscaling in the simulator: a heartbeat planner that starts, drains and releases workers.

Every ``interval_s`` the autoscaler sets a worker count by one of the router's two sources
(``aladdin_desired_workers``, plugin/router/scaling.py), both through the planner's heartbeat
rule (``aladdin.plugin.plan.planner.heartbeat_plan``: a lower count only after
``scale_down_after`` heartbeats):

- ``planner``: the arrivals of the last intervals, ceil(rate / (worker_rate * (1 - headroom))).
  The count depends on the arrivals alone, so every placement policy gets the same decisions;
  what differs is which worker a scale-down drains and how long it takes to empty.
- ``core``: the core's view, the predicted fill of every worker in its binding dimension plus
  the KV the queued requests need, over ``target_fill`` (the rule with headroom 1 - target_fill
  on a "rate" of that demand). It depends on where the policy put the load.

- Scaling up un-drains draining workers first (they are held and warm), then requests new ones:
  a new worker is held (its GPU-hours count) from the request on and takes placements only
  ``startup_s`` later.
- Scaling down cancels starting workers first (newest first), then drains the up workers with
  the least outstanding work by the core's view (``drain_order``): no new placements, its
  requests finish, and it is released (GPU-hours stop) once empty.

Pure: the simulator reports arrivals, worker work and emptiness, and carries out the changes.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from aladdin.errors import AladdinError

if TYPE_CHECKING:
    from aladdin.plugin.plan.planner import HeartbeatConfig

OFF, STARTING, UP, DRAINING = "off", "starting", "up", "draining"
SOURCES = ("planner", "core")


@dataclass(frozen=True)
class AutoscaleConfig:
    """The heartbeat rule's inputs, the start-up delay, and the cluster at time 0 (up, warm)."""

    worker_rate: float  # one worker's knee, requests/s (the planner's)
    heartbeat: HeartbeatConfig
    startup_s: float = 45.0  # from the request for a worker to its first placement
    initial_workers: int = 1
    source: str = "planner"  # or "core" (see the module docstring)
    target_fill: float = 0.8  # core: the fill the workers should run at

    def validate(self, max_workers: int) -> None:
        self.heartbeat.validate()
        if not (math.isfinite(self.worker_rate) and self.worker_rate > 0):
            raise AladdinError(f"autoscaler worker rate must be > 0 requests/s, got {self.worker_rate}")
        if not (math.isfinite(self.startup_s) and self.startup_s >= 0):
            raise AladdinError(f"worker start-up delay must be >= 0 seconds, got {self.startup_s}")
        if self.heartbeat.min_workers < 1:
            raise AladdinError(f"the simulated autoscaler keeps at least 1 worker, got min {self.heartbeat.min_workers}")
        if self.source not in SOURCES:
            raise AladdinError(f"autoscaler source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if not 0.0 < self.target_fill <= 1.0:
            raise AladdinError(f"autoscaler target fill must be in (0, 1], got {self.target_fill}")
        if not 1 <= self.initial_workers <= max_workers:
            raise AladdinError(f"initial workers must be in [1, {max_workers}], got {self.initial_workers}")


@dataclass(frozen=True)
class Change:
    """One worker's state change at ``time_s``."""

    time_s: float
    worker: int
    state: str  # the new state: starting, up, draining, off


@dataclass
class ScalingLog:
    """What the autoscaler did: heartbeats (time, desired), state changes, held time per worker."""

    gpus_per_worker: int
    end_s: float = 0.0
    beats: list[tuple[float, int]] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    held_s: dict[int, float] = field(default_factory=dict)  # per worker, summed over its holds
    capped: int = 0  # heartbeats that wanted more workers than the pool has

    @property
    def gpu_hours(self) -> float:
        return sum(self.held_s.values()) * self.gpus_per_worker / 3600.0

    def held_over_time(self) -> list[tuple[float, int, int]]:
        """(time, workers held, workers up) after each change."""
        held: set[int] = set()
        up: set[int] = set()
        out = []
        for c in self.changes:
            (held.discard if c.state == OFF else held.add)(c.worker)
            (up.add if c.state == UP else up.discard)(c.worker)
            out.append((c.time_s, len(held), len(up)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"gpu_hours": self.gpu_hours, "end_s": self.end_s, "capped_heartbeats": self.capped,
                "beats": [list(b) for b in self.beats], "workers_over_time": [list(x) for x in self.held_over_time()]}


def drain_order(work: Mapping[int, float]) -> list[int]:
    """Workers to drain first: least outstanding work, then the newest (highest index)."""
    return sorted(work, key=lambda w: (work[w], -w))


class Autoscaler:
    """The state of ``max_workers`` worker slots under one AutoscaleConfig (see the module docstring).

    ``arrivals``: every request's arrival time, sorted; a heartbeat reads only those before it.
    """

    def __init__(self, config: AutoscaleConfig, max_workers: int, gpus_per_worker: int, arrivals: Sequence[float]):
        config.validate(max_workers)
        self.config = config
        self.arrivals = arrivals
        self.state = [UP if i < config.initial_workers else OFF for i in range(max_workers)]
        self.ready_at: dict[int, float] = {}  # starting workers: when they take placements
        self._since: dict[int, float] = {i: 0.0 for i in range(config.initial_workers)}  # held workers: since when
        self.log = ScalingLog(gpus_per_worker)
        self.log.changes += [Change(0.0, i, UP) for i in range(config.initial_workers)]
        self.next_beat = config.heartbeat.interval_s
        self._demands: list[float] = []  # core: the demand at each heartbeat so far

    @property
    def next_time(self) -> float:
        """The next heartbeat or start-up completion."""
        return min(self.next_beat, min(self.ready_at.values(), default=math.inf))

    def up(self, worker: int) -> bool:
        return self.state[worker] == UP

    def _set(self, now: float, worker: int, state: str) -> None:
        if state == OFF:
            self.log.held_s[worker] = self.log.held_s.get(worker, 0.0) + now - self._since.pop(worker)
            self.ready_at.pop(worker, None)
        elif self.state[worker] == OFF:
            self._since[worker] = now
        self.state[worker] = state
        self.log.changes.append(Change(now, worker, state))

    def desired(self, now: float, demand: float = 0.0) -> int:
        """The heartbeat rule at ``now``: over the arrivals of the last intervals (planner), or
        over the core's ``demand`` (in workers at full fill) at the last heartbeats (core)."""
        from aladdin.plugin.plan.planner import heartbeat_plan

        hb = self.config.heartbeat
        if self.config.source == "core":
            self._demands.append(demand)
            recent = self._demands[-hb.scale_down_after:]
            fill = replace(hb, headroom=1.0 - self.config.target_fill)
            return heartbeat_plan(range(len(recent)), recent, 1.0, 1, fill)[-1].workers
        current = round(now / hb.interval_s)  # intervals ended by this heartbeat
        first = max(0, current - hb.scale_down_after)
        times, rates = [], []
        for index in range(first, current):
            start, end = index * hb.interval_s, (index + 1) * hb.interval_s
            count = bisect.bisect_left(self.arrivals, end) - bisect.bisect_left(self.arrivals, start)
            times.append(start)
            rates.append(count / hb.interval_s)
        return heartbeat_plan(times, rates, self.config.worker_rate, 1, hb)[-1].workers

    def advance(self, now: float, work: Mapping[int, float], demand: float = 0.0) -> list[Change]:
        """Carry out what is due at ``now`` (``work``: outstanding work of each up worker, the
        core's view; ``demand``: the core source's fill demand); returns the changes, in order."""
        before = len(self.log.changes)
        for worker, ready in sorted(self.ready_at.items()):
            if ready <= now:
                del self.ready_at[worker]
                self._set(ready, worker, UP)
        if self.next_beat <= now:
            self._beat(self.next_beat, work, demand)
            self.next_beat += self.config.heartbeat.interval_s
        return self.log.changes[before:]

    def _beat(self, now: float, work: Mapping[int, float], demand: float) -> None:
        want = self.desired(now, demand)
        self.log.beats.append((now, want))
        if want > len(self.state):
            self.log.capped += 1
            want = len(self.state)
        starting = sorted(self.ready_at, key=lambda w: (self.ready_at[w], w))
        active = [w for w, s in enumerate(self.state) if s == UP] + starting
        if want > len(active):
            more = want - len(active)
            draining = [w for w, s in enumerate(self.state) if s == DRAINING]
            for worker in sorted(draining, key=lambda w: -work.get(w, 0.0))[:more]:
                self._set(now, worker, UP)
                more -= 1
            for worker in [w for w, s in enumerate(self.state) if s == OFF][:more]:
                self._set(now, worker, STARTING)
                self.ready_at[worker] = now + self.config.startup_s
        elif want < len(active):
            fewer = len(active) - want
            for worker in starting[::-1][:fewer]:
                self._set(now, worker, OFF)
                fewer -= 1
            up = {w: work.get(w, 0.0) for w, s in enumerate(self.state) if s == UP}
            for worker in drain_order(up)[:fewer]:
                self._set(now, worker, DRAINING)

    def empty(self, now: float, worker: int) -> bool:
        """A draining worker ran out of requests: it is released. Whether it was."""
        if self.state[worker] != DRAINING:
            return False
        self._set(now, worker, OFF)
        return True

    def close(self, end_s: float) -> ScalingLog:
        """The run ended at ``end_s``: every worker still held is held until then."""
        for worker in list(self._since):
            self.log.held_s[worker] = self.log.held_s.get(worker, 0.0) + max(end_s - self._since.pop(worker), 0.0)
        self.log.end_s = end_s
        return self.log
