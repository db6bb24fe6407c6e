"""benchmarks/bench_decision.py on a small cluster (the H200 25 req/s case: 2 workers)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_decision", ROOT / "benchmarks" / "bench_decision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_packed_small_cluster_that_drains_a_worker_keeps_deciding():
    # aladdin packs arrivals onto one worker while finishes drain the other: it used to divide by
    # zero (no residents to stream tokens to) and then find no request to finish there.
    bench = load_bench()
    profile = Path("profiles/h200-llama2-7b.json")
    for all_rebuilt in (False, True):
        times = bench.run("aladdin", workers=2, in_flight=3, decisions=40, seed=0, all_rebuilt=all_rebuilt,
                          profile=profile)
        assert len(times) == 40
