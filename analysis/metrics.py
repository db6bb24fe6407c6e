"""Per-request and per-run metrics, all vectorized over the flat chunk arrays.

Definitions (docs/analysis.md has the full text and formulas):

* TTFT = first token chunk - sent; TTFT from scheduled = first token chunk - scheduled.
* Output tokens = the server's usage count when present, else the sum of chunk tokens.
* ATGT = TPOT = (last chunk - first chunk) / (output tokens - 1); undefined for one token.
* TBT: every token after the first gets one gap. A later chunk of k tokens that arrived g
  seconds after the previous chunk gives k gaps of g/k; the extra tokens of the first chunk
  arrived together with the first token and get gaps of 0. A request's gaps therefore sum to
  last - first, and their mean equals its ATGT whenever the two token counts agree.
* A request meets the TBT SLO when at least TBT_GAP_PERCENTILE % of its gaps are <= the SLO.
* Errors, timeouts and "no tokens" (a stream that ended OK without a content chunk) miss
  every SLO and are left out of latency statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from aladdin.analysis.load import RunData
from aladdin.errors import AladdinError
from aladdin.loadgen.records import OK, TIMEOUT

NO_TOKENS = "no_tokens"
OUTCOMES = (OK, "error", TIMEOUT, NO_TOKENS)
PERCENTILES = (50, 90, 95, 99)
TBT_GAP_PERCENTILE = 99  # a request meets the TBT SLO when this share (%) of its gaps is within it
LATENCY_METRICS = ("ttft", "ttft_from_scheduled", "send_lag", "tbt", "atgt", "tpot", "e2e")


@dataclass(frozen=True)
class SLO:
    """Per-request targets in seconds; tbt is optional."""

    ttft: float
    atgt: float
    tbt: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft", "atgt", "tbt"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise AladdinError(f"--{name}-slo must be a positive number of seconds, got {value}")


@dataclass(frozen=True)
class Window:
    """Seconds cut from the start and the end of the arrival schedule to keep the steady state."""

    warmup: float = 0.0
    cooldown: float = 0.0

    def __post_init__(self) -> None:
        for name in ("warmup", "cooldown"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise AladdinError(f"--{name} must be zero or more seconds, got {value}")


@dataclass
class RunAnalysis:
    """One run's per-request metrics, pooled TBT gaps and summary (the JSON block)."""

    run: RunData
    requests: pd.DataFrame  # one row per request (RequestMetrics.frame)
    tbt_gaps: np.ndarray  # per-token gaps of the in-window OK requests
    summary: dict


@dataclass
class RequestMetrics:
    """The per-request frame plus the chunk-level arrays that pooled TBT statistics need."""

    frame: pd.DataFrame
    per_token_gap: np.ndarray  # the gap given to each token of the chunk (0 for a first chunk)
    is_first: np.ndarray  # whether the chunk is its request's first
    schedule: tuple[float, float]  # first and last scheduled time
    window: tuple[float, float]  # steady-state window on the scheduled time


def analyze_run(run: RunData, slo: SLO, window: Window, sweeps: dict[str, np.ndarray] | None = None) -> RunAnalysis:
    """Compute everything for one run: per-request frame, pooled gaps, summary and SLO sweeps."""
    metrics = request_metrics(run, slo, window)
    frame = metrics.frame
    selected = (frame["in_window"] & (frame["outcome"] == OK)).to_numpy()
    gaps = pooled_gaps(run.chunk_tokens, metrics, selected)
    summary = summarize(run, metrics, gaps, slo, window)
    if sweeps:
        summary["sweeps"] = {
            axis: {"slo_s": grid.tolist(), "joint_attainment": attainment_curve(frame, axis, grid).tolist()}
            for axis, grid in sweeps.items()
        }
    return RunAnalysis(run=run, requests=frame, tbt_gaps=gaps, summary=summary)


def request_metrics(run: RunData, slo: SLO, window: Window) -> RequestMetrics:
    """Per-request metrics (one frame row per request) and the chunk-level TBT arrays."""
    req = run.requests
    n = len(req)
    times, tokens = run.chunk_times, run.chunk_tokens
    n_chunks = req["n_chunks"].to_numpy(dtype=np.int64)
    ends = np.cumsum(n_chunks)
    begins = ends - n_chunks
    has = n_chunks > 0

    first_token = np.full(n, np.nan)
    last_token = np.full(n, np.nan)
    first_token[has] = times[begins[has]]
    last_token[has] = times[ends[has] - 1]
    streamed = _per_request_sum(tokens, begins, has)
    usage = req["usage_output_tokens"].to_numpy(dtype=np.float64)
    output_tokens = np.where(np.isnan(usage), streamed, usage)

    raw = req["outcome"].astype(str).to_numpy()
    outcome = np.where(raw == OK, np.where(has, OK, NO_TOKENS), np.where(raw == TIMEOUT, TIMEOUT, "error"))
    ok = outcome == OK
    scheduled = req["scheduled"].to_numpy(dtype=np.float64)
    sent = req["sent"].to_numpy(dtype=np.float64)

    is_first = np.zeros(len(times), dtype=bool)
    is_first[begins[has]] = True
    per_token_gap = np.empty(len(times))  # filled in place: chunk-sized temporaries are the memory peak
    per_token_gap[:1] = 0.0
    np.subtract(times[1:], times[:-1], out=per_token_gap[1:])
    per_token_gap /= tokens
    per_token_gap[is_first] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        atgt = np.where(output_tokens >= 2, (last_token - first_token) / (output_tokens - 1), np.nan)
    tbt_max = np.full(n, np.nan)
    if len(times):
        tbt_max[has] = np.maximum.reduceat(per_token_gap, begins[has])
    tbt_max[streamed < 2] = np.nan

    start, end = _schedule_bounds(run, scheduled)
    w0, w1 = start + window.warmup, end - window.cooldown
    if w1 < w0:
        raise AladdinError(f"run {run.label!r}: --warmup {window.warmup:g} s + --cooldown {window.cooldown:g} s "
                           f"leave no steady-state window (arrivals span {end - start:g} s)")
    in_window = (scheduled >= w0) & (scheduled <= w1)

    ttft = first_token - sent
    ttft_from_scheduled = first_token - scheduled
    single = ok & (output_tokens < 2)
    ttft_target, atgt_target = request_slos(req, slo)
    with np.errstate(invalid="ignore"):
        ttft_ok = ok & (ttft <= ttft_target)
        atgt_ok = ok & ((atgt <= atgt_target) | single)
    frame = pd.DataFrame({
        "id": req["id"].to_numpy(),
        "outcome": pd.Categorical(outcome, categories=list(OUTCOMES)),
        "scheduled": scheduled,
        "sent": sent,
        "first_token": first_token,
        "last_token": last_token,
        "done": req["done"].to_numpy(dtype=np.float64),
        "ttft": ttft,
        "ttft_from_scheduled": ttft_from_scheduled,
        "send_lag": sent - scheduled,
        "atgt": atgt,
        "e2e": req["done"].to_numpy(dtype=np.float64) - sent,
        "tbt_max": tbt_max,
        "output_tokens": output_tokens,
        "streamed_tokens": streamed,
        "usage_output_tokens": usage,
        "n_chunks": n_chunks,
        "prompt_tokens": req["prompt_tokens"].to_numpy(dtype=np.float64),
        "in_window": in_window,
        "ttft_ok": ttft_ok,
        "atgt_ok": atgt_ok,
    })
    slo_ok = ttft_ok & atgt_ok
    if slo.tbt is not None:
        late_tokens = np.where(per_token_gap > slo.tbt, tokens, 0)  # first chunks have gap 0: never late
        late_gaps = _per_request_sum(late_tokens, begins, has)
        n_gaps = np.maximum(streamed - 1, 0)
        tbt_ok = ok & (late_gaps * 100 <= n_gaps * (100 - TBT_GAP_PERCENTILE))
        frame["tbt_late_gaps"] = late_gaps
        frame["tbt_ok"] = tbt_ok
        slo_ok = slo_ok & tbt_ok
    frame["slo_ok"] = slo_ok
    frame["error"] = req["error"].to_numpy()
    if "slo_tier" in req:
        frame["slo_tier"] = req["slo_tier"].to_numpy()
        frame["ttft_slo"] = ttft_target
        frame["atgt_slo"] = atgt_target
    return RequestMetrics(frame=frame, per_token_gap=per_token_gap, is_first=is_first,
                          schedule=(start, end), window=(w0, w1))


def request_slos(req: pd.DataFrame, slo: SLO) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Each request's TTFT and ATGT targets: its own (records of --slo-tiers runs), else ``slo``'s."""
    if "ttft_slo" not in req:
        return slo.ttft, slo.atgt
    ttft = req["ttft_slo"].to_numpy(dtype=np.float64)
    atgt = req["atgt_slo"].to_numpy(dtype=np.float64)
    return np.where(np.isnan(ttft), slo.ttft, ttft), np.where(np.isnan(atgt), slo.atgt, atgt)


def _per_request_sum(values: np.ndarray, begins: np.ndarray, has: np.ndarray) -> np.ndarray:
    """Sum of each request's chunk values (0 for a request without chunks)."""
    sums = np.zeros(len(begins), dtype=np.int64)
    if has.any():
        sums[has] = np.add.reduceat(values, begins[has], dtype=np.int64)
    return sums


def _schedule_bounds(run: RunData, scheduled: np.ndarray) -> tuple[float, float]:
    if not np.isfinite(scheduled).any():
        raise AladdinError(f"run {run.label!r}: no request has a scheduled time")
    return float(np.nanmin(scheduled)), float(np.nanmax(scheduled))


def pooled_gaps(tokens: np.ndarray, metrics: RequestMetrics, selected: np.ndarray) -> np.ndarray:
    """All per-token gaps of the selected requests: k copies of g/k per later chunk, zeros for the first."""
    chosen = np.repeat(selected, metrics.frame["n_chunks"].to_numpy())
    later = chosen & ~metrics.is_first
    spread = np.repeat(metrics.per_token_gap[later], tokens[later])
    zeros = int((tokens[chosen & metrics.is_first] - 1).sum())
    return np.concatenate((spread, np.zeros(zeros)))


def stats(values: np.ndarray) -> dict:
    """count, mean, p50/p90/p95/p99 (numpy's linear interpolation) and max; NaNs are dropped."""
    values = values[~np.isnan(values)]
    keys = ["mean", *(f"p{p}" for p in PERCENTILES), "max"]
    if not len(values):
        return {"count": 0, **{k: None for k in keys}}
    pct = np.percentile(values, PERCENTILES)
    numbers = [values.mean(), *pct, values.max()]
    return {"count": len(values), **{k: float(v) for k, v in zip(keys, numbers)}}


def summarize(run: RunData, metrics: RequestMetrics, gaps: np.ndarray, slo: SLO, window: Window) -> dict:
    """The per-run JSON block: window, counts, latency statistics, attainment and throughput."""
    frame = metrics.frame
    w0, w1 = metrics.window
    duration = w1 - w0
    win = frame[frame["in_window"].to_numpy()]
    n = len(win)
    outcome = win["outcome"].to_numpy()
    ok = outcome == OK
    good = win[ok]

    def col(name: str, rows: pd.DataFrame = good) -> np.ndarray:
        return rows[name].to_numpy(dtype=np.float64)

    def share(mask) -> float | None:
        return float(np.count_nonzero(mask) / n) if n else None

    def rate(count: float) -> float | None:
        return float(count / duration) if duration > 0 else None

    usage = col("usage_output_tokens")
    atgt = stats(col("atgt"))
    latency = {
        "ttft": stats(col("ttft")),
        "ttft_from_scheduled": stats(col("ttft_from_scheduled")),
        "send_lag": stats(col("send_lag", win)),
        "tbt": stats(gaps),
        "atgt": atgt,
        "tpot": dict(atgt),  # vLLM's name for the same per-request number
        "e2e": stats(col("e2e")),
    }
    ttft_target = col("ttft_slo", win) if "ttft_slo" in win else slo.ttft
    with np.errstate(invalid="ignore"):
        ttft_sched_ok = ok & (col("ttft_from_scheduled", win) <= ttft_target)
    attainment = {
        "ttft": share(win["ttft_ok"]),
        "ttft_from_scheduled": share(ttft_sched_ok),
        "atgt": share(win["atgt_ok"]),
        "tbt": share(win["tbt_ok"]) if slo.tbt is not None else None,
        "tbt_gaps": (float(np.count_nonzero(gaps <= slo.tbt) / len(gaps)) if len(gaps) else None)
        if slo.tbt is not None else None,
        "joint": share(win["slo_ok"]),
    }
    sent = frame["sent"].to_numpy()
    times = run.chunk_times
    in_w = (times >= w0) & (times <= w1)
    throughput = {
        "offered_rps": rate(n),
        "achieved_rps": rate(np.count_nonzero((sent >= w0) & (sent <= w1))),
        "goodput_rps": rate(np.count_nonzero(win["slo_ok"])),
        "output_tokens_per_s": rate(int(run.chunk_tokens[in_w].sum())),
    }
    start, end = metrics.schedule
    out = {
        "label": run.label,
        "source": run.source,
        "format": run.format,
        "records": len(frame),
        "partial_lines": int(run.partial_lines),
        "window": {
            "schedule_start_s": start, "schedule_end_s": end,
            "start_s": w0, "end_s": w1, "duration_s": duration,
            "warmup_s": window.warmup, "cooldown_s": window.cooldown,
            "requests": n, "excluded": int(len(frame) - n),
        },
        "counts": {
            "requests": n,
            "ok": int(ok.sum()),
            "errors": int((outcome == "error").sum()),
            "timeouts": int((outcome == TIMEOUT).sum()),
            "no_tokens": int((outcome == NO_TOKENS).sum()),
            "single_token": int((col("output_tokens") < 2).sum()),
            "token_count_mismatch": int((~np.isnan(usage) & (usage != col("streamed_tokens"))).sum()),
        },
        "latency_s": latency,
        "attainment": attainment,
        "throughput": throughput,
        "preemptions": {"count": run.preemptions, "source": run.preemptions_source},  # whole run, not the window
        "meta": run.meta,
    }
    tiers = tier_summary(win, rate)
    if tiers:
        out["tiers"] = tiers
    return out


def tier_summary(win: pd.DataFrame, rate) -> dict:
    """Per-tier requests, joint attainment and goodput of the in-window requests; {} without tiers."""
    if "slo_tier" not in win:
        return {}
    names = win["slo_tier"].to_numpy(dtype=object)
    slo_ok = win["slo_ok"].to_numpy(dtype=bool)
    out = {}
    for name in sorted({t for t in names.tolist() if t is not None and t == t}):
        mine = names == name
        count = int(np.count_nonzero(mine))
        good = int(np.count_nonzero(slo_ok & mine))
        out[name] = {"requests": count, "joint_attainment": good / count if count else None,
                     "goodput_rps": rate(good)}
    return out


def attainment_curve(frame: pd.DataFrame, axis: str, grid: np.ndarray) -> np.ndarray:
    """Joint attainment in the window when the ``axis`` SLO ("atgt" or "ttft") takes each grid value.

    The other SLOs stay as given. One sort plus a binary search per grid point.
    """
    win = frame[frame["in_window"].to_numpy()]
    if not len(win):
        return np.full(len(grid), np.nan)
    ok = (win["outcome"] == OK).to_numpy()
    others = ok & (win["tbt_ok"].to_numpy() if "tbt_ok" in win else True)
    if axis == "atgt":
        others &= win["ttft_ok"].to_numpy()
        value = np.where(win["output_tokens"].to_numpy() < 2, -np.inf, win["atgt"].to_numpy())
    elif axis == "ttft":
        others &= win["atgt_ok"].to_numpy()
        value = win["ttft"].to_numpy(dtype=np.float64)
    else:
        raise ValueError(f"unknown sweep axis {axis!r}")
    candidates = np.sort(value[others])  # NaNs sort last and never count
    return np.searchsorted(candidates, grid, side="right") / len(win)


def parse_sweep(spec: str, option: str) -> np.ndarray:
    """``START:STOP:COUNT`` (seconds) -> COUNT evenly spaced SLO values, both ends included."""
    parts = spec.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        start = stop = count = None
    if count is None or not (0 < start < stop and math.isfinite(stop) and 2 <= count <= 10000):
        raise AladdinError(f"{option} {spec!r}: expected START:STOP:COUNT seconds with 0 < START < STOP "
                           f"and 2 <= COUNT <= 10000, e.g. 0.02:0.2:10")
    return np.linspace(start, stop, count)
