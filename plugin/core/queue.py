"""The central queue: requests no worker could take yet, apart from the placement policy.

Two disciplines: FCFS (arrival order) and EDF (earliest TTFT deadline first). A retry walks
the queue from its head and stops at the first request that still fits nowhere (head-of-line,
like an engine's waiting queue), so a retry costs one policy call per placed request plus one,
and the head is never overtaken: with EDF the most urgent request gets the next room.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from aladdin.errors import AladdinError
from aladdin.plugin.core.request import Request

QUEUE_ORDERS = ("fcfs", "edf")


class CentralQueue:
    def __init__(self, order: str = "fcfs"):
        if order not in QUEUE_ORDERS:
            raise AladdinError(f"queue order must be one of {', '.join(QUEUE_ORDERS)}, got {order!r}")
        self.order = order
        self._heap: list[tuple[float, int, Request]] = []
        self._ties = itertools.count()
        self.peak = 0

    def __len__(self) -> int:
        return len(self._heap)

    def _key(self, request: Request) -> float:
        return request.deadline if self.order == "edf" else request.arrival_time

    def push(self, request: Request) -> None:
        heapq.heappush(self._heap, (self._key(request), next(self._ties), request))
        self.peak = max(self.peak, len(self._heap))

    def head(self) -> Request:
        return self._heap[0][2]

    def pop(self) -> Request:
        return heapq.heappop(self._heap)[2]

    def remove(self, request: Request) -> bool:
        """Take out one request (aborted while queued); False if it was not here."""
        for i, (_, _, queued) in enumerate(self._heap):
            if queued is request:
                self._heap[i] = self._heap[-1]
                self._heap.pop()
                heapq.heapify(self._heap)
                return True
        return False

    def __iter__(self) -> Iterator[Request]:
        return (entry[2] for entry in sorted(self._heap))
