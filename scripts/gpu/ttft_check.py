"""Does a lone request's TTFT depend on how many tokens it asks for?

The profiler's prefill experiments ask for 1 token by default; real requests ask for many.
This sends lone synthetic prompts of a few lengths asking for 1, 2 or 8 tokens, interleaved
and repeated, through the profiler's own client, and writes the TTFTs (from send) as JSON.

    python3 scripts/gpu/ttft_check.py --host http://127.0.0.1:8000 --tokenizer MODEL_DIR -o ttft_check.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from aladdin.plugin.profile.cli import _engine, _synthesizer
from aladdin.plugin.profile.profiler import prefill_samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--lengths", type=int, nargs="+", default=[32, 256, 1024])
    ap.add_argument("--outputs", type=int, nargs="+", default=[1, 2, 8])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()

    engine = _engine(args.host, None)
    _, synthesize = _synthesizer(args.tokenizer)
    engine.run_batch(synthesize(4, 64, 16, 10_000))  # warm-up
    ttft: dict[str, list[float]] = {}
    seed = 50_000
    for _ in range(args.repeats):
        for length in args.lengths:
            for out in args.outputs:
                seed += 1
                _, t = prefill_samples(engine.run_batch(synthesize(1, length, out, seed)).records)
                ttft.setdefault(f"{length}:{out}", []).append(float(t[0]))
    rows = []
    for key, values in ttft.items():
        length, out = map(int, key.split(":"))
        rows.append({"prompt_tokens": length, "output_tokens": out, "median_ms": 1e3 * float(np.median(values)),
                     "ttft_ms": [1e3 * v for v in values]})
        print(f"prompt {length:5d}  max_tokens {out:2d}  median TTFT {rows[-1]['median_ms']:7.2f} ms")
    args.output.write_text(json.dumps({"host": args.host, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
