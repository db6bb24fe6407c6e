"""Timing fidelity of the replayer against a server that answers on a known schedule.

For each offered rate, replays synthetic requests (``--output-tokens`` tokens each) at
``benchmarks/stream_server.py`` (first token after ``--ttft``, then one every ``--tbt``) and
reports what the client adds: dispatch lag, event-loop lag, achieved vs scheduled rate,
streamed chunks/s, and measured minus configured TTFT and TBT. The largest rate whose
dispatch-lag p99 stays <= 2 ms is the sustainable rate of that many Locust processes.

    .venv/bin/python benchmarks/bench_replay_timing.py --rates 50,100,200,300 --processes 1 \
        --out benchmarks/results/replay_timing.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aladdin.loadgen.records import iter_records  # noqa: E402


def start_server(port: int, ttft: float, tbt: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "stream_server.py"), "--port", str(port),
                             "--ttft", str(ttft), "--tbt", str(tbt)])
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("stream server did not start")


def pct(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def measure(url: str, rate: float, duration: float, processes: int, output_tokens: int, ttft: float, tbt: float) -> dict:
    n = max(20, int(rate * duration))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "aladdin", "replay", "--host", url, "--output", str(out), "--dataset", "synthetic",
               "--prompt-tokens", "16", "--output-tokens", str(output_tokens), "--rate", str(rate), "-n", str(n),
               "--arrival", "poisson", "--processes", str(processes)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        summary = json.loads((out / "run.json").read_text())["summary"]
        records = [r for r in iter_records(out / "requests.jsonl") if r["outcome"] == "ok"]
    ttft_err = [(r["chunk_times"][0] - r["sent"] - ttft) * 1e3 for r in records]
    tbt_err = np.concatenate([np.diff(r["chunk_times"]) - tbt for r in records if len(r["chunk_times"]) > 1]) * 1e3
    chunks = sum(len(r["chunk_times"]) for r in records)
    first = min(r["chunk_times"][0] for r in records)
    last = max(r["chunk_times"][-1] for r in records)
    return {
        "rate": rate,
        "processes": processes,
        "requests": n,
        "ok": len(records),
        "schedule_rate": summary["schedule_rate"],
        "achieved_rate": summary["achieved_rate"],
        "chunks_per_s": chunks / (last - first),
        "chunks_per_s_per_process": chunks / (last - first) / processes,
        "dispatch_lag_p50_ms": summary["dispatch_lag"]["p50_ms"],
        "dispatch_lag_p99_ms": summary["dispatch_lag"]["p99_ms"],
        "loop_lag_p99_ms": summary["loop_lag"]["p99_ms"],
        "ttft_error_p50_ms": pct(ttft_err, 50),
        "ttft_error_p99_ms": pct(ttft_err, 99),
        "tbt_error_p50_ms": pct(tbt_err, 50),
        "tbt_error_p99_ms": pct(tbt_err, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="25,50,100,200,300")
    parser.add_argument("--processes", default="1", help="comma-separated Locust process counts")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of schedule per point")
    parser.add_argument("--output-tokens", type=int, default=100)
    parser.add_argument("--ttft", type=float, default=0.05)
    parser.add_argument("--tbt", type=float, default=0.01)
    parser.add_argument("--port", type=int, default=8998)
    parser.add_argument("--out", default="benchmarks/results/replay_timing.json")
    args = parser.parse_args()

    server = start_server(args.port, args.ttft, args.tbt)
    rows = []
    try:
        for processes in [int(p) for p in args.processes.split(",")]:
            for rate in [float(r) for r in args.rates.split(",")]:
                row = measure(f"http://127.0.0.1:{args.port}", rate, args.duration, processes, args.output_tokens,
                              args.ttft, args.tbt)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait()

    cols = ["processes", "rate", "achieved_rate", "chunks_per_s", "dispatch_lag_p50_ms", "dispatch_lag_p99_ms",
            "loop_lag_p99_ms", "ttft_error_p50_ms", "ttft_error_p99_ms", "tbt_error_p50_ms", "tbt_error_p99_ms"]
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in cols))
    sustainable = {}
    for row in rows:
        if row["dispatch_lag_p99_ms"] is not None and row["dispatch_lag_p99_ms"] <= 2.0:
            p = row["processes"]
            if row["rate"] > sustainable.get(p, {}).get("rate", 0):
                sustainable[p] = {"rate": row["rate"], "chunks_per_s": row["chunks_per_s"]}
    print("max rate with dispatch lag p99 <= 2 ms:", json.dumps(sustainable))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "args": vars(args), "rows": rows, "sustainable": sustainable}, indent=2))


if __name__ == "__main__":
    main()
