"""Lone held-out ShareGPT prompts: does their TTFT depend on the tokens they ask for?

On the H200 (vLLM 0.26, Llama-2-7B shape) the held-out ShareGPT prompts of
``aladdin profile validate`` (asking for their real output length, up to 256 tokens) took ~5 ms
longer to the first token than synthetic prompts of the same length asking for 1-8 tokens
(the profile's own prefill experiments and prefill_sweep.py), which is most of the prefill
model's validation error at short prompts. This sends the same held-out prompts alone (same
seed and sample as validate's prefill half, a fresh tag in front of each so no prefix cache
helps), each asking for 1, 8 and its real output length in turn, interleaved, and writes every
TTFT (from send, through the profiler's own client) as JSON.

    python3 scripts/gpu/ttft_sharegpt.py --host http://127.0.0.1:8000 --tokenizer MODEL_DIR -o ttft_sharegpt.json
"""

from __future__ import annotations

import argparse
import json
import secrets
from dataclasses import replace
from pathlib import Path

import numpy as np

from aladdin.loadgen.datasets import load_sharegpt
from aladdin.plugin.profile.cli import _engine, _synthesizer
from aladdin.plugin.profile.profiler import prefill_samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("-n", "--num-requests", type=int, default=160, help="validate's -n (its first half is used)")
    ap.add_argument("--max-output-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--use", type=int, default=40, help="how many of the prefill half to send")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()

    engine = _engine(args.host, None)
    tok, synthesize = _synthesizer(args.tokenizer)
    engine.run_batch(synthesize(4, 64, 16, 30_000))  # warm-up
    specs = load_sharegpt(tok, args.num_requests, seed=args.seed, max_output_tokens=args.max_output_tokens)
    specs = specs[: args.num_requests // 2][: args.use]
    rows = []
    for spec in specs:
        row = {"source_id": spec.source_id, "real_output_tokens": spec.output_tokens}
        for label, out in (("1", 1), ("8", 8), ("real", spec.output_tokens)):
            s = replace(spec, prompt=f"{secrets.token_hex(4)} {spec.prompt}", output_tokens=out)
            n, t = prefill_samples(engine.run_batch([s]).records)
            row["prompt_tokens"] = int(n[0])
            row[f"ttft_ms_out_{label}"] = 1e3 * float(t[0])
        rows.append(row)
    summary = {label: float(np.median([r[f"ttft_ms_out_{label}"] for r in rows])) for label in ("1", "8", "real")}
    print("median TTFT (ms) by requested output tokens:", {k: round(v, 2) for k, v in summary.items()})
    args.output.write_text(json.dumps({"host": args.host, "median_ms": summary, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
