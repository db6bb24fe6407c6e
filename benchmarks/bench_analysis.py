"""Time the analysis on a large synthetic run: load + metrics + JSON, and peak memory.

    python benchmarks/bench_analysis.py --n 1000000 --out bench_analysis.json

Writes a synthetic ``requests.jsonl`` of N records (Poisson arrivals, ~1% errors and a few
timeouts, multi-token chunks), then times each stage in this process and reports the peak
resident memory from ``resource.getrusage`` (the generator runs in a child process so it does
not count). ``--records DIR`` analyses an existing run folder instead.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_synthetic_run(folder: Path, n: int, mean_tokens: float, rate: float, seed: int = 0) -> int:
    """Write N schema-1 records the way the replayer would; returns the total chunk count."""
    rng = np.random.default_rng(seed)
    scheduled = np.cumsum(rng.exponential(1 / rate, n))
    sent = scheduled + rng.exponential(0.0005, n)
    first = sent + 0.05 + rng.gamma(2.0, 0.05, n)
    outcome = rng.choice(np.array(["ok", "error", "timeout"]), n, p=[0.988, 0.01, 0.002])
    out_tokens = np.minimum(rng.geometric(1 / mean_tokens, n), 1024)
    out_tokens[outcome == "error"] = 0  # a failed request streamed nothing
    # chunk sizes: mostly one token, sometimes two or three (stream batching), cut at request ends
    request_ends = np.cumsum(out_tokens)
    total = int(request_ends[-1])
    size_ends = np.cumsum(rng.choice([1, 2, 3], size=total, p=[0.9, 0.08, 0.02]))
    chunk_ends = np.union1d(size_ends[size_ends < total], request_ends[out_tokens > 0])
    chunk_tokens = np.diff(chunk_ends, prepend=0)
    owner = np.searchsorted(request_ends, chunk_ends, side="left")
    n_chunks = np.bincount(owner, minlength=n)
    bounds = np.concatenate(([0], np.cumsum(n_chunks)))
    steps = rng.gamma(4.0, 0.006, len(chunk_ends))
    steps[bounds[:-1][n_chunks > 0]] = 0.0
    since_start = np.cumsum(steps)
    chunk_times = first[owner] + since_start - since_start[bounds[:-1]][owner]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({"label": "synthetic", "start_epoch": 0.0, "params": {"n": n}}))
    times_list, tokens_list = chunk_times.tolist(), chunk_tokens.tolist()
    scheduled_list, sent_list, outcome_list = scheduled.tolist(), sent.tolist(), outcome.tolist()
    out_list, bounds_list = out_tokens.tolist(), bounds.tolist()
    with open(folder / "requests.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            lo, hi, t_sent = bounds_list[i], bounds_list[i + 1], sent_list[i]
            ok = outcome_list[i] == "ok"
            record = {
                "id": f"req-{i}", "scheduled": scheduled_list[i], "requested_output_tokens": out_list[i],
                "dispatched": t_sent - 0.0001, "sent": t_sent, "first_byte": t_sent + 0.01,
                "chunk_times": times_list[lo:hi], "chunk_tokens": tokens_list[lo:hi],
                "done": times_list[hi - 1] + 0.001 if hi > lo else t_sent + 0.01,
                "prompt_tokens": 200 if ok else None, "output_tokens": out_list[i] if ok else None,
                "expected_prompt_tokens": 200, "status": 200 if ok else 503, "outcome": outcome_list[i],
                "error": None if ok else "synthetic failure", "worker": f"w{i % 4}", "client": "c0", "schema": 1,
            }
            fh.write(json.dumps(record, separators=(",", ":")) + "\n")
    return len(chunk_times)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=float, default=1e6, help="records to generate (default 1e6)")
    parser.add_argument("--mean-tokens", type=float, default=32, help="mean output tokens per request")
    parser.add_argument("--rate", type=float, default=50.0, help="arrival rate of the synthetic schedule (req/s)")
    parser.add_argument("--records", type=Path, help="analyse this run folder instead of generating one")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args(argv)

    from aladdin.analysis.load import load_runs
    from aladdin.analysis.metrics import SLO, Window, analyze_run, parse_sweep
    from aladdin.analysis.report import json_document, write_json

    with tempfile.TemporaryDirectory(prefix="bench-analysis-") as tmp:
        folder = args.records or Path(tmp) / "run"
        gen_s = None
        if args.records is None:
            t = time.perf_counter()
            # in a child process, so its memory does not count in this process's peak RSS
            child = multiprocessing.get_context("fork").Process(
                target=write_synthetic_run, args=(folder, int(args.n), args.mean_tokens, args.rate))
            child.start()
            child.join()
            if child.exitcode != 0:
                raise SystemExit(f"generating the synthetic run failed (exit code {child.exitcode})")
            gen_s = time.perf_counter() - t
        file_mib = (folder / "requests.jsonl").stat().st_size / 2**20
        rss_before = peak_rss_mib()
        slo, window = SLO(ttft=0.3, atgt=0.03, tbt=0.05), Window(warmup=60, cooldown=60)
        sweeps = {"atgt": parse_sweep("0.01:0.1:10", "--sweep-atgt"), "ttft": parse_sweep("0.1:1:10", "--sweep-ttft")}
        t0 = time.perf_counter()
        runs = load_runs([folder])
        t1 = time.perf_counter()
        analyses = [analyze_run(run, slo, window, sweeps) for run in runs]
        t2 = time.perf_counter()
        write_json(Path(tmp) / "analysis.json", json_document(analyses, slo, window))
        t3 = time.perf_counter()
    run = runs[0]
    result = {
        "records": len(run.requests),
        "chunks": len(run.chunk_times),
        "file_mib": round(file_mib, 1),
        "generate_s": None if gen_s is None else round(gen_s, 2),
        "load_s": round(t1 - t0, 2),
        "metrics_s": round(t2 - t1, 2),
        "json_s": round(t3 - t2, 2),
        "total_s": round(t3 - t0, 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "peak_rss_before_analysis_mib": round(rss_before, 1),
        "joint_attainment": analyses[0].summary["attainment"]["joint"],
    }
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
