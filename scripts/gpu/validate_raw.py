"""``aladdin profile validate`` that also keeps the raw held-out samples in its JSON.

Runs the project's own validate command unchanged (same held-out ShareGPT sample, same
summary), with the server connection wrapped so that every batch it sends is recorded; then
adds ``raw`` to the JSON it wrote: per held-out prefill request the prompt tokens, measured and
predicted TTFT (s); per decode segment the batch size, total context, measured and predicted
iteration time (s); per KV probe the predicted and measured tokens held. With these the errors
can be broken down (e.g. prefill by padded prompt size) or recomputed for a refitted model
without a GPU. Arguments are those of ``aladdin profile validate`` (--json required).

    python3 scripts/gpu/validate_raw.py PROFILE.json --host URL --tokenizer DIR -n 160 ... --json OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from aladdin.plugin.profile import cli
from aladdin.plugin.profile.io import load_profile
from aladdin.plugin.profile.profiler import decode_samples, kv_samples, prefill_samples


class Recording:
    """The engine, with every batch's result kept in order."""

    def __init__(self, engine):
        self.engine = engine
        self.info = engine.info
        self.batches: list[tuple[int, object]] = []

    def run_batch(self, specs, kv_probe_period_s=None):
        result = self.engine.run_batch(specs, kv_probe_period_s=kv_probe_period_s)
        self.batches.append((len(specs), kv_probe_period_s, result))
        return result


def main(argv: list[str]) -> int:
    recorders: list[Recording] = []
    real_engine = cli._engine

    def engine(host, model):
        recorders.append(Recording(real_engine(host, model)))
        return recorders[-1]

    cli._engine = engine
    cli.validate.main(argv, prog_name="aladdin profile validate", standalone_mode=False)

    json_path = Path(argv[argv.index("--json") + 1])
    report = json.loads(json_path.read_text())
    perf = load_profile(report["profile"])
    batches = recorders[0].batches
    n_prefill = report["num_requests"] // 2
    # validate_profile's order: the held-out prompts alone, then the held-out groups (with KV
    # probes), then the noise-floor repeats (lone 256-token prompts, 8-request batches).
    lone = [r for size, probe, r in batches[:n_prefill]]
    assert all(size == 1 and probe is None for size, probe, _ in batches[:n_prefill])
    groups = [r for size, probe, r in batches[n_prefill:] if probe is not None]
    prompts, ttft = prefill_samples([rec for r in lone for rec in r.records])
    parts = [decode_samples(r.records) for r in groups]
    sizes, contexts, gaps = (np.concatenate(p) for p in zip(*parts))
    kv_parts = [kv_samples(r, perf.kv) for r in groups]
    kv_pred, kv_meas = (np.concatenate(p) for p in zip(*kv_parts))
    report["raw"] = {
        "prefill": {"prompt_tokens": prompts.tolist(), "time": ttft.tolist(),
                    "predicted": perf.prefill.time_single(prompts).tolist()},
        "decode": {"batch_size": sizes.tolist(), "total_context": contexts.tolist(), "time": gaps.tolist(),
                   "predicted": perf.decode.time(sizes, contexts).tolist()},
        "kv": {"predicted": kv_pred.tolist(), "measured": kv_meas.tolist()},
        "note": "scripts/gpu/validate_raw.py: the held-out samples behind 'models' (seconds; KV in tokens)",
    }
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    err = 100 * np.abs(report["raw"]["prefill"]["predicted"] - ttft) / ttft
    print(f"raw samples added to {json_path}: {len(prompts)} prefill (median error {np.median(err):.1f}%), "
          f"{len(gaps)} decode, {len(kv_pred)} KV")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
