"""The ``aladdin:*`` Prometheus series on vLLM's own ``/metrics``, set from the engine's
AladdinScheduler state each time ``/metrics`` is scraped (the state is at most
``frontend.FRESH_S`` old). Registered in the API server process, in prometheus_client's default
registry, which is the one vLLM serves (one API server; with ``--api-server-count`` > 1 the
totals are counted once per API server: read them from ``GET /aladdin/state`` there)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge

MODE = "mostrecent"  # under PROMETHEUS_MULTIPROC_DIR: the latest value any API server set

GAUGES = {  # state key -> gauge
    "capacity_tokens": Gauge("aladdin:kv_capacity_tokens", "KV cache tokens the scheduler may allocate",
                             multiprocess_mode=MODE),
    "kv_held_tokens": Gauge("aladdin:kv_held_tokens", "KV tokens in use now (whole blocks)", multiprocess_mode=MODE),
    "kv_reserved_tokens": Gauge("aladdin:kv_reserved_tokens",
                                "Predicted peak KV of every admitted request, each at its predicted length",
                                multiprocess_mode=MODE),
    "kv_headroom_tokens": Gauge("aladdin:kv_headroom_tokens",
                                "KV tokens still free for admissions: capacity less the headroom share, less the "
                                "reservations (negative when requests outgrew their predictions)",
                                multiprocess_mode=MODE),
    "decode_scale": Gauge("aladdin:decode_time_scale",
                          "Measured / profiled decode step time, by which the profile's decode model is scaled",
                          multiprocess_mode=MODE),
    "predicted_atgt_max_s": Gauge("aladdin:predicted_atgt_seconds",
                                  "Highest predicted ATGT among the decoding requests (0 without a profile)",
                                  multiprocess_mode=MODE),
}
HELD = Gauge("aladdin:admission_held", "Requests held back: not yet admitted to vLLM's queue", multiprocess_mode=MODE)
RUNNING = Gauge("aladdin:requests_running", "Admitted requests vLLM is running", multiprocess_mode=MODE)
WAITING = Gauge("aladdin:requests_waiting", "Admitted requests in vLLM's waiting queue", multiprocess_mode=MODE)
AGE = Gauge("aladdin:state_age_seconds", "How old the scheduler state behind these series was when scraped",
            multiprocess_mode=MODE)
TOTALS = {  # state key -> counter (exported with the suffix _total)
    "rejected_total": Counter("aladdin:rejected", "Requests refused at once: they can never fit this worker"),
    "handed_back_total": Counter("aladdin:handed_back",
                                 "Held requests handed back before their first token: TTFT lost on this worker"),
}
_counted: dict[str, float] = {}  # the totals as last exported (the engine keeps the totals)


def export(state: dict[str, Any], read_at: float) -> None:
    """Set every series from one state read at ``read_at`` (time.monotonic)."""
    for key, gauge in GAUGES.items():
        gauge.set(state[key])
    HELD.set(len(state["held"]))
    RUNNING.set(len(state["running"]))
    WAITING.set(len(state["waiting"]))
    AGE.set(time.monotonic() - read_at)
    for key, counter in TOTALS.items():
        total = float(state[key])
        if total > _counted.get(key, 0.0):
            counter.inc(total - _counted.get(key, 0.0))
        _counted[key] = total
