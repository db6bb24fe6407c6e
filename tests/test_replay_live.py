"""The replayer against the shared real vLLM CPU server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aladdin.loadgen.records import iter_records


def replay_cmd(url: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "aladdin", "replay", "--host", url, "--output", str(out), *extra]


def assert_complete(rec: dict) -> None:
    """A finished ok record: monotone timestamps and exactly the requested output length."""
    assert rec["outcome"] == "ok", rec["error"]
    times = [rec["scheduled"] - 1e-9, rec["dispatched"], rec["sent"], rec["first_byte"], *rec["chunk_times"], rec["done"]]
    assert rec["dispatched"] >= rec["scheduled"] - 0.005  # never early by more than a timer tick
    assert times[1:] == sorted(times[1:])
    assert sum(rec["chunk_tokens"]) == rec["requested_output_tokens"] == rec["output_tokens"]


@pytest.mark.vllm
@pytest.mark.slow
def test_sharegpt_replay_records_every_token(vllm_server, tmp_path):
    """Acceptance: the README's replay command at 2 req/s, 50 ShareGPT requests."""
    out = tmp_path / "run"
    cmd = replay_cmd(vllm_server.url, out, "--dataset", "sharegpt", "--rate", "2", "--num-requests", "50")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = list(iter_records(out / "requests.jsonl"))
    assert len(records) == 50
    for rec in records:
        assert_complete(rec)
        assert rec["prompt_tokens"] >= rec["expected_prompt_tokens"]  # the server adds BOS
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished"
    assert run["summary"]["ok"] == 50 and run["summary"]["requests"] == 50
    assert run["params"]["workload"]["rate"] == 2.0
    assert {"p50_ms", "p99_ms", "max_ms"} <= set(run["summary"]["dispatch_lag"])


@pytest.mark.vllm
def test_killed_replay_keeps_every_finished_request(vllm_server, tmp_path):
    out = tmp_path / "run"
    cmd = replay_cmd(vllm_server.url, out, "--dataset", "synthetic", "--prompt-tokens", "32",
                     "--output-tokens", "24", "--rate", "4", "--num-requests", "200")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    records_file = out / "requests.jsonl"
    deadline = time.monotonic() + 240
    try:
        while not (records_file.exists() and records_file.read_text().count("\n") >= 5):
            assert proc.poll() is None, "replay ended before it could be killed"
            assert time.monotonic() < deadline, "no records written in time"
            time.sleep(0.2)  # polling the file: the replay is another process
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    lines = records_file.read_text().splitlines()
    stats: dict = {}
    records = list(iter_records(records_file, stats))
    assert 5 <= len(records) < 200
    assert stats["partial_lines"] <= 1 and len(records) >= len(lines) - 1
    for rec in records:
        assert_complete(rec)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "running"  # killed: the parameters are still there
