"""The router's Prometheus series, in a small registry of its own (text exposition format 0.0.4).

Why not prometheus_client: the router needs counters, gauges and histograms with labels and
nothing else, and owning the registry keeps two routers in one process (the tests) apart and
adds no dependency. Gauges that mirror the scheduler core are set just before each scrape
(``Registry.collectors``), so they are never stale.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

LabelKey = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


class _Metric:
    """A named series family with fixed label names."""

    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()):
        self.name = name
        self.help = help_text
        self.labels = tuple(labels)

    def _label_text(self, key: LabelKey, extra: str = "") -> str:
        parts = [f'{name}="{_escape(value)}"' for name, value in zip(self.labels, key)]
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}" if parts else ""

    def _key(self, labels: Sequence[str]) -> LabelKey:
        if len(labels) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(labels)}")
        return tuple(str(v) for v in labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """Only goes up (exported with the ``_total`` suffix)."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()):
        super().__init__(name, help_text, labels)
        self.values: dict[LabelKey, float] = {} if labels else {(): 0.0}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self.values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        return self.header() + [f"{self.name}_total{self._label_text(k)} {_number(v)}" for k, v in sorted(self.values.items())]


class Gauge(_Metric):
    """A value set from the current state."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()):
        super().__init__(name, help_text, labels)
        self.values: dict[LabelKey, float] = {} if labels else {(): 0.0}

    def set(self, value: float, *labels: str) -> None:
        self.values[self._key(labels)] = float(value)

    def value(self, *labels: str) -> float:
        return self.values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        return self.header() + [f"{self.name}{self._label_text(k)} {_number(v)}" for k, v in sorted(self.values.items())]


class Histogram(_Metric):
    """Counts per upper bound (cumulative when exported), plus the sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float], labels: Sequence[str] = ()):
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets))
        self.series: dict[LabelKey, tuple[list[int], list[float]]] = {}  # key -> (bucket counts, [sum, count])

    def observe(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        counts, totals = self.series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0, 0.0]))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        totals[0] += value
        totals[1] += 1

    def count(self, *labels: str) -> int:
        entry = self.series.get(self._key(labels))
        return int(entry[1][1]) if entry else 0

    def render(self) -> list[str]:
        lines = self.header()
        for key, (counts, (total, n)) in sorted(self.series.items()):
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts):
                running += count
                le = 'le="' + _number(bound) + '"'
                lines.append(f"{self.name}_bucket{self._label_text(key, le)} {running}")
            lines.append(f"{self.name}_sum{self._label_text(key)} {_number(total)}")
            lines.append(f"{self.name}_count{self._label_text(key)} {int(n)}")
        return lines


class Registry:
    """Every series of one router; ``collectors`` run before each render."""

    def __init__(self) -> None:
        self.metrics: list[_Metric] = []
        self.collectors: list[Callable[[], None]] = []

    def add(self, metric: _Metric) -> _Metric:
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        for collect in self.collectors:
            collect()
        lines: list[str] = []
        for metric in self.metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ERROR_BUCKETS = (-1024, -256, -64, -16, -4, 0, 4, 16, 64, 256, 1024)


class RouterMetrics:
    """The series the issue asks for, by name; see each help text."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.requests = r.add(Counter("aladdin_router_requests", "Completion requests answered, by outcome",
                                      ("outcome",)))
        self.placements = r.add(Counter("aladdin_router_placements", "Placements made by the scheduler core, per worker",
                                        ("worker",)))
        self.retries = r.add(Counter("aladdin_router_retries",
                                     "Requests re-placed on another worker before their first byte, by reason",
                                     ("reason",)))
        self.rejected = r.add(Counter("aladdin_router_rejected_429",
                                      "Requests answered 429 (queue full, TTFT lost, queue timeout), by reason",
                                      ("reason",)))
        self.bad_requests = r.add(Counter("aladdin_router_bad_requests", "Requests refused with a 4xx for bad input"))
        self.queue_length = r.add(Gauge("aladdin_router_queue_length", "Requests waiting in the central queue"))
        self.queue_wait = r.add(Histogram("aladdin_router_queue_wait_seconds",
                                          "Time from arrival to placement (0 when placed at once)", WAIT_BUCKETS))
        self.length_error = r.add(Histogram("aladdin_router_output_length_error_tokens",
                                            "Actual minus first predicted output length of finished requests",
                                            ERROR_BUCKETS))
        self.predicted_tokens = r.add(Counter("aladdin_router_predicted_output_tokens",
                                              "First predicted output tokens of finished requests"))
        self.actual_tokens = r.add(Counter("aladdin_router_actual_output_tokens", "Output tokens of finished requests"))
        self.kv_fill = r.add(Gauge("aladdin_router_worker_predicted_kv_fill",
                                   "Predicted peak KV of the worker's requests / its KV capacity", ("worker",)))
        self.atgt_fill = r.add(Gauge("aladdin_router_worker_predicted_atgt_fill",
                                     "Largest predicted ATGT / SLO over the worker's requests on pace", ("worker",)))
        self.decode_scale = r.add(Gauge("aladdin_router_worker_decode_scale",
                                        "The worker's measured / profiled decode step time (from its engine plugin)",
                                        ("worker",)))
        self.outstanding = r.add(Gauge("aladdin_router_worker_outstanding", "Requests the router has on the worker",
                                       ("worker",)))
        self.worker_up = r.add(Gauge("aladdin_router_worker_up", "1 while the worker is in the pool", ("worker",)))
        self.decision = r.add(Histogram("aladdin_router_decision_seconds",
                                        "Time the scheduler core took per decision call (arrival, retry)", LATENCY_BUCKETS))
        self.desired = r.add(Gauge("aladdin_desired_workers", "Workers the planner asks for (for HPA/KEDA)"))

    RETRY_REASONS = ("handed_back", "rejected", "unavailable", "failed")
    REJECT_REASONS = ("queue_full", "ttft_lost", "queue_timeout", "no_worker")

    def start_series(self, workers: list[str]) -> None:
        """Every known label value at zero, so dashboards and rate() see the series from the start."""
        for worker in workers:
            self.placements.inc(worker, amount=0.0)
        for reason in self.RETRY_REASONS:
            self.retries.inc(reason, amount=0.0)
        for reason in self.REJECT_REASONS:
            self.rejected.inc(reason, amount=0.0)
