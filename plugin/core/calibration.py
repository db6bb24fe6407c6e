"""Online calibration of the decode model: how much slower (or faster) a worker's real decode
steps are than its profile says.

A profile is measured once, on an idle worker. In service the same worker may share its cores,
run on another GPU of the family, or throttle; its ATGT then drifts from the profile's, and an
SLO filter built on the profile admits too much (or too little). The engine times each decode
step; the ratio to the profile's prediction for that batch, smoothed, scales the worker's
decode model in the core (``Scheduler.scale_decode``). Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aladdin.plugin.core.perfmodel import DecodeModel


@dataclass(frozen=True)
class CalibrationConfig:
    """``smoothing``: weight of each new step in the exponential average; ``min_steps``: steps
    observed before the scale is trusted (1.0 until then); ``bounds``: the range one step's ratio
    is clipped to (a stall or an idle gap is not the model's error); ``min_change``: relative
    change of the scale worth telling the core (each change rebuilds the worker's forecast)."""

    smoothing: float = 0.02
    min_steps: int = 50
    bounds: tuple[float, float] = (0.25, 8.0)
    min_change: float = 0.02


class DecodeCalibration:
    """The smoothed ratio of measured to profiled decode step times of one worker."""

    def __init__(self, decode: DecodeModel, config: CalibrationConfig = CalibrationConfig()):
        self.decode = decode
        self.config = config
        self.steps = 0
        self._ratio = 1.0
        self.applied = 1.0  # the scale last handed to the core

    @property
    def scale(self) -> float:
        return self._ratio if self.steps >= self.config.min_steps else 1.0

    def observe(self, batch_size: int, context_tokens: int, seconds: float) -> None:
        """One decode-only step of ``batch_size`` requests holding ``context_tokens`` took ``seconds``."""
        if batch_size < 1 or not (math.isfinite(seconds) and seconds > 0):
            return
        predicted = float(self.decode.time(batch_size, context_tokens))
        if not predicted > 0:  # no decode model (a worker without a profile)
            return
        low, high = self.config.bounds
        ratio = min(max(seconds / predicted, low), high)
        weight = 1.0 / (self.steps + 1) if self.steps < self.config.min_steps else self.config.smoothing
        self._ratio += weight * (ratio - self._ratio)  # a plain mean until trusted, then exponential
        self.steps += 1

    def update(self) -> float | None:
        """The scale to hand to the core now, or None when it has not moved enough."""
        scale = self.scale
        if abs(scale - self.applied) <= self.config.min_change * self.applied:
            return None
        self.applied = scale
        return scale
