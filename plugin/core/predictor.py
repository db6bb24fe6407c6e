"""Output-length prediction from prompt length, learned online from finished requests.

Aladdin's predictor is deliberately naive (the paper calls it "the most naive" choice): the
historical output length of past requests whose prompts had a similar length. It costs
nothing per request and is unbiased when it uses the mean, so errors of co-located requests
partly cancel. Prompt lengths fall into log-spaced buckets; each bucket keeps a bounded
window of its most recent output lengths, so the mean is O(1) and a quantile costs one
partial sort of the window (cached until the bucket changes). Requests that outgrow their
prediction are re-estimated with ``repredict``: the conditional statistic of past lengths
longer than what the request has already generated. Layout and rationale: docs/placement.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from aladdin.plugin.core import kernels

# What live schedulers (the router, the engine plugin) reserve by default: a quantile, not the
# mean, because a KV reservation that falls short becomes a preemption once the cache is full.
RESERVATION_QUANTILE = 0.95


@dataclass(frozen=True)
class PredictorConfig:
    """How the predictor buckets, remembers and summarizes past requests.

    ``quantile`` None uses the mean (the paper's choice); a value in (0, 1) uses that
    quantile, e.g. 0.7 to under-predict less often. A bucket with fewer than
    ``min_samples`` finished requests borrows the pool of all buckets, and with fewer than
    that overall the prediction is ``default_output_tokens`` (cold start).
    """

    quantile: float | None = None
    default_output_tokens: int = 256
    min_samples: int = 16
    window: int = 1024  # most recent output lengths kept per bucket (and in the pool)
    buckets_per_octave: int = 2  # bucket edges at prompt lengths 2^(i / buckets_per_octave)
    max_output_tokens: int | None = None  # predictions are capped here (e.g. the engine's limit)

    def __post_init__(self) -> None:
        if self.quantile is not None and not 0.0 < self.quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1) or None for the mean, got {self.quantile}")
        if self.default_output_tokens < 1 or self.min_samples < 1 or self.window < 1:
            raise ValueError("default_output_tokens, min_samples and window must be >= 1")
        if self.buckets_per_octave < 1:
            raise ValueError(f"buckets_per_octave must be >= 1, got {self.buckets_per_octave}")
        if self.max_output_tokens is not None and self.max_output_tokens < 1:
            raise ValueError(f"max_output_tokens must be >= 1, got {self.max_output_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Window:
    """A ring buffer of the latest output lengths, kept sorted too, with a running sum and a
    cached statistic. The sorted copy is updated in place on every add (core.kernels), so a
    re-prediction's conditional statistic is a binary search and a sum over the tail."""

    __slots__ = ("values", "count", "next", "total", "cached", "_sorted")

    def __init__(self, size: int):
        self.values = np.zeros(size, dtype=np.int64)
        self.count = 0
        self.next = 0
        self.total = 0
        self.cached: float | None = None
        self._sorted = np.zeros(size, dtype=np.int64)  # the filled values, ascending, in [:count]

    def add(self, value: int) -> None:
        full = self.count == self.values.size
        evicted = int(self.values[self.next]) if full else 0
        if full:
            self.total -= evicted
        else:
            self.count += 1
        kernels.sorted_replace(self._sorted, self.count, full, evicted, value)
        self.values[self.next] = value
        self.total += value
        self.next = (self.next + 1) % self.values.size
        self.cached = None

    def filled(self) -> np.ndarray:
        return self.values[: self.count]

    def longer_than(self, generated: int) -> tuple[np.ndarray, int]:
        """The sorted values above ``generated`` and their sum: what a re-prediction conditions on."""
        start, total = kernels.tail_above(self._sorted, self.count, generated)
        return self._sorted[start : self.count], total


class LengthPredictor:
    """Predicts output tokens from prompt tokens; ``observe`` teaches it finished requests."""

    # Prompts up to 2^40 tokens get their own buckets; longer ones share the last.
    OCTAVES = 40

    def __init__(self, config: PredictorConfig | None = None):
        self.config = config or PredictorConfig()
        self.num_buckets = self.OCTAVES * self.config.buckets_per_octave
        self._buckets = [_Window(self.config.window) for _ in range(self.num_buckets)]
        self._pool = _Window(self.config.window)
        self.observed = 0

    # ------------------------------------------------------------------ learning

    def bucket(self, prompt_tokens: int) -> int:
        """Bucket index floor(buckets_per_octave * log2(prompt)) of one prompt length (>= 1)."""
        index = int(self.config.buckets_per_octave * math.log2(max(int(prompt_tokens), 1)))
        return min(index, self.num_buckets - 1)

    def buckets(self, prompt_tokens: ArrayLike) -> np.ndarray:
        """Element-wise ``bucket``."""
        prompts = np.maximum(np.asarray(prompt_tokens, dtype=np.int64), 1)
        index = np.floor(self.config.buckets_per_octave * np.log2(prompts)).astype(np.int64)
        return np.minimum(index, self.num_buckets - 1)

    def observe(self, prompt_tokens: int, output_tokens: int) -> None:
        """Learn one finished request's lengths."""
        if output_tokens < 1:
            raise ValueError(f"output_tokens must be >= 1, got {output_tokens}")
        self._buckets[self.bucket(prompt_tokens)].add(int(output_tokens))
        self._pool.add(int(output_tokens))
        self.observed += 1

    def observe_many(self, prompt_tokens: ArrayLike, output_tokens: ArrayLike) -> None:
        for prompt, output in zip(np.ravel(prompt_tokens).tolist(), np.ravel(output_tokens).tolist()):
            self.observe(int(prompt), int(output))

    # ------------------------------------------------------------------ predicting

    def _statistic(self, values: np.ndarray) -> float:
        if self.config.quantile is None:
            return float(values.mean())
        return float(np.quantile(values, self.config.quantile))

    def _window_value(self, window: _Window) -> float:
        if window.cached is None:
            if self.config.quantile is None:
                window.cached = window.total / window.count
            else:
                window.cached = self._statistic(window.filled())
        return window.cached

    def _as_tokens(self, value: float) -> int:
        tokens = max(1, math.ceil(value - 1e-9))
        cap = self.config.max_output_tokens
        return min(tokens, cap) if cap is not None else tokens

    def predict(self, prompt_tokens: int) -> int:
        """Predicted output tokens (>= 1) of a request with this prompt length."""
        return self.predict_bucket(self.bucket(prompt_tokens))

    def predict_many(self, prompt_tokens: ArrayLike) -> np.ndarray:
        """Vectorized ``predict``: one statistic per distinct bucket, gathered."""
        buckets = np.atleast_1d(self.buckets(prompt_tokens))
        distinct, inverse = np.unique(buckets, return_inverse=True)
        per_bucket = np.array([self.predict_bucket(int(b)) for b in distinct], dtype=np.int64)
        return per_bucket[inverse.ravel()].reshape(np.shape(prompt_tokens))

    def predict_bucket(self, bucket: int) -> int:
        """The prediction shared by every prompt length in ``bucket``."""
        window = self._buckets[bucket]
        if window.count >= self.config.min_samples:
            return self._as_tokens(self._window_value(window))
        if self._pool.count >= self.config.min_samples:
            return self._as_tokens(self._window_value(self._pool))
        return self._as_tokens(self.config.default_output_tokens)

    def repredict(self, prompt_tokens: int, generated: int) -> int:
        """Expected *remaining* tokens (>= 1) of a request that already generated ``generated``.

        The statistic (mean or quantile) of the past lengths longer than ``generated``, minus
        ``generated``: first among the request's bucket, else among all buckets, each needing
        ``min_samples`` such lengths. With no such history the request is assumed to be half
        done (remaining = generated / 2, at least 1), so repeated overruns grow the estimate
        geometrically and need only O(log length) re-predictions.
        """
        cap = self.config.max_output_tokens
        for window in (self._buckets[self.bucket(prompt_tokens)], self._pool):
            longer, total = window.longer_than(generated)
            if longer.size >= self.config.min_samples:
                statistic = total / longer.size if self.config.quantile is None else self._statistic(longer)
                remaining = max(1, math.ceil(statistic - generated - 1e-9))
                break
        else:
            remaining = max(1, math.ceil(generated / 2))
        if cap is not None and cap > generated:
            remaining = min(remaining, cap - generated)
        return remaining


# ---------------------------------------------------------------------------------------
# Accuracy


@dataclass(frozen=True)
class PredictionErrors:
    """How far online predictions were from the real output lengths."""

    n: int
    mean_abs_error: float  # tokens
    median_abs_pct_error: float  # 100 * |predicted - actual| / actual
    under_prediction_rate: float  # fraction with predicted < actual (these force re-predictions)
    mean_error: float  # signed mean of predicted - actual (bias)
    # std of (actual - predicted) / predicted: how spread a length is around its prediction,
    # relative to it (the kv-chance filter's length_cv)
    relative_spread: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prediction_errors(predicted: ArrayLike, actual: ArrayLike) -> PredictionErrors:
    """Summary of paired predicted and actual output lengths."""
    predicted = np.asarray(predicted, dtype=float).ravel()
    actual = np.asarray(actual, dtype=float).ravel()
    if predicted.shape != actual.shape or predicted.size == 0:
        raise ValueError("need the same, non-zero number of predictions and actual lengths")
    difference = predicted - actual
    return PredictionErrors(
        n=int(predicted.size),
        mean_abs_error=float(np.abs(difference).mean()),
        median_abs_pct_error=float(np.median(100.0 * np.abs(difference) / np.maximum(actual, 1.0))),
        under_prediction_rate=float((difference < 0).mean()),
        mean_error=float(difference.mean()),
        relative_spread=float(np.std(-difference / np.maximum(predicted, 1.0))),
    )


def evaluate_online(
    prompt_tokens: Sequence[int] | np.ndarray,
    output_tokens: Sequence[int] | np.ndarray,
    config: PredictorConfig | None = None,
    warmup: int = 0,
) -> PredictionErrors:
    """Prequential error: predict each request, then learn it, in order (as in serving).

    The first ``warmup`` requests are learned but left out of the summary, so the cold-start
    default does not dominate a short sample.
    """
    prompts = np.asarray(prompt_tokens, dtype=np.int64).ravel()
    outputs = np.asarray(output_tokens, dtype=np.int64).ravel()
    if prompts.shape != outputs.shape:
        raise ValueError("prompt_tokens and output_tokens must have the same length")
    if not 0 <= warmup < prompts.size:
        raise ValueError(f"warmup must be in [0, {prompts.size}), got {warmup}")
    predictor = LengthPredictor(config)
    predicted = np.empty_like(outputs)
    for i, (prompt, output) in enumerate(zip(prompts.tolist(), outputs.tolist())):
        predicted[i] = predictor.predict(prompt)
        predictor.observe(prompt, output)
    return prediction_errors(predicted[warmup:], outputs[warmup:])
