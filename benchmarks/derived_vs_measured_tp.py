"""How far the derived tensor-parallel profiles are from measured ones (issue 16, deliverable 1).

The planner sizes workers of 2 and 4 GPUs from profiles derived from the measured 1-GPU one
(``aladdin profile derive``: docs/perfmodel.md, "Derived worker sizes"). Once the TP 2 / 4
workers are measured (``TP=N scripts/gpu/profile_h200.sh`` on a multi-GPU host), this scores
each derived profile against its measured twin, per model:
- on the measured worker's held-out requests (``raw`` of profile_validation_HW_SIZE_tpN.json,
  from validate_raw.py): median and p90 absolute error of the derived prediction of each
  prefill and decode sample, beside the measured profile's own error on the same samples;
- without that file, on the measured profile's own samples (``samples.prefill``/``decode``);
- KV: the derived capacity against the measured one.
A pair whose measured profile is missing is listed as not measured.

    .venv/bin/python benchmarks/derived_vs_measured_tp.py [--hw h200] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from aladdin.plugin.core.perfmodel import PerfModel
from aladdin.plugin.profile.fit import error_summary
from aladdin.plugin.profile.io import load_profile

SHAPES = ("7b", "13b")
GPUS = (2, 4)


def held_out(measured: PerfModel, validation: Path | None) -> tuple[str, dict[str, tuple[np.ndarray, ...]]]:
    """(where the samples come from, {"prefill": (prompt tokens, s), "decode": (batch, context, s)})."""
    if validation is not None and validation.exists():
        raw = json.loads(validation.read_text())["raw"]
        return str(validation), {
            "prefill": (np.asarray(raw["prefill"]["prompt_tokens"]), np.asarray(raw["prefill"]["time"])),
            "decode": (np.asarray(raw["decode"]["batch_size"]), np.asarray(raw["decode"]["total_context"]),
                       np.asarray(raw["decode"]["time"])),
        }
    samples = measured.meta["samples"] or {}
    if "prefill" not in samples or "decode" not in samples:
        raise ValueError(f"{measured.meta['path']} has no samples and there is no validation file to score on")
    prefill, decode = samples["prefill"], samples["decode"]
    return f"{measured.meta['path']} (its own profiling samples)", {
        "prefill": (np.asarray(prefill["prompt_tokens"]), np.asarray(prefill["time"])),
        "decode": (np.asarray(decode["batch_size"]), np.asarray(decode["total_context"]), np.asarray(decode["time"])),
    }


def compare(derived: PerfModel, measured: PerfModel, validation: Path | None) -> dict:
    """The derived profile's errors on the measured worker's samples, beside the measured profile's."""
    source, data = held_out(measured, validation)
    prompts, prefill_time = data["prefill"]
    batch, context, decode_time = data["decode"]
    scores = {}
    for name, perf in (("derived", derived), ("measured", measured)):
        scores[name] = {
            "prefill": error_summary(perf.prefill.time_single(prompts), prefill_time).to_dict(),
            "decode": error_summary(perf.decode.time(batch, context), decode_time).to_dict(),
        }
    return {
        "samples": source,
        "errors": scores,
        "kv_capacity_tokens": {"derived": derived.kv.capacity_tokens, "measured": measured.kv.capacity_tokens,
                               "error_pct": 100.0 * (derived.kv.capacity_tokens / measured.kv.capacity_tokens - 1)},
        "coefficients": {name: {"prefill": [perf.prefill.a, perf.prefill.q, perf.prefill.c],
                                "decode": [perf.decode.a, perf.decode.b, perf.decode.c]}
                         for name, perf in (("derived", derived), ("measured", measured))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hw", default="h200", help="hardware prefix of the profile files")
    parser.add_argument("--profiles", type=Path, default=Path("profiles"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--out", type=Path, default=None, help="default: RESULTS/derived_tp_error_HW.json")
    args = parser.parse_args()
    out = args.out or args.results / f"derived_tp_error_{args.hw}.json"
    report = {"command": "python benchmarks/derived_vs_measured_tp.py --hw " + args.hw, "pairs": {}}
    print(f"{'worker':<16} {'prefill median / p90 % (derived; measured)':<44} {'decode median / p90 %':<34} KV %")
    for shape in SHAPES:
        for gpus in GPUS:
            key = f"llama2-{shape}-tp{gpus}"
            measured_path = args.profiles / f"{args.hw}-llama2-{shape}-tp{gpus}.json"
            derived_path = args.profiles / f"{args.hw}-llama2-{shape}-tp{gpus}-derived.json"
            if not measured_path.exists() or not derived_path.exists():
                report["pairs"][key] = {"status": "not measured" if derived_path.exists() else "no derived profile"}
                print(f"{key:<16} {report['pairs'][key]['status']}")
                continue
            validation = args.results / f"profile_validation_{args.hw}_{shape}_tp{gpus}.json"
            entry = compare(load_profile(derived_path), load_profile(measured_path), validation)
            report["pairs"][key] = {"status": "compared", "derived": str(derived_path), "measured": str(measured_path),
                                    **entry}
            e = entry["errors"]
            cells = [f"{e['derived'][m]['median_pct']:.1f} / {e['derived'][m]['p90_pct']:.1f} "
                     f"({e['measured'][m]['median_pct']:.1f} / {e['measured'][m]['p90_pct']:.1f})"
                     for m in ("prefill", "decode")]
            print(f"{key:<16} {cells[0]:<44} {cells[1]:<34} {entry['kv_capacity_tokens']['error_pct']:+.1f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
