"""Refit the H200 profiles' prefill model on realistic requests and re-validate it, without a GPU.

The profiles' prefill model was fitted on synthetic prompts, which pay 3-5 ms less fixed cost than
real ShareGPT prompts of equal length, and misses its goal on the held-out ShareGPT prompts
(benchmarks/RESULTS.md, "H200 profiles"). This fits ``fit_prefill_mixed`` (plugin/profile/fit.py)
on the profile's synthetic points (``samples.prefill`` and ``samples.prefill_sweep``) and on lone
prefills of real ShareGPT prompts disjoint from the held-out sample
(``benchmarks/results/prefill_sharegpt_h200_SIZE.json``, from ``REALPREFILL=1
scripts/gpu/profile_h200.sh``), then scores the old and the new model on the held-out prompts of
``benchmarks/results/profile_validation_h200_SIZE.json`` (``raw.prefill``, never fitted on) with
the validation's own ``prediction_errors``. It refuses realistic points whose prompt is one of the
held-out sample's (recomputed with the tokenizer from the validation file's seed and size).

Writes ``profiles/h200-llama2-SIZE-refit.json`` (the profile with the new prefill model,
``prefill.fitted_on`` and ``refit_of``; decode and KV unchanged) and
``benchmarks/results/prefill_refit_h200.json`` (before / after errors per shape):

    .venv/bin/python benchmarks/refit_prefill_h200.py --tokenizer /tmp/models/llama2-7b
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np

from aladdin.errors import AladdinError
from aladdin.loadgen.datasets import load_sharegpt, load_tokenizer
from aladdin.plugin.profile.fit import fit_prefill_mixed
from aladdin.plugin.profile.io import load_profile
from aladdin.plugin.profile.profiler import prediction_errors

HARDWARE = "h200"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise AladdinError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def held_out_hashes(validation: dict, tokenizer) -> set[str]:
    """SHA-1 of every prompt of the validation's held-out sample (prefill and decode halves)."""
    specs = load_sharegpt(tokenizer, validation["num_requests"], seed=validation["seed"],
                          max_output_tokens=validation["max_output_tokens"])
    return {hashlib.sha1(s.prompt.encode()).hexdigest() for s in specs}


def refit_shape(root: Path, size: str, tokenizer, command: str) -> dict:
    """Refit one shape's profile, write the refit profile, return its before / after errors."""
    profile_path = root / f"profiles/{HARDWARE}-llama2-{size}.json"
    validation_path = root / f"benchmarks/results/profile_validation_{HARDWARE}_{size}.json"
    realistic_path = root / f"benchmarks/results/prefill_sharegpt_{HARDWARE}_{size}.json"
    refit_path = root / f"profiles/{HARDWARE}-llama2-{size}-refit.json"
    if not realistic_path.exists():
        raise AladdinError(f"{realistic_path} is missing: collect it with REALPREFILL=1 scripts/gpu/profile_h200.sh")
    doc, validation, realistic = (read_json(p) for p in (profile_path, validation_path, realistic_path))
    perf = load_profile(profile_path)
    overlap = set(realistic["samples"]["prompt_sha1"]) & held_out_hashes(validation, tokenizer)
    if overlap:
        raise AladdinError(f"{realistic_path}: {len(overlap)} prompts are in the held-out sample; collect a disjoint one")

    synthetic = [doc["samples"][kind] for kind in ("prefill", "prefill_sweep")]
    real = realistic["samples"]
    model, fit = fit_prefill_mixed(
        np.concatenate([s["prompt_tokens"] for s in synthetic]), np.concatenate([s["time"] for s in synthetic]),
        real["prompt_tokens"], real["time"],
    )
    held = validation["raw"]["prefill"]
    prompts, ttft = np.asarray(held["prompt_tokens"]), np.asarray(held["time"])
    noise = validation["models"]["prefill"]["noise_floor_pct"]
    before = prediction_errors(perf.prefill.time_single(prompts), ttft, noise)
    after = prediction_errors(model.time_single(prompts), ttft, noise)

    fitted_on = (f"{fit.n_samples} lone prefills, each kind weighing half: the profile's synthetic prompts "
                 f"(samples.prefill, samples.prefill_sweep) and {len(real['time'])} of real ShareGPT prompts "
                 f"(seed {realistic['seed']}, disjoint from the held-out sample; samples.prefill_sharegpt, "
                 f"from {realistic_path.relative_to(root)})")
    validated_on = (f"{len(ttft)} held-out ShareGPT prompts sent alone (seed {validation['seed']}, "
                    f"{validation_path.relative_to(root)} raw.prefill)")
    refit = {**doc, "command": command,
             "prefill": {"a": model.a, "q": model.q, "c": model.c, "fit": fit.to_dict(), "fitted_on": fitted_on},
             "refit_of": {"profile": str(profile_path.relative_to(root)), "command": doc["command"]},
             "samples": {**doc["samples"], "prefill_sharegpt": {k: real[k] for k in ("prompt_tokens", "time")}}}
    partial = refit_path.with_name(refit_path.name + ".partial")
    partial.write_text(json.dumps(refit, indent=2) + "\n")
    os.replace(partial, refit_path)
    load_profile(refit_path)  # it reads back as a profile

    def short(entry: dict) -> dict:
        return {"median": entry["median_pct"], "p90": entry["p90_pct"], "n": entry["n"]}

    print(f"{size}: prefill median / p90 error {before['median_pct']:.1f}% / {before['p90_pct']:.1f}% -> "
          f"{after['median_pct']:.1f}% / {after['p90_pct']:.1f}% (noise floor {noise:.1f}%); wrote {refit_path}")
    return {"before": short(before), "after": short(after), "noise_floor_pct": noise,
            "fitted_on": fitted_on, "validated_on": validated_on, "refit_profile": str(refit_path.relative_to(root))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, default=Path("/tmp/models/llama2-7b"),
                    help="model folder of the held-out sample's tokenizer (both shapes share it)")
    ap.add_argument("--sizes", nargs="+", default=["7b", "13b"])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                    help="repository root whose profiles/ and benchmarks/results/ are read and written")
    args = ap.parse_args()
    command = shlex.join([".venv/bin/python", "benchmarks/refit_prefill_h200.py", *sys.argv[1:]])
    try:
        tokenizer = load_tokenizer(args.tokenizer)
        shapes = {size: refit_shape(args.root, size, tokenizer, command) for size in args.sizes}
    except AladdinError as exc:
        sys.exit(f"error: {exc}")
    out = args.root / "benchmarks/results/prefill_refit_h200.json"
    out.write_text(json.dumps({"command": command, "goal_median_pct": 3.0, **shapes}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
