"""Outputs: a plain-text comparison table, the JSON document, the per-request CSV and an HTML report.

The JSON keys are documented in docs/analysis.md and stay stable; times are seconds there,
milliseconds in the human-facing table and report.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aladdin.analysis.metrics import LATENCY_METRICS, PERCENTILES, SLO, TBT_GAP_PERCENTILE, RunAnalysis, Window

JSON_SCHEMA_VERSION = 1
CSV_COLUMNS = (
    "run", "id", "outcome", "in_window", "scheduled", "sent", "first_token", "last_token", "done",
    "ttft", "ttft_from_scheduled", "send_lag", "atgt", "e2e", "tbt_max", "output_tokens", "streamed_tokens",
    "n_chunks", "prompt_tokens", "ttft_ok", "atgt_ok", "tbt_late_gaps", "tbt_ok", "slo_ok", "error",
)
_COUNT_COLUMNS = ("output_tokens", "streamed_tokens", "prompt_tokens", "tbt_late_gaps")


# --------------------------------------------------------------------------- JSON


def json_document(analyses: Sequence[RunAnalysis], slo: SLO, window: Window) -> dict:
    """The whole analysis as one JSON-ready dict (see docs/analysis.md for every key)."""
    return {
        "schema": JSON_SCHEMA_VERSION,
        "slo": {"ttft_s": slo.ttft, "atgt_s": slo.atgt, "tbt_s": slo.tbt, "tbt_gap_percentile": TBT_GAP_PERCENTILE},
        "window": {"warmup_s": window.warmup, "cooldown_s": window.cooldown},
        "runs": [analysis.summary for analysis in analyses],
    }


def write_json(path: str | Path, document: dict) -> None:
    Path(path).write_text(json.dumps(_plain(document), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _plain(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become null and numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- CSV


def write_csv(path: str | Path, analyses: Sequence[RunAnalysis]) -> None:
    """One row per request of every run, with the run's label in the first column."""
    frames = []
    for analysis in analyses:
        frame = analysis.requests.copy()
        frame.insert(0, "run", analysis.run.label)
        for name in _COUNT_COLUMNS:
            if name in frame:
                frame[name] = frame[name].astype("Int64")
        frames.append(frame)
    merged = pd.concat(frames, ignore_index=True)
    merged.reindex(columns=[c for c in CSV_COLUMNS if c in merged]).to_csv(path, index=False)


# --------------------------------------------------------------------------- table


@dataclass(frozen=True)
class _Column:
    header: str
    unit: str
    value: Callable[[dict], Any]
    fmt: Callable[[Any], str]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _int(value: int | None) -> str:
    return "-" if value is None else str(value)


COMPARISON_COLUMNS = (
    _Column("run", "", lambda s: s["label"], str),
    _Column("requests", "", lambda s: s["counts"]["requests"], _int),
    _Column("ok", "", lambda s: s["counts"]["ok"], _int),
    _Column("errors", "", lambda s: s["counts"]["errors"], _int),
    _Column("timeouts", "", lambda s: s["counts"]["timeouts"], _int),
    _Column("preemptions", "whole run", lambda s: s["preemptions"]["count"], _int),
    _Column("TTFT p50", "ms", lambda s: s["latency_s"]["ttft"]["p50"], _ms),
    _Column("TTFT p99", "ms", lambda s: s["latency_s"]["ttft"]["p99"], _ms),
    _Column("ATGT p50", "ms", lambda s: s["latency_s"]["atgt"]["p50"], _ms),
    _Column("ATGT p99", "ms", lambda s: s["latency_s"]["atgt"]["p99"], _ms),
    _Column("TBT p99", "ms", lambda s: s["latency_s"]["tbt"]["p99"], _ms),
    _Column("TTFT", "attained", lambda s: s["attainment"]["ttft"], _pct),
    _Column("ATGT", "attained", lambda s: s["attainment"]["atgt"], _pct),
    _Column("TBT", "attained", lambda s: s["attainment"]["tbt"], _pct),
    _Column("SLO", "attained", lambda s: s["attainment"]["joint"], _pct),
    _Column("goodput", "req/s", lambda s: s["throughput"]["goodput_rps"], _num),
    _Column("offered", "req/s", lambda s: s["throughput"]["offered_rps"], _num),
    _Column("output", "tok/s", lambda s: s["throughput"]["output_tokens_per_s"], _num),
)


def comparison_rows(summaries: Sequence[dict], with_tbt: bool) -> tuple[list[str], list[str], list[list[str]]]:
    """Headers, units and formatted cells, one row per run (the TBT column only with a TBT SLO,
    the preemptions column only when a run recorded them)."""
    with_preemptions = any(_has_preemptions(s) for s in summaries)
    columns = [c for c in COMPARISON_COLUMNS
               if (with_tbt or c.header != "TBT" or c.unit != "attained")
               and (with_preemptions or c.header != "preemptions")]
    rows = [[c.fmt(c.value(s)) for c in columns] for s in summaries]
    return [c.header for c in columns], [c.unit for c in columns], rows


def _has_preemptions(summary: dict) -> bool:
    return summary.get("preemptions", {}).get("count") is not None


def preemptions_note(summaries: Sequence[dict]) -> str | None:
    """Where the preemption counts come from, and why a run has none; None without the column."""
    if not any(_has_preemptions(s) for s in summaries):
        return None
    note = ("preemptions: over the whole run, from the simulator or from vLLM's "
            "vllm:num_preemptions_total in the run folder's counters.json")
    if not all(_has_preemptions(s) for s in summaries):
        note += "; '-': not recorded (aladdin replay and vLLM bench results keep no preemption count)"
    return note


def format_table(document: dict) -> str:
    """The terminal report: SLO line, aligned comparison table, then per-run notes."""
    headers, units, rows = comparison_rows(document["runs"], document["slo"]["tbt_s"] is not None)
    widths = [max(len(h), len(u), *(len(r[i]) for r in rows)) for i, (h, u) in enumerate(zip(headers, units))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [_slo_text(document), "", line(headers), line(units), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    notes = [f"{s['label']}: {note}" for s in document["runs"] for note in run_notes(s)]
    preemptions = preemptions_note(document["runs"])
    if preemptions:
        notes.append(preemptions)
    if notes:
        out += ["", *notes]
    return "\n".join(out)


def _slo_text(document: dict) -> str:
    slo, window = document["slo"], document["window"]
    text = f"SLO: TTFT <= {slo['ttft_s'] * 1000:g} ms and ATGT <= {slo['atgt_s'] * 1000:g} ms"
    if slo["tbt_s"] is not None:
        text += f" and {slo['tbt_gap_percentile']}% of TBT gaps <= {slo['tbt_s'] * 1000:g} ms"
    return text + f"; window: warm-up {window['warmup_s']:g} s, cool-down {window['cooldown_s']:g} s"


def run_notes(summary: dict) -> list[str]:
    """Things a reader should know about a run that the table does not show."""
    counts, window = summary["counts"], summary["window"]
    notes = []
    if summary["partial_lines"]:
        notes.append(f"{summary['partial_lines']} unreadable line(s) skipped (cut last line of a killed run?)")
    if window["excluded"]:
        notes.append(f"{window['excluded']} request(s) outside the steady-state window")
    if counts["no_tokens"]:
        notes.append(f"{counts['no_tokens']} request(s) ended without any token (counted as misses)")
    if counts["single_token"]:
        notes.append(f"{counts['single_token']} single-token output(s): no ATGT, judged on TTFT only")
    if counts["token_count_mismatch"]:
        notes.append(f"{counts['token_count_mismatch']} request(s) whose usage token count differs "
                     "from the streamed chunks (ATGT uses the usage count)")
    if summary["throughput"]["offered_rps"] is None:
        notes.append("zero-length arrival window: rates are not defined")
    elif summary["meta"].get("request_rate") == "inf":
        notes.append("vLLM bench sent every request at once (request rate inf): rates are not meaningful")
    return notes


# --------------------------------------------------------------------------- HTML


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0.5em 1.5em 1.5em 0;font-size:0.9em}
.tables{display:flex;flex-wrap:wrap;align-items:flex-start}
th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f0f0f0}
.headline{font-size:1.4em;margin:0.2em 0}
.headline b{color:#0a5}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}
"""


def render_html(document: dict, images: dict[str, bytes]) -> str:
    """One self-contained page: headline attainment, tables, and the plots as base64 PNGs."""
    esc = html.escape
    runs = document["runs"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>Aladdin analysis</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>Aladdin analysis</h1>", f"<p>{esc(_slo_text(document))}</p>",
        '<section id="attainment">',
    ]
    for i, s in enumerate(runs):
        parts.append(f'<p class="headline">{esc(s["label"])}: joint SLO attainment '
                     f'<b id="attainment-{i}">{_pct(s["attainment"]["joint"])}</b></p>')
    parts.append("</section>")
    headers, units, rows = comparison_rows(runs, document["slo"]["tbt_s"] is not None)
    headers = [f"{h} ({u})" if u else h for h, u in zip(headers, units)]
    parts += ["<h2>Comparison</h2>", _html_table(headers, rows)]
    preemptions = preemptions_note(runs)
    if preemptions:
        parts.append(f"<p>{esc(preemptions)}</p>")
    for s in runs:
        parts += _html_run(s)
    if images:
        parts.append("<h2>Plots</h2>")
        for name, png in images.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{data}"></figure>')
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: str | Path, document: dict, images: dict[str, bytes]) -> None:
    Path(path).write_text(render_html(_plain(document), images), encoding="utf-8")


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_run(s: dict) -> list[str]:
    esc = html.escape
    keys = ["count", "mean", *(f"p{p}" for p in PERCENTILES), "max"]
    latency_rows = [[name, str(s["latency_s"][name]["count"]), *(_ms(s["latency_s"][name][k]) for k in keys[1:])]
                    for name in LATENCY_METRICS]
    att = s["attainment"]
    w = s["window"]
    parts = [
        f"<h2>Run {esc(s['label'])}</h2>",
        (f"<p>Source {esc(s['source'])} ({esc(s['format'])}); window {w['start_s']:.3f} to {w['end_s']:.3f} s "
         f"({w['requests']} requests, {w['excluded']} outside).</p>"),
        _html_table(["latency (ms)", *keys], latency_rows),
        '<div class="tables">',
        _html_table(["attainment", "share"], [[k, _pct(v)] for k, v in att.items()]),
        _html_table(["throughput", "value"], [[k, _num(v)] for k, v in s["throughput"].items()]),
        _html_table(["count", "requests"], [[k, str(v)] for k, v in s["counts"].items()]),
    ]
    for axis, sweep in s.get("sweeps", {}).items():
        rows = [[_ms(x), _pct(y)] for x, y in zip(sweep["slo_s"], sweep["joint_attainment"])]
        parts.append(_html_table([f"{axis.upper()} SLO (ms)", "joint attainment"], rows))
    parts.append("</div>")
    notes = run_notes(s)
    if notes:
        parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    return parts
