"""The replayer's own mechanics, against benchmarks/stream_server.py.

That server answers on a known schedule; it is a fake on purpose, because the point of these
tests is the client (Locust fabric, sharding, error handling, timing), not a model server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

import pytest

from aladdin.cluster import free_port_block
from aladdin.loadgen.records import iter_records

ROOT = Path(__file__).resolve().parents[1]


def start_fake(port: int, ttft: float = 0.02, tbt: float = 0.005, error_every: int = 0,
               keepalive: float = 75.0) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "stream_server.py"), "--port", str(port),
         "--ttft", str(ttft), "--tbt", str(tbt), "--error-every", str(error_every), "--keepalive", str(keepalive)],
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "fake server did not start"
            time.sleep(0.05)


@pytest.fixture
def fake_server():
    started = []

    def start(**kw):
        port = free_port_block(1)
        started.append(start_fake(port, **kw))
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in started:
        proc.terminate()
        proc.wait()


def replay(url: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "aladdin", "replay", "--host", url, "--output", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_server_errors_are_recorded_and_the_run_goes_on(fake_server, tmp_path):
    url = fake_server(error_every=4)
    proc = replay(url, tmp_path / "run", "--dataset", "synthetic", "--prompt-tokens", "16", "--output-tokens", "8",
                  "--rate", "20", "-n", "40")
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = list(iter_records(tmp_path / "run" / "requests.jsonl"))
    assert len(records) == 40
    errors = [r for r in records if r["outcome"] == "error"]
    assert len(errors) == 10
    assert all(r["status"] == 500 and "injected failure" in r["error"] for r in errors)
    ok = [r for r in records if r["outcome"] == "ok"]
    assert all(sum(r["chunk_tokens"]) == 8 and r["worker"] == "fake-0" for r in ok)
    summary = json.loads((tmp_path / "run" / "run.json").read_text())["summary"]
    assert (summary["ok"], summary["error"]) == (30, 10)


def test_connections_closed_by_an_idle_server_are_not_errors(fake_server, tmp_path):
    """The server drops idle keep-alive connections between requests (as vLLM's uvicorn does after 5 s).

    When such a drop meets a send (seen against vLLM), the request fails before any response
    byte and the client sends it once more; here the drops fall between requests.
    """
    url = fake_server(keepalive=0.25)
    proc = replay(url, tmp_path / "run", "--dataset", "synthetic", "--prompt-tokens", "8", "--output-tokens", "4",
                  "--arrival", "constant", "--rate", "4", "-n", "24")
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = list(iter_records(tmp_path / "run" / "requests.jsonl"))
    assert [r["outcome"] for r in records] == ["ok"] * 24, [r["error"] for r in records]


@pytest.mark.slow
def test_two_locust_processes_share_one_schedule(fake_server, tmp_path):
    """--processes 2: a master shards the schedule to two workers; records come back whole."""
    url = fake_server()
    proc = replay(url, tmp_path / "run", "--dataset", "synthetic", "--prompt-tokens", "16", "--output-tokens", "4",
                  "--rate", "40", "-n", "120", "--processes", "2", "--api", "chat")
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = list(iter_records(tmp_path / "run" / "requests.jsonl"))
    assert sorted(r["id"] for r in records) == [f"r{i:03d}" for i in range(120)]
    assert len({r["client"] for r in records}) == 2
    schedule = {json.loads(line)["id"]: json.loads(line)["offset"] for line in open(tmp_path / "run" / "schedule.jsonl")}
    for rec in records:
        assert rec["outcome"] == "ok"
        assert rec["scheduled"] == pytest.approx(schedule[rec["id"]])
        assert rec["chunk_times"][0] - rec["sent"] >= 0.019  # the server's 20 ms TTFT (its timer may fire 1 ms early)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["locust_role"] == "master" and run["locust_workers"] == 2


TRACE = str(ROOT / "tests" / "data" / "azure_sample.csv")
# Every workload flag of `aladdin replay`: a value other than its default, and what run.json must record.
WORKLOAD_FLAGS = {
    "dataset": ("trace", "trace"),
    "dataset_path": (TRACE, TRACE),
    "num_requests": ("4", 4),
    "arrival": ("trace", "trace"),
    "rate": ("3.5", 3.5),
    "cv": ("2.5", 2.5),
    "seed": ("7", 7),
    "time_scale": ("0.01", 0.01),
    "min_prompt_tokens": ("10", 10),
    "max_prompt_tokens": ("900", 900),
    "min_output_tokens": ("6", 6),
    "max_output_tokens": ("64", 64),
    "max_total_tokens": ("1000", 1000),
    "prompt_tokens": ("16:32", [16, 32]),
    "output_tokens": ("8", [8, 8]),
}


def test_run_json_records_every_workload_flag(fake_server, tmp_path, tiny_model_dir):
    """Provenance: run.json's params.workload is the workload the flags asked for, field by field.

    Against the fake server, on purpose: the point is what the replayer records, not a model server.
    """
    import click

    from aladdin.loadgen.cli import workload_options
    from aladdin.loadgen.workload import WorkloadConfig

    wanted = {**WORKLOAD_FLAGS, "tokenizer": (str(tiny_model_dir), str(tiny_model_dir))}
    params = click.command()(workload_options(lambda **_: None)).params
    assert {p.name for p in params} == set(wanted), "a new workload flag needs a value here"
    flags = [arg for p in params for arg in (p.opts[0], wanted[p.name][0])]
    url = fake_server(tbt=0.0005)
    proc = replay(url, tmp_path / "run", *flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["params"]["workload"]
    default = json.loads(json.dumps(asdict(WorkloadConfig())))
    for name, (_, value) in wanted.items():
        assert value != default[name], f"{name}: the test must give a value other than the default"
        assert recorded[name] == value, name
    assert len(list(iter_records(tmp_path / "run" / "requests.jsonl"))) == 4


@pytest.mark.parametrize(
    "args,message",
    [
        (["--rate", "0"], "--rate must be > 0"),
        (["--rate", "-1"], "--rate must be > 0"),
        (["--dataset", "trace"], "--dataset trace needs --dataset-path"),
        (["--dataset", "trace", "--dataset-path", "/nonexistent/trace.csv"], "/nonexistent/trace.csv"),
        (["--dataset", "trace", "--dataset-path", "/nonexistent/trace.csv", "--rate", "2"],
         "--rate does not apply to a trace's own timestamps; add --arrival poisson"),
        (["--dataset-path", "/nonexistent/sharegpt.json"], "/nonexistent/sharegpt.json"),
    ],
)
def test_bad_replay_input_is_one_line(fake_server, tmp_path, args, message):
    url = fake_server()
    proc = replay(url, tmp_path / "run", *args)
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_trace_replay_honours_timestamps_times_scale(fake_server, tmp_path):
    url = fake_server(tbt=0.001)
    trace = ROOT / "tests" / "data" / "azure_sample.csv"
    proc = replay(url, tmp_path / "run", "--dataset", "trace", "--dataset-path", str(trace), "--arrival", "trace",
                  "--time-scale", "0.5", "-n", "100")
    assert proc.returncode == 0, proc.stderr[-2000:]
    import pandas as pd

    stamps = pd.to_datetime(pd.read_csv(trace)["TIMESTAMP"]).sort_values()
    expected = ((stamps - stamps.iloc[0]).dt.total_seconds() * 0.5).to_numpy()
    records = sorted(iter_records(tmp_path / "run" / "requests.jsonl"), key=lambda r: r["scheduled"])
    assert len(records) == len(expected)
    assert [r["scheduled"] for r in records] == pytest.approx(expected)
    assert all(r["outcome"] == "ok" for r in records)


def locust_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(ROOT / "loadgen" / "locustfile.py"), *args]


@pytest.mark.slow
def test_plain_locustfile_with_separate_master_and_worker(fake_server, tmp_path):
    """`locust --master` and `locust --worker` as separate processes, as on several hosts."""
    url = fake_server()
    port = free_port_block(1)
    out = tmp_path / "run"
    master = subprocess.Popen(
        locust_cmd("--master", "--master-bind-port", str(port), "--expect-workers", "1", "--headless", "-u", "1",
                   "-r", "1", "--host", url, "--dataset", "synthetic", "--rate", "10", "--num-requests", "30",
                   "--output", str(out), "--exit-code-on-error", "0"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    worker = subprocess.Popen(locust_cmd("--worker", "--master-port", str(port)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log, _ = master.communicate(timeout=240)
        assert master.returncode == 0, log[-3000:]
        worker.wait(timeout=60)
    finally:
        for proc in (master, worker):
            if proc.poll() is None:
                proc.kill()
    records = list(iter_records(out / "requests.jsonl"))
    assert len(records) == 30 and all(r["outcome"] == "ok" for r in records)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["locust_role"] == "master"
    assert run["params"]["workload"]["dataset"] == "synthetic"
