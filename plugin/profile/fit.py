"""Fitting the performance models to profile samples, their error summaries, and derived
tensor-parallel worker sizes: the profile side of profile -> model (scipy is imported lazily,
only to fit)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel


@dataclass(frozen=True)
class TensorParallelAssumptions:
    """How a worker's models change from 1 GPU to G GPUs under tensor parallelism, when only
    the 1-GPU worker was measured (docs/perfmodel.md, "Derived worker sizes").

    Per-token and per-context work splits evenly over the G GPUs; of each forward pass's
    fixed cost, ``parallel_share`` splits too (weight reads) and the rest does not (the
    engine's CPU-side step work). Each pass adds two all-reduces per layer of
    ``allreduce_s`` each. The KV cache grows by the memory of G - 1 more GPUs, plus the
    weights' memory on the first GPU that the other G - 1 now hold in part.
    """

    parallel_share: float = 0.8
    allreduce_s: float = 10e-6

    def __post_init__(self) -> None:
        if not 0.0 <= self.parallel_share <= 1.0:
            raise ValueError(f"parallel share must be in [0, 1], got {self.parallel_share}")
        if not (math.isfinite(self.allreduce_s) and self.allreduce_s >= 0.0):
            raise ValueError(f"all-reduce time must be >= 0 seconds, got {self.allreduce_s}")


def scale_tensor_parallel(perf: PerfModel, gpus: int, *, num_layers: int, weight_bytes: int, kv_bytes_per_token: int,
                          assumptions: TensorParallelAssumptions = TensorParallelAssumptions()) -> PerfModel:
    """The model of a ``gpus``-GPU worker derived from a measured 1-GPU worker ``perf``.

    An estimate, not a measurement: the result says so in ``meta["derived"]``. A profile of
    the real G-GPU worker replaces it.
    """
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    share = assumptions.parallel_share
    comm = 2 * num_layers * assumptions.allreduce_s if gpus > 1 else 0.0

    def fixed(c: float) -> float:
        return c * (share / gpus + 1.0 - share) + comm

    block = perf.kv.block_size
    tokens = gpus * perf.kv.capacity_tokens + (gpus - 1) * weight_bytes // kv_bytes_per_token
    return PerfModel(
        prefill=PrefillModel(perf.prefill.a / gpus, perf.prefill.q / gpus, fixed(perf.prefill.c)),
        decode=DecodeModel(perf.decode.a / gpus, perf.decode.b / gpus, fixed(perf.decode.c)),
        kv=KVModel(block_size=block, capacity_tokens=tokens // block * block),
        max_num_seqs=perf.max_num_seqs,
        max_batched_tokens=perf.max_batched_tokens,
        admit_s=perf.admit_s,  # the engine's CPU-side work per request: no GPU splits it
        meta={**perf.meta, "gpus_per_worker": gpus,
              "derived": {"from_gpus": 1, "gpus": gpus, **asdict(assumptions)}},
    )


@dataclass(frozen=True)
class FitDiagnostics:
    """How well a least-squares fit matches its own samples."""

    n_samples: int
    rms_residual_s: float
    r_squared: float
    median_abs_pct_error: float
    method: str  # "nnls" (non-negative coefficients) or "lstsq"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _least_squares(
    columns: list[np.ndarray], time: np.ndarray, nonneg: bool, weights: np.ndarray | None = None
) -> tuple[np.ndarray, FitDiagnostics]:
    """Solve time ~ columns @ coef, scaling columns first so token^2 and 1 are comparable.

    ``weights`` scale each sample's squared residual; the diagnostics are unweighted.
    """
    design = np.column_stack(columns)
    scale = np.abs(design).max(axis=0)
    scale[scale == 0] = 1.0
    root = np.ones_like(time) if weights is None else np.sqrt(weights)
    system, target = design / scale * root[:, None], time * root
    if nonneg:
        # Only the profiler fits, so the engine-side users never import scipy.
        from scipy.optimize import nnls

        scaled_coef, _ = nnls(system, target)
    else:
        scaled_coef = np.linalg.lstsq(system, target, rcond=None)[0]
    coef = scaled_coef / scale
    predicted = design @ coef
    residual_ss = float(np.sum((time - predicted) ** 2))
    total_ss = float(np.sum((time - time.mean()) ** 2))
    if total_ss > 0:
        r_squared = 1.0 - residual_ss / total_ss
    else:
        r_squared = 1.0 if residual_ss == 0 else 0.0
    diagnostics = FitDiagnostics(
        n_samples=int(time.size),
        rms_residual_s=float(np.sqrt(residual_ss / time.size)),
        r_squared=r_squared,
        median_abs_pct_error=float(np.median(abs_pct_error(predicted, time))),
        method="nnls" if nonneg else "lstsq",
    )
    return coef, diagnostics


def _samples(n_params: int, **named: ArrayLike) -> list[np.ndarray]:
    """Validate equal-length, finite 1-D sample arrays, enough of them for the parameters."""
    arrays = [np.asarray(values, dtype=float).ravel() for values in named.values()]
    lengths = {array.size for array in arrays}
    if len(lengths) != 1:
        raise ValueError(f"{', '.join(named)} must have the same length, got {[a.size for a in arrays]}")
    if lengths.pop() < n_params:
        raise ValueError(f"need at least {n_params} samples to fit {n_params} coefficients")
    for name, array in zip(named, arrays):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    return arrays


def fit_prefill(
    sum_tokens: ArrayLike,
    sum_sq_tokens: ArrayLike,
    time: ArrayLike,
    *,
    quadratic: bool = True,
    nonneg: bool = True,
    weights: ArrayLike | None = None,
) -> tuple[PrefillModel, FitDiagnostics]:
    """Fit T_pre = a*sum(n) + q*sum(n^2) + c from per-batch samples.

    ``quadratic=False`` fixes q = 0. ``nonneg`` (default) constrains a, q, c >= 0 with NNLS:
    the models are extrapolated by the planner and simulator, where a negative term gives
    negative or shrinking times; with exact non-negative data both solvers agree.
    ``weights`` (one > 0 per sample, default all 1) weight the squared residuals.
    """
    tokens, squares, times, weight = _samples(
        3 if quadratic else 2, sum_tokens=sum_tokens, sum_sq_tokens=sum_sq_tokens, time=time,
        weights=np.ones(np.size(time)) if weights is None else weights,
    )
    if not (weight > 0).all():
        raise ValueError("weights must be > 0")
    columns = [tokens, squares, np.ones_like(times)] if quadratic else [tokens, np.ones_like(times)]
    coef, diagnostics = _least_squares(columns, times, nonneg, weight)
    a, q, c = coef if quadratic else (coef[0], 0.0, coef[1])
    return PrefillModel(a=float(a), q=float(q), c=float(c)), diagnostics


def fit_prefill_mixed(
    synthetic_tokens: ArrayLike,
    synthetic_time: ArrayLike,
    realistic_tokens: ArrayLike,
    realistic_time: ArrayLike,
) -> tuple[PrefillModel, FitDiagnostics]:
    """Fit lone-prompt prefills of two kinds, each kind weighing as much in total as the other.

    Real prompts (ShareGPT) pay a few ms more of fixed cost than the profiler's synthetic
    ones of equal length (benchmarks/RESULTS.md, "H200 profiles") and are mostly short, while
    the synthetic sweep reaches the long prompts a real sample rarely has: so the realistic
    points set the level and the synthetic ones the growth, however many there are of each.
    """
    synthetic = np.asarray(synthetic_tokens, dtype=float).ravel()
    realistic = np.asarray(realistic_tokens, dtype=float).ravel()
    if synthetic.size == 0 or realistic.size == 0:
        raise ValueError("need synthetic and realistic samples")
    tokens = np.concatenate([synthetic, realistic])
    times = np.concatenate([np.asarray(synthetic_time, dtype=float).ravel(),
                            np.asarray(realistic_time, dtype=float).ravel()])
    weights = np.concatenate([np.full(synthetic.size, 1.0 / synthetic.size),
                              np.full(realistic.size, 1.0 / realistic.size)])
    return fit_prefill(tokens, tokens**2, times, weights=weights)


def fit_decode(
    batch_size: ArrayLike,
    total_context: ArrayLike,
    time: ArrayLike,
    *,
    nonneg: bool = True,
) -> tuple[DecodeModel, FitDiagnostics]:
    """Fit T_dec = a*B + b*S + c from per-iteration samples (``nonneg`` as in fit_prefill)."""
    sizes, contexts, times = _samples(3, batch_size=batch_size, total_context=total_context, time=time)
    coef, diagnostics = _least_squares([sizes, contexts, np.ones_like(times)], times, nonneg)
    return DecodeModel(a=float(coef[0]), b=float(coef[1]), c=float(coef[2])), diagnostics


# ---------------------------------------------------------------------------------------
# Accuracy


@dataclass(frozen=True)
class ErrorSummary:
    """Absolute percentage errors of predictions, as the validation report prints them."""

    n: int
    median_pct: float
    p90_pct: float
    max_pct: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def abs_pct_error(predicted: ArrayLike, actual: ArrayLike) -> np.ndarray:
    """Element-wise 100 * |predicted - actual| / |actual| (0 when both are 0, inf when only actual is)."""
    predicted = np.asarray(predicted, dtype=float)
    actual = np.asarray(actual, dtype=float)
    difference = np.abs(predicted - actual)
    with np.errstate(divide="ignore", invalid="ignore"):
        errors = 100.0 * difference / np.abs(actual)
    return np.where(difference == 0, 0.0, errors)


def error_summary(predicted: ArrayLike, actual: ArrayLike) -> ErrorSummary:
    """Median, p90 and max absolute percentage error over paired predictions."""
    errors = abs_pct_error(predicted, actual).ravel()
    if errors.size == 0:
        raise ValueError("no predictions to summarise")
    return ErrorSummary(
        n=int(errors.size),
        median_pct=float(np.median(errors)),
        p90_pct=float(np.percentile(errors, 90)),
        max_pct=float(errors.max()),
    )
