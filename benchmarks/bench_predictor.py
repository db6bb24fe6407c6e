"""Output-length predictor error on ShareGPT, online (predict each request, then learn it).

    python benchmarks/bench_predictor.py --num-requests 10000 --out benchmarks/results/predictor.json

Conversations in the dataset's order (a random sample, seeded), tokens counted with the real
32k tokenizer; the first ``--warmup`` requests are learned but not scored. Rows: the paper's
bucket mean, bucket quantiles, and the cold-start constant as the no-learning reference.
"rel. spread" is the std of (actual - predicted) / predicted: the kv-chance filter's length_cv.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from aladdin.loadgen.datasets import load_sharegpt, load_tokenizer
from aladdin.modeldir import default_model_dir
from aladdin.plugin.core.predictor import PredictorConfig, evaluate_online

CONFIGS = {
    "bucket mean (default)": PredictorConfig(),
    "bucket median": PredictorConfig(quantile=0.5),
    "bucket p75": PredictorConfig(quantile=0.75),
    "bucket p90": PredictorConfig(quantile=0.9),
    "constant 256 (no learning)": PredictorConfig(min_samples=10**9),  # never enough samples: the cold-start default
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=10000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("predictor.json"))
    args = parser.parse_args()

    specs = load_sharegpt(load_tokenizer(default_model_dir("tiny")), args.num_requests, seed=args.seed)
    prompts = np.array([s.prompt_tokens for s in specs])
    outputs = np.array([s.output_tokens for s in specs])
    print(f"{len(specs)} ShareGPT requests: mean prompt {prompts.mean():.0f}, mean output {outputs.mean():.0f} tokens; "
          f"warm-up {args.warmup}")
    print(f"{'predictor':<26} {'MAE tokens':>10} {'median |err| %':>15} {'under-predicted':>16} {'bias tokens':>12} "
          f"{'rel. spread':>11}")
    rows = []
    for name, config in CONFIGS.items():
        errors = evaluate_online(prompts, outputs, config, warmup=args.warmup)
        rows.append({"predictor": name, "config": config.__dict__, **errors.to_dict()})
        print(f"{name:<26} {errors.mean_abs_error:>10.1f} {errors.median_abs_pct_error:>14.1f}% "
              f"{100 * errors.under_prediction_rate:>15.1f}% {errors.mean_error:>12.1f} {errors.relative_spread:>11.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
