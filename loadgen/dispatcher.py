"""Open-loop dispatch: sleep to each absolute target, then spawn one greenlet per request.

Targets are absolute offsets on the run clock, never relative intervals, so a late wake-up
never shifts later requests. Nothing caps concurrency: a slow server gets more requests in
flight, exactly as real users would give it. The dispatcher also measures its own honesty:
dispatch lag (dispatched - scheduled) and event-loop lag (a canary that wakes every 10 ms).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import gevent
import numpy as np
from gevent.pool import Group

from aladdin.loadgen.client import RunClock, StreamingClient
from aladdin.loadgen.records import RequestRecord
from aladdin.loadgen.schedule import ScheduledRequest

CANARY_PERIOD_S = 0.010


@dataclass
class DispatchStats:
    """What one dispatcher saw of its own timing."""

    dispatch_lags: list[float] = field(default_factory=list)
    loop_lags: list[float] = field(default_factory=list)
    first_dispatch: float | None = None
    last_dispatch: float | None = None

    def to_jsonable(self) -> dict:
        return {
            "dispatch_lags": self.dispatch_lags,
            "loop_lags": self.loop_lags,
            "first_dispatch": self.first_dispatch,
            "last_dispatch": self.last_dispatch,
        }

    @classmethod
    def merge(cls, parts: list["DispatchStats"]) -> "DispatchStats":
        firsts = [p.first_dispatch for p in parts if p.first_dispatch is not None]
        lasts = [p.last_dispatch for p in parts if p.last_dispatch is not None]
        return cls(
            dispatch_lags=[x for p in parts for x in p.dispatch_lags],
            loop_lags=[x for p in parts for x in p.loop_lags],
            first_dispatch=min(firsts) if firsts else None,
            last_dispatch=max(lasts) if lasts else None,
        )


def percentiles_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    arr = np.asarray(values) * 1e3
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "max_ms": float(arr.max()),
    }


class Dispatcher:
    """Replays one shard of the schedule through one client."""

    def __init__(self, client: StreamingClient, clock: RunClock, sink: Callable[[RequestRecord], None]):
        self.client = client
        self.clock = clock
        self.sink = sink
        self.stats = DispatchStats()
        # A group forgets each greenlet when it finishes, and with it the record it returned:
        # only requests in flight are held, however long the replay.
        self._in_flight = Group()

    def _record(self, rec: RequestRecord) -> None:
        stats = self.stats
        stats.dispatch_lags.append(rec.dispatched - rec.scheduled)
        if stats.first_dispatch is None or rec.dispatched < stats.first_dispatch:
            stats.first_dispatch = rec.dispatched
        if stats.last_dispatch is None or rec.dispatched > stats.last_dispatch:
            stats.last_dispatch = rec.dispatched
        self.sink(rec)

    def _canary(self) -> None:
        """Sample event-loop lag from the run start on (the lead time before it is not the replay)."""
        start = -self.clock.now()
        if start > 0:
            gevent.sleep(start)
        while True:
            target = self.clock.now() + CANARY_PERIOD_S
            gevent.sleep(CANARY_PERIOD_S)
            self.stats.loop_lags.append(max(0.0, self.clock.now() - target))

    def run(self, shard: list[ScheduledRequest]) -> DispatchStats:
        """Dispatch every request at its offset and return when all have finished."""
        canary = gevent.spawn(self._canary)
        try:
            for item in shard:
                delay = item.offset - self.clock.now()
                if delay > 0:
                    gevent.sleep(delay)
                spec = item.spec
                slos = {} if item.slo_tier is None and item.ttft_slo is None and item.atgt_slo is None else {
                    "slo_tier": item.slo_tier, "ttft_slo": item.ttft_slo, "atgt_slo": item.atgt_slo}
                self._in_flight.spawn(
                    self.client.run,
                    item.id,
                    spec.prompt,
                    spec.prompt_token_ids,
                    spec.output_tokens,
                    item.offset,
                    spec.prompt_tokens,
                    self._record,
                    **slos,
                )
            self._in_flight.join()
        finally:
            canary.kill()
        return self.stats

    def stop(self) -> None:
        """Abandon in-flight requests (a stopped run); finished records are already written."""
        self._in_flight.kill(block=False)
