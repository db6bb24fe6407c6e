"""A dense sweep of lone-prompt TTFTs, added to a profile's raw samples as ``prefill_sweep``.

The profiler measures 13 prompt lengths (3 repeats each) and fits ``a*n + q*n^2 + c`` to them.
vLLM pads a prefill to its CUDA-graph sizes (steps of 8 and 16 up to 512 tokens) and runs larger
ones without a graph, so a prefill model of the engine's shape (piecewise by padded size, say)
needs more points than that, around 512 tokens above all. This sends lone synthetic prompts
(1 output token, through the profiler's own client, lengths shuffled within each repeat so a
slow drift does not follow the length) and writes them into PROFILE's ``samples`` as
``prefill_sweep: {prompt_tokens, time, repeat}`` (prompt tokens as the server counted them,
BOS included; TTFT from send, in seconds), so the prefill model can be refitted without a GPU.
The profile's models are not touched. Prints the median TTFT per length beside the profile's
prediction.

    python3 scripts/gpu/prefill_sweep.py --host http://127.0.0.1:8000 --tokenizer MODEL_DIR PROFILE.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from aladdin.plugin.profile.cli import _engine, _synthesizer
from aladdin.plugin.profile.io import load_profile
from aladdin.plugin.profile.profiler import prefill_samples

DEFAULT_LENGTHS = sorted(set(range(16, 1025, 24)) | set(range(1152, 4001, 256)) | {4000})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--host", required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--lengths", type=int, nargs="+", default=DEFAULT_LENGTHS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    perf = load_profile(args.profile)
    engine = _engine(args.host, None)
    _, synthesize = _synthesizer(args.tokenizer)
    engine.run_batch(synthesize(4, 64, 16, 20_000))  # warm-up
    rng = np.random.default_rng(args.seed)
    prompts, times, repeats = [], [], []
    seed = 60_000
    for rep in range(args.repeats):
        for length in rng.permutation(args.lengths):
            seed += 1
            n, t = prefill_samples(engine.run_batch(synthesize(1, int(length), 1, seed)).records)
            prompts.append(float(n[0]))
            times.append(float(t[0]))
            repeats.append(rep)

    doc = json.loads(args.profile.read_text())
    doc.setdefault("samples", {})["prefill_sweep"] = {"prompt_tokens": prompts, "time": times, "repeat": repeats}
    partial = args.profile.with_name(args.profile.name + ".partial")
    partial.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(partial, args.profile)

    p, t = np.array(prompts), np.array(times)
    print(f"{'tokens':>6} {'median ms':>10} {'model ms':>9} {'error %':>8}")
    for n in np.unique(p):
        med = float(np.median(t[p == n]))
        pred = float(perf.prefill.time_single(np.array([n]))[0])
        print(f"{int(n):6d} {1e3 * med:10.2f} {1e3 * pred:9.2f} {100 * (pred - med) / med:+8.1f}")
    print(f"added {len(p)} samples to {args.profile} (samples.prefill_sweep)")


if __name__ == "__main__":
    main()
