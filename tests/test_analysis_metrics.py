"""Metric definitions on hand-built records with known answers (docs/analysis.md has the formulas)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from aladdin.analysis.load import load_run_dir
from aladdin.analysis.metrics import SLO, Window, analyze_run, parse_sweep
from aladdin.errors import AladdinError
from aladdin.loadgen.records import ERROR, TIMEOUT, RequestRecord

approx = pytest.approx


def rec(i, scheduled, sent, chunks=(), tokens=None, done=None, **kw) -> RequestRecord:
    chunks = list(chunks)
    return RequestRecord(id=f"r{i}", scheduled=scheduled, requested_output_tokens=8, sent=sent,
                         chunk_times=chunks, chunk_tokens=list(tokens) if tokens is not None else [1] * len(chunks),
                         done=done, **kw)


def write_run(folder: Path, records, run_json: dict | None = None, compact: bool = True) -> Path:
    """A run folder as the replayer writes it; compact=False writes spaced JSON (the generic reader)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [r.to_json() if compact else json.dumps(asdict(r)) for r in records]
    (folder / "requests.jsonl").write_text("".join(line + "\n" for line in lines))
    if run_json is not None:
        (folder / "run.json").write_text(json.dumps(run_json))
    return folder


# The reference run: every outcome once, multi-token chunks, a single-token output.
#   r1 ttft .4 (.5 from scheduled), chunks .5/.6/.8 carrying 1/1/2 -> atgt .1, gaps .1 .1 .1
#   r2 ttft .2, chunks 1.2/1.5 carrying 3/1 (no usage count)  -> atgt .1, gaps 0 0 .3
#   r3 one token, ttft .3                                      -> no atgt, judged on TTFT
#   r4 error, r5 timeout (with a token), r6 ok without tokens  -> misses
#   r7 ttft 1.0, chunks 7.0/7.5/8.0                            -> atgt .5, gaps .5 .5
REFERENCE = [
    rec(1, 0.0, 0.1, [0.5, 0.6, 0.8], [1, 1, 2], done=0.9, output_tokens=4),
    rec(2, 1.0, 1.0, [1.2, 1.5], [3, 1], done=1.6),
    rec(3, 2.0, 2.0, [2.3], done=2.4, output_tokens=1),
    rec(4, 3.0, 3.0, done=3.1, outcome=ERROR, error="HTTP 503: busy", status=503),
    rec(5, 4.0, 4.0, [4.5], done=10.0, outcome=TIMEOUT, error="no complete answer within 6s"),
    rec(6, 5.0, 5.0, done=5.2),
    rec(7, 6.0, 6.0, [7.0, 7.5, 8.0], done=8.1, output_tokens=3),
]
SLOS = SLO(ttft=0.45, atgt=0.15)


@pytest.fixture
def reference_run(tmp_path):
    return load_run_dir(write_run(tmp_path / "ref", REFERENCE, {"label": "reference", "start_epoch": 0, "params": {}}))


def test_per_request_metrics(reference_run):
    frame = analyze_run(reference_run, SLOS, Window()).requests.set_index("id")
    assert list(frame["outcome"]) == ["ok", "ok", "ok", "error", "timeout", "no_tokens", "ok"]
    assert frame.loc["r1", "ttft"] == approx(0.4)
    assert frame.loc["r1", "ttft_from_scheduled"] == approx(0.5)
    assert frame.loc["r1", "atgt"] == approx(0.1)
    assert frame.loc["r1", "e2e"] == approx(0.8)
    assert frame.loc["r1", "tbt_max"] == approx(0.1)  # the 2-token chunk spreads its 0.2 s gap
    assert frame.loc["r2", "output_tokens"] == 4  # no usage count: the sum of chunk tokens
    assert frame.loc["r2", "atgt"] == approx(0.1)
    assert frame.loc["r2", "tbt_max"] == approx(0.3)
    assert np.isnan(frame.loc["r3", "atgt"]) and np.isnan(frame.loc["r3", "tbt_max"])
    assert frame.loc["r7", "atgt"] == approx(0.5)
    assert list(frame["ttft_ok"]) == [True, True, True, False, False, False, False]
    assert list(frame["atgt_ok"]) == [True, True, True, False, False, False, False]  # r3: single token
    assert list(frame["slo_ok"]) == [True, True, True, False, False, False, False]


def test_run_summary(reference_run):
    s = analyze_run(reference_run, SLOS, Window()).summary
    assert s["label"] == "reference"
    assert s["counts"] == {"requests": 7, "ok": 4, "errors": 1, "timeouts": 1, "no_tokens": 1,
                           "single_token": 1, "token_count_mismatch": 0}
    ttft = s["latency_s"]["ttft"]
    assert ttft["count"] == 4  # errors, timeouts and no-token requests are left out
    assert ttft["mean"] == approx(0.475) and ttft["p50"] == approx(0.35) and ttft["max"] == approx(1.0)
    assert s["latency_s"]["atgt"]["count"] == 3 and s["latency_s"]["atgt"]["max"] == approx(0.5)
    assert s["latency_s"]["tpot"] == s["latency_s"]["atgt"]
    tbt = s["latency_s"]["tbt"]  # pooled gaps: .1 .1 .1 | 0 0 .3 | .5 .5
    assert tbt["count"] == 8 and tbt["mean"] == approx(0.2) and tbt["max"] == approx(0.5)
    assert s["latency_s"]["e2e"]["max"] == approx(2.1)
    att = s["attainment"]
    assert att["ttft"] == approx(3 / 7) and att["atgt"] == approx(3 / 7) and att["joint"] == approx(3 / 7)
    assert att["ttft_from_scheduled"] == approx(2 / 7)  # r1 waited 0.1 s before it was sent
    assert att["tbt"] is None and att["tbt_gaps"] is None
    window = s["window"]
    assert (window["start_s"], window["end_s"], window["duration_s"]) == (0.0, 6.0, 6.0)
    thr = s["throughput"]
    assert thr["offered_rps"] == approx(7 / 6) and thr["achieved_rps"] == approx(7 / 6)
    assert thr["goodput_rps"] == approx(3 / 6)
    assert thr["output_tokens_per_s"] == approx(10 / 6)  # r7's tokens arrive after the window


def test_mean_gap_equals_atgt(reference_run):
    """Every token after the first has one gap, so a request's gaps sum to last - first."""
    gaps = analyze_run(reference_run, SLOS, Window()).tbt_gaps
    assert gaps.sum() == approx((0.8 - 0.5) + (1.5 - 1.2) + (8.0 - 7.0))
    assert len(gaps) == 3 + 3 + 0 + 2


def test_tbt_slo(reference_run):
    s = analyze_run(reference_run, SLO(ttft=0.45, atgt=0.15, tbt=0.2), Window()).summary
    # r1 has no late gap; r2 has 1 late gap of 3 (more than 1%); r3 has no gap at all
    assert s["attainment"]["tbt"] == approx(2 / 7)
    assert s["attainment"]["joint"] == approx(2 / 7)
    assert s["attainment"]["tbt_gaps"] == approx(5 / 8)


def test_tbt_slo_allows_one_percent_of_gaps(tmp_path):
    chunks = list(np.round(np.arange(101) * 0.01, 6))
    chunks[50] += 0.005  # one 15 ms gap, then a 5 ms one, among 100 gaps
    run = load_run_dir(write_run(tmp_path / "r", [rec(1, 0.0, 0.0, [0.1 + c for c in chunks], done=2.0)]))
    frame = analyze_run(run, SLO(1, 1, tbt=0.012), Window()).requests
    assert frame["tbt_late_gaps"].tolist() == [1] and frame["tbt_ok"].tolist() == [True]
    frame = analyze_run(run, SLO(1, 1, tbt=0.004), Window()).requests
    assert frame["tbt_ok"].tolist() == [False]


def test_window_flags(reference_run):
    result = analyze_run(reference_run, SLOS, Window(warmup=0.5, cooldown=1.5))
    assert result.requests["in_window"].tolist() == [False, True, True, True, True, False, False]
    s = result.summary
    assert s["window"]["requests"] == 4 and s["window"]["excluded"] == 3
    assert (s["window"]["start_s"], s["window"]["end_s"]) == (0.5, 4.5)
    assert s["attainment"]["joint"] == approx(2 / 4)
    assert s["throughput"]["goodput_rps"] == approx(2 / 4.0)


def test_window_too_short(reference_run):
    with pytest.raises(AladdinError, match="no steady-state window"):
        analyze_run(reference_run, SLOS, Window(warmup=3, cooldown=4))


def test_sweeps(reference_run):
    sweeps = {"atgt": np.array([0.05, 0.11, 0.5]), "ttft": np.array([0.25, 0.35, 1.0])}
    s = analyze_run(reference_run, SLOS, Window(), sweeps).summary["sweeps"]
    assert s["atgt"]["slo_s"] == [0.05, 0.11, 0.5]
    assert s["atgt"]["joint_attainment"] == approx([1 / 7, 3 / 7, 3 / 7])  # r7 misses TTFT anyway
    assert s["ttft"]["joint_attainment"] == approx([1 / 7, 2 / 7, 3 / 7])  # r7 misses ATGT anyway


def test_sweep_matches_direct_attainment(reference_run):
    grid = np.array([0.05, 0.1, 0.3])
    curve = analyze_run(reference_run, SLOS, Window(), {"atgt": grid}).summary["sweeps"]["atgt"]["joint_attainment"]
    direct = [analyze_run(reference_run, SLO(ttft=0.45, atgt=x), Window()).summary["attainment"]["joint"] for x in grid]
    assert curve == approx(direct)


def test_usage_count_drives_atgt(tmp_path):
    # the server says 5 tokens while the chunks carry 3: ATGT divides by 5 - 1
    run = load_run_dir(write_run(tmp_path / "r", [rec(1, 0.0, 0.0, [0.1, 0.3, 0.5], done=0.6, output_tokens=5)]))
    s = analyze_run(run, SLO(1, 1), Window()).summary
    assert s["latency_s"]["atgt"]["p50"] == approx(0.1)
    assert s["counts"]["token_count_mismatch"] == 1


def test_zero_token_chunks_are_ignored(tmp_path):
    run = load_run_dir(write_run(tmp_path / "r", [rec(1, 0.0, 0.0, [0.2, 0.5, 0.7], [0, 1, 1], done=0.8)]))
    frame = analyze_run(run, SLO(1, 1), Window()).requests
    assert frame["ttft"].tolist() == approx([0.5]) and frame["atgt"].tolist() == approx([0.2])


def test_compact_and_generic_readers_agree(tmp_path):
    fast = load_run_dir(write_run(tmp_path / "fast", REFERENCE))
    slow = load_run_dir(write_run(tmp_path / "slow", REFERENCE, compact=False))
    a = analyze_run(fast, SLOS, Window()).summary
    b = analyze_run(slow, SLOS, Window()).summary
    for key in ("counts", "latency_s", "attainment", "throughput"):
        assert a[key] == b[key]


def test_all_failed_run_has_empty_statistics(tmp_path):
    run = load_run_dir(write_run(tmp_path / "r", [rec(1, 0.0, 0.0, done=0.1, outcome=ERROR),
                                                  rec(2, 1.0, 1.0, done=1.1, outcome=ERROR)]))
    s = analyze_run(run, SLOS, Window()).summary
    assert s["latency_s"]["ttft"] == {"count": 0, "mean": None, "p50": None, "p90": None, "p95": None,
                                      "p99": None, "max": None}
    assert s["attainment"]["joint"] == 0.0


@pytest.mark.parametrize("kwargs", [{"ttft": 0, "atgt": 1}, {"ttft": 1, "atgt": -1}, {"ttft": 1, "atgt": 1, "tbt": 0},
                                    {"ttft": float("nan"), "atgt": 1}])
def test_slo_must_be_positive(kwargs):
    with pytest.raises(AladdinError, match="positive"):
        SLO(**kwargs)


def test_window_must_not_be_negative():
    with pytest.raises(AladdinError, match="--warmup"):
        Window(warmup=-1)


def test_parse_sweep():
    assert parse_sweep("0.02:0.2:10", "--sweep-atgt") == approx(np.linspace(0.02, 0.2, 10))


@pytest.mark.parametrize("spec", ["1:2", "a:b:3", "0:1:5", "0.2:0.1:5", "0.1:0.2:1", "0.1:0.2:2.5", "0.1:inf:3"])
def test_bad_sweep_spec(spec):
    with pytest.raises(AladdinError, match="START:STOP:COUNT"):
        parse_sweep(spec, "--sweep-atgt")
