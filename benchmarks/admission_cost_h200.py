"""The admission cost measured on the H200 (issue 13): per shape and join length, the medians of
what a join added at joining and at leaving, the prefill model's work and the cost; from the
profiles' ``samples.admission`` (``aladdin profile admission``) and the first, one-token run kept
in ``benchmarks/results/admission_h200_logs/one_token_joins.json``. No GPU needed.

    .venv/bin/python benchmarks/admission_cost_h200.py   # -> benchmarks/results/admission_cost_h200.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aladdin.plugin.profile.io import load_profile

SHAPES = ("7b", "13b")
ONE_TOKEN = Path("benchmarks/results/admission_h200_logs/one_token_joins.json")
OUT = Path("benchmarks/results/admission_cost_h200.json")


def by_length(samples: dict, perf) -> dict:
    lengths = np.asarray(samples["prompt_tokens"])
    rows = {}
    for n in np.unique(lengths):
        pick = lengths == n
        row = {"joins": int(pick.sum()), "prefill_work_ms": 1e3 * float(perf.prefill.chunk_work(n, 0)),
               "cost_ms": 1e3 * float(np.median(np.asarray(samples["cost_s"])[pick]))}
        for key in ("join_excess_s", "leave_excess_s", "excess_s"):
            if key in samples:
                row[key.replace("_s", "_ms")] = 1e3 * float(np.median(np.asarray(samples[key])[pick]))
        rows[str(int(n))] = row
    return rows


def main() -> None:
    one_token = json.loads(ONE_TOKEN.read_text())["shapes"]
    report = {"command": "python benchmarks/admission_cost_h200.py", "shapes": {}}
    for shape in SHAPES:
        perf = load_profile(f"profiles/h200-llama2-{shape}.json")
        admission = perf.meta["admission"]
        entry = {"cost_ms": 1e3 * perf.admit_s, "iqr_ms": [1e3 * v for v in admission["iqr_s"]],
                 "joins": admission["n_samples"], "by_length": by_length(perf.meta["samples"]["admission"], perf),
                 "one_token_joins": by_length(one_token[f"llama2-{shape}"]["samples"], perf)}
        report["shapes"][shape] = entry
        print(f"{shape}: cost {entry['cost_ms']:.2f} ms (IQR {entry['iqr_ms'][0]:.2f} to {entry['iqr_ms'][1]:.2f}), "
              f"{entry['joins']} joins")
        print(f"  {'length':>6} {'joins':>5} {'joining':>8} {'leaving':>8} {'prefill':>8} {'cost':>7} {'1-token cost':>12}")
        for n, r in entry["by_length"].items():
            print(f"  {n:>6} {r['joins']:>5} {r['join_excess_ms']:>8.2f} {r['leave_excess_ms']:>8.2f} "
                  f"{r['prefill_work_ms']:>8.2f} {r['cost_ms']:>+7.2f} {entry['one_token_joins'][n]['cost_ms']:>+12.2f}")
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
