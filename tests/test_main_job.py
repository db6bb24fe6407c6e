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
    out = tmp_path / "demo"
    proc = aladdin("demo", "-n", "10", "--rate", "4", "--max-output-tokens", "48", "--base-port",
                   free_port_block(1), "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert "attained" in proc.stdout and lines[-1].startswith("demo")  # it ends with the SLO table
    assert (out / "report.html").exists() and (out / "analysis.json").exists()
    assert not (out / "cluster" / "state.json").exists()  # the worker was stopped
