"""The main job on real vLLM: replay -> analyze -> report, and the README's `aladdin demo`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aladdin.cluster import free_port_block


def aladdin(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aladdin", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.vllm
@pytest.mark.slow
def test_analyze_a_real_replay(vllm_server, tmp_path, chromium):
    run = tmp_path / "run"
    proc = aladdin("replay", "--host", vllm_server.url, "--rate", "3", "-n", "16", "--max-output-tokens", "64",
                   "--output", run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "analysis"
    proc = aladdin("analyze", run, "--ttft-slo", "0.5", "--atgt-slo", "0.05", "--json", out / "a.json",
                   "--csv", out / "a.csv", "--report", out / "report.html", "--plots", out / "plots",
                   "--sweep-atgt", "0.005:0.05:10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "attained" in proc.stdout and "run" in proc.stdout  # the terminal table
    summary = json.loads((out / "a.json").read_text())["runs"][0]
    assert summary["counts"]["requests"] == 16
    assert len((out / "a.csv").read_text().splitlines()) == 17
    assert {p.name for p in (out / "plots").iterdir()} >= {"cdf_ttft.png", "cdf_atgt.png", "timeseries.png"}
    dom, shot = chromium(out / "report.html")
    assert 'id="attainment-0"' in dom
    assert shot.stat().st_size > 10_000


@pytest.mark.vllm
@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    """The README's main command, shortened: plugin workers under two router policies, then stock."""
    out = tmp_path / "demo"
    proc = aladdin("demo", "-n", "8", "--rate", "4", "--max-output-tokens", "32", "--base-port",
                   free_port_block(3), "--output", out, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.strip()}
    assert {"aladdin", "jsq", "stock-rr"} <= set(rows) and "preemptions" in rows["run"]
    assert all(rows[run][1] == "8" for run in ("aladdin", "jsq", "stock-rr"))  # every request, every run
    document = json.loads((out / "analysis.json").read_text())
    assert [run["label"] for run in document["runs"]] == ["aladdin", "jsq", "stock-rr"]
    assert all(run["preemptions"]["count"] is not None for run in document["runs"])  # the workers' counters
    assert (out / "report.html").exists()
    for run in ("aladdin", "jsq"):  # placed by the router, on plugin workers that time their decode steps
        scales = [line for line in (out / run / "router_metrics.txt").read_text().splitlines()
                  if line.startswith("aladdin_router_worker_decode_scale{")]
        assert len(scales) == 2 and all(float(line.split()[-1]) > 0 for line in scales)
        workers = {json.loads(line).get("worker") for line in (out / run / "requests.jsonl").read_text().splitlines()}
        assert workers and None not in workers
    for cluster in ("cluster-plugin", "cluster-stock"):
        assert not (out / cluster / "state.json").exists()  # the workers were stopped
        assert (out / cluster / "worker0.log").exists()


@pytest.mark.vllm
@pytest.mark.slow
def test_demo_through_envoy_and_the_picker(tmp_path):
    """``--gateway envoy``: the same placement, asked by Envoy over ext_proc (aladdin picker)."""
    out = tmp_path / "demo"
    proc = aladdin("demo", "-n", "6", "--rate", "4", "--max-output-tokens", "32", "--policy", "aladdin", "--no-stock",
                   "--gateway", "envoy", "--base-port", free_port_block(6), "--output", out, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.strip()}
    assert rows["aladdin"][1] == "6"
    log = [json.loads(line) for line in (out / "aladdin" / "envoy_access.log").read_text().splitlines()]
    completions = [line for line in log if line["path"] == "/v1/completions"]
    assert len(completions) == 6 and all(line["status"] == 200 for line in completions)
    assert all(line["picked"] == line["served"] for line in completions)  # placed by the picker, served there
    metrics = (out / "aladdin" / "router_metrics.txt").read_text()
    assert 'aladdin_router_requests_total{outcome="picked"} 6' in metrics
