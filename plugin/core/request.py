"""One request's state in the scheduler core: everything the lifecycle knows of it, in one object.

Like ``vllm.v1.request.Request`` for vLLM's scheduler, a :class:`Request` is created when the
request arrives and updated by the events its driver reports (the simulator, the router, or
the in-engine plugin); policies read it and never copy it. Times are seconds on the driver's
one clock; sizes are tokens.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from aladdin.errors import AladdinError


class RequestStatus(enum.Enum):
    QUEUED = "queued"  # in the central queue: no worker could take it yet
    PLACED = "placed"  # on a worker, before its first token
    DECODING = "decoding"  # on a worker, first token out
    FINISHED = "finished"
    ABORTED = "aborted"
    SHED = "shed"  # refused: its TTFT could no longer be met (the front end answers 429)


DONE = (RequestStatus.FINISHED, RequestStatus.ABORTED, RequestStatus.SHED)


@dataclass(eq=False, slots=True)
class Request:
    """A request from arrival to its end.

    ``arrival_time`` is when the client sent it (TTFT counts from there). ``generated_tokens``
    and ``computed_tokens`` are as last reported; a decoding request's count between reports
    is its worker's business (``WorkerState.generated``). ``predicted_output_tokens`` is the
    current prediction of the total output length (re-predicted when a request outgrows it),
    ``first_prediction`` the one made at arrival (its error is what the lifecycle learns from).
    ``max_output_tokens`` (the request's ``max_tokens``, or the context it has left) caps every
    prediction and re-prediction; None: no limit known.
    """

    id: str
    prompt_tokens: int
    arrival_time: float
    ttft_slo: float = math.inf
    atgt_slo: float = math.inf
    predicted_output_tokens: int = 0
    first_prediction: int = 0
    generated_tokens: int = 0
    computed_tokens: int = 0  # prompt (+ generated, after a preemption) tokens whose KV exists
    first_token_time: float = math.nan
    worker: str | None = None
    status: RequestStatus = RequestStatus.QUEUED
    queued_once: bool = False
    repredictions: int = 0
    predicted_here: bool = False  # the scheduler's predictor made the prediction (not the caller)
    max_output_tokens: int | None = None

    def capped(self, output_tokens: int) -> int:
        """A predicted total output length within the request's limit (and >= 1)."""
        limit = self.max_output_tokens
        return max(int(output_tokens) if limit is None else min(int(output_tokens), limit), 1)

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1:
            raise AladdinError(f"request {self.id}: prompt_tokens must be >= 1, got {self.prompt_tokens}")
        for name in ("ttft_slo", "atgt_slo"):
            value = getattr(self, name)
            if not value > 0:  # also refuses NaN
                raise AladdinError(f"request {self.id}: {name} must be > 0 seconds (inf: none), got {value}")
        if not math.isfinite(self.arrival_time):
            raise AladdinError(f"request {self.id}: arrival_time must be finite, got {self.arrival_time}")
        if self.generated_tokens < 0 or self.computed_tokens < 0:
            raise AladdinError(f"request {self.id}: token counts must be >= 0")

    @property
    def started(self) -> bool:
        """Its first token is out (from this worker, or from a split-phase prefill worker)."""
        return self.generated_tokens >= 1 and math.isfinite(self.first_token_time)

    @property
    def deadline(self) -> float:
        """When its TTFT SLO runs out (inf: none): the key of the EDF queue."""
        return self.arrival_time + self.ttft_slo

    @property
    def context_tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens

    @property
    def remaining_tokens(self) -> int:
        """Predicted tokens still to come, at least 1 (an overrun counts as one more)."""
        return max(self.predicted_output_tokens - self.generated_tokens, 1)
