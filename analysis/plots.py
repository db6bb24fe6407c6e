"""PNG plots with matplotlib's Agg canvas (no display, no pyplot global state).

Each function returns PNG bytes so the same images can be written to a folder and embedded
in the HTML report. CDFs are drawn from a fixed quantile grid, so a million requests cost
the same to draw as a thousand.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aladdin.analysis.metrics import SLO, RunAnalysis
from aladdin.loadgen.records import OK

_CDF_POINTS = np.linspace(0.0, 1.0, 501)
_MAX_TIME_BINS = 2000  # time series use 1 s bins, wider when the run is longer than this


def render_plots(analyses: Sequence[RunAnalysis], slo: SLO) -> dict[str, bytes]:
    """All plots by file stem: CDFs, attainment sweeps (when computed) and time series."""
    images = {
        "cdf_ttft": _cdf(analyses, "TTFT", lambda a: _ok_window(a, "ttft"), slo.ttft),
        "cdf_atgt": _cdf(analyses, "ATGT (= TPOT)", lambda a: _ok_window(a, "atgt"), slo.atgt),
        "cdf_tbt": _cdf(analyses, "TBT (per-token gaps, pooled)", lambda a: a.tbt_gaps, slo.tbt),
    }
    for axis in ("atgt", "ttft"):
        if any(axis in a.summary.get("sweeps", {}) for a in analyses):
            images[f"attainment_vs_{axis}_slo"] = _sweep(analyses, axis)
    images["timeseries"] = _timeseries(analyses)
    return images


def write_plots(folder: str | Path, images: dict[str, bytes]) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, png in images.items():
        path = folder / f"{name}.png"
        path.write_bytes(png)
        paths.append(path)
    return paths


def _ok_window(analysis: RunAnalysis, column: str) -> np.ndarray:
    frame = analysis.requests
    rows = frame["in_window"].to_numpy() & (frame["outcome"] == OK).to_numpy()
    return frame[column].to_numpy(dtype=np.float64)[rows]


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _cdf(analyses: Sequence[RunAnalysis], title: str, values_of, slo: float | None) -> bytes:
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for analysis in analyses:
        values = values_of(analysis)
        values = values[~np.isnan(values)]
        if len(values):
            ax.plot(np.quantile(values, _CDF_POINTS) * 1000, _CDF_POINTS, label=analysis.run.label)
    if slo is not None:
        ax.axvline(slo * 1000, color="black", linestyle="--", linewidth=1, label="SLO")
    ax.set(title=f"CDF of {title}", xlabel="ms", ylabel="fraction of requests" if "pooled" not in title
           else "fraction of gaps", ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _png(fig)


def _sweep(analyses: Sequence[RunAnalysis], axis: str) -> bytes:
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for analysis in analyses:
        sweep = analysis.summary.get("sweeps", {}).get(axis)
        if sweep:
            ax.plot(np.array(sweep["slo_s"]) * 1000, np.array(sweep["joint_attainment"]) * 100,
                    marker="o", markersize=3, label=analysis.run.label)
    ax.set(title=f"Joint SLO attainment vs {axis.upper()} SLO", xlabel=f"{axis.upper()} SLO (ms)",
           ylabel="attainment (%)", ylim=(0, 101))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _png(fig)


def _timeseries(analyses: Sequence[RunAnalysis]) -> bytes:
    """Output tokens/s and TTFT p50/p99 per time bin, from each run's first scheduled arrival."""
    fig = Figure(figsize=(9, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    for analysis in analyses:
        summary = analysis.summary["window"]
        start = summary["schedule_start_s"]
        frame = analysis.requests
        times = analysis.run.chunk_times - start
        span = max(float(times.max()) if len(times) else 0.0, summary["schedule_end_s"] - start, 1.0)
        width = max(1.0, np.ceil(span / _MAX_TIME_BINS))
        bins = np.floor(times / width).astype(np.int64)
        tokens = np.bincount(bins[bins >= 0], weights=analysis.run.chunk_tokens[bins >= 0]) / width
        line = top.plot(np.arange(len(tokens)) * width, tokens, label=analysis.run.label)[0]
        sent = frame["sent"].to_numpy()
        ok = (frame["outcome"] == OK).to_numpy() & np.isfinite(sent)
        sent_bin = np.floor((sent[ok] - start) / width)
        ttft = frame["ttft"].to_numpy()[ok]
        if len(ttft):
            per_bin = _bin_quantiles(sent_bin, ttft, (0.5, 0.99))
            bottom.plot(per_bin[0] * width, per_bin[1] * 1000, color=line.get_color(), label=f"{analysis.run.label} p50")
            bottom.plot(per_bin[0] * width, per_bin[2] * 1000, color=line.get_color(), linestyle=":",
                        label=f"{analysis.run.label} p99")
        for edge in (summary["start_s"], summary["end_s"]):
            top.axvline(edge - start, color=line.get_color(), linestyle="--", linewidth=0.8, alpha=0.6)
    top.set(title="Output tokens per second (dashed: steady-state window)", ylabel="tokens/s")
    bottom.set(title="TTFT by send time", xlabel="seconds since the first scheduled arrival", ylabel="ms")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize="small")
    return _png(fig)


def _bin_quantiles(bins: np.ndarray, values: np.ndarray, quantiles: tuple[float, ...]) -> list[np.ndarray]:
    """[bin ids, then one array per quantile]: sort by (bin, value) once, then index each group."""
    order = np.lexsort((values, bins))
    bins, values = bins[order], values[order]
    ids, first, counts = np.unique(bins, return_index=True, return_counts=True)
    result = [ids]
    for q in quantiles:
        result.append(values[first + np.floor(q * (counts - 1)).astype(np.int64)])
    return result
