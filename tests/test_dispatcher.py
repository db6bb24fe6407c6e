"""The dispatcher's own bookkeeping, with a stand-in client: the point is what it keeps, not HTTP."""

from __future__ import annotations

import gc
import time
import weakref

import gevent

from aladdin.loadgen.client import RunClock
from aladdin.loadgen.datasets import RequestSpec
from aladdin.loadgen.dispatcher import Dispatcher
from aladdin.loadgen.records import RequestRecord
from aladdin.loadgen.schedule import ScheduledRequest

N_REQUESTS = 500


class InstantClient:
    """Answers each request at once with a record of 300 chunks, as StreamingClient.run does."""

    def __init__(self, clock: RunClock):
        self.clock = clock
        self.live: weakref.WeakValueDictionary[str, RequestRecord] = weakref.WeakValueDictionary()

    def run(self, request_id, prompt, prompt_token_ids, output_tokens, scheduled, expected_prompt_tokens, on_done):
        now = self.clock.now()
        rec = RequestRecord(id=request_id, scheduled=scheduled, requested_output_tokens=output_tokens, dispatched=now,
                            chunk_times=[now] * 300, chunk_tokens=[1] * 300, done=now)
        self.live[request_id] = rec
        on_done(rec)
        return rec


def test_finished_records_are_not_retained():
    clock = RunClock(time.time())
    client = InstantClient(clock)
    spec = RequestSpec("hi", 1, 300, None, None, "s")
    schedule = [ScheduledRequest(f"r{i:03d}", i * 1e-4, spec) for i in range(N_REQUESTS)]
    finished: set[str] = set()
    dispatched: list[float] = []
    retained_mid_run: list[str] = []

    def sink(rec: RequestRecord) -> None:
        if rec.id == schedule[-1].id:
            gevent.idle()  # every other request has finished and its greenlet has been let go
            gc.collect()
            retained_mid_run.extend(i for i in client.live if i in finished)
        finished.add(rec.id)
        dispatched.append(rec.dispatched)

    dispatcher = Dispatcher(client, clock, sink)
    stats = dispatcher.run(schedule)
    gc.collect()
    assert retained_mid_run == []
    assert len(client.live) == 0  # the dispatcher is still alive: it holds none of them
    assert len(finished) == len(stats.dispatch_lags) == N_REQUESTS
    assert (stats.first_dispatch, stats.last_dispatch) == (min(dispatched), max(dispatched))
