"""Lone prefills of real ShareGPT prompts, to fit a profile's prefill model on realistic requests.

The profiler's prefill points are synthetic prompts, which on the H200 pay 3-5 ms less fixed cost
than real ShareGPT prompts of equal length (benchmarks/RESULTS.md, "H200 profiles"). This sends
N ShareGPT prompts of a seed other than the held-out sample's (12345) exactly as
``aladdin profile validate`` sends its prefill half (text, a fresh tag in front, alone, through the
profiler's client), each ``--repeats`` times in shuffled order, asking for min(real output length,
``--ask-tokens``) tokens (TTFT does not depend on it: the 1, 8 and real-length medians of
``profile_validation_h200_7b_ttft.json`` are within noise, and fewer tokens keep the run short),
and writes the samples as JSON for benchmarks/refit_prefill_h200.py: per request the ShareGPT
source id, the SHA-1 of its prompt text (the refit checks it against the held-out sample), the
prompt tokens as the server counted them, the TTFT from send (s) and the repeat.

    python3 scripts/gpu/prefill_sharegpt.py --host http://127.0.0.1:8000 --tokenizer MODEL_DIR -o OUT.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys
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
    ap.add_argument("-n", "--num-requests", type=int, default=240)
    ap.add_argument("--seed", type=int, default=777, help="ShareGPT sample seed (not validate's 12345)")
    ap.add_argument("--max-output-tokens", type=int, default=256, help="validate's sample limit, so the same prompt mix")
    ap.add_argument("--ask-tokens", type=int, default=16, help="at most this many output tokens per request")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()

    engine = _engine(args.host, None)
    tok, synthesize = _synthesizer(args.tokenizer)
    engine.run_batch(synthesize(4, 64, 16, 40_000))  # warm-up
    specs = load_sharegpt(tok, args.num_requests, seed=args.seed, max_output_tokens=args.max_output_tokens)
    rng = np.random.default_rng(args.seed)
    columns: dict[str, list] = {"source_id": [], "prompt_sha1": [], "prompt_tokens": [], "time": [], "repeat": []}
    for rep in range(args.repeats):
        for i in rng.permutation(len(specs)):
            spec = specs[i]
            sent = replace(spec, prompt=f"{secrets.token_hex(4)} {spec.prompt}",
                           output_tokens=min(spec.output_tokens, args.ask_tokens))
            n, t = prefill_samples(engine.run_batch([sent]).records)
            columns["source_id"].append(spec.source_id)
            columns["prompt_sha1"].append(hashlib.sha1(spec.prompt.encode()).hexdigest())
            columns["prompt_tokens"].append(float(n[0]))
            columns["time"].append(float(t[0]))
            columns["repeat"].append(rep)
    document = {
        "what": "lone prefills of real ShareGPT prompts (scripts/gpu/prefill_sharegpt.py)",
        "command": "python3 scripts/gpu/prefill_sharegpt.py " + " ".join(sys.argv[1:]),
        "vllm_version": engine.info.vllm_version, "seed": args.seed, "num_requests": len(specs),
        "max_output_tokens": args.max_output_tokens, "ask_tokens": args.ask_tokens, "repeats": args.repeats,
        "samples": columns,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    t = np.array(columns["time"])
    print(f"wrote {args.output}: {t.size} lone prefills of {len(specs)} prompts, median TTFT {1e3 * np.median(t):.2f} ms")


if __name__ == "__main__":
    main()
