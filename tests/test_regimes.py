"""The regimes benchmark (benchmarks/bench_regimes.py): each regime's quick run gives a payload of
the agreed shape, and the driver merges it into regimes.json without dropping other regimes."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

FAMILIES = ("aladdin", "jsq", "po2", "least-kv")


def check_gpus_payload(payload: dict) -> None:
    """The issue's shape: GPUs per family and aladdin / best baseline."""
    assert set(FAMILIES) <= set(payload["gpus"])
    for family in FAMILIES:
        assert payload["gpus"][family] is None or isinstance(payload["gpus"][family], int)
    ratio = payload["aladdin_vs_best_baseline"]
    assert ratio is None or isinstance(ratio, float)
    best = min(payload["gpus"][b] for b in FAMILIES[1:] if payload["gpus"][b] is not None)
    if ratio is not None:
        assert ratio == payload["gpus"]["aladdin"] / best


def test_kv_bound_through_the_driver_keeps_other_regimes(tmp_path):
    driver = importlib.import_module("bench_regimes")
    out = tmp_path / "regimes.json"
    out.write_text(json.dumps({"regimes": {"heterogeneous": {"gpus": {"aladdin": 1}}}}))
    driver.main(["--regime", "kv_bound", "--quick", "--out", str(out)])
    document = json.loads(out.read_text())
    assert document["regimes"]["heterogeneous"] == {"gpus": {"aladdin": 1}}
    payload = document["regimes"]["kv_bound"]
    check_gpus_payload(payload)
    assert payload["setup"]["kv_tokens"] == 16384 and payload["quick"] is True
    row = payload["rates"][0]
    assert {r["preemptions"] >= 0 for r in row["at_baseline_size"].values()} == {True}
    assert (tmp_path / "regimes_kv_bound.png").stat().st_size > 0


def test_multi_tier_payload(tmp_path):
    from regimes import common, multi_tier

    payload = multi_tier.run(True, lambda line: None)
    check_gpus_payload(payload)
    assert [t["share"] for t in payload["setup"]["tiers"]] == [0.7, 0.3]
    at = payload["rates"][0]["at_baseline_size"]
    assert set(at) == set(FAMILIES)
    assert set(at["jsq"]["tier_attainment"]) == {"interactive", "batch"}
    assert "interactive" in multi_tier.table(payload)
    multi_tier.plot(payload, tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 0
    document = common.merge_json(tmp_path / "r.json", multi_tier.NAME, payload)
    assert list(document["regimes"]) == ["multi_tier"]


def test_heterogeneous_payload(tmp_path):
    from regimes import heterogeneous

    payload = heterogeneous.run(True, lambda line: None)
    check_gpus_payload(payload)
    row = payload["rates"][0]
    for family, gpus in row["gpus"].items():  # an alternating pool of m workers: 1, 3, 4, 6, ... GPUs
        m = row["workers"][family]
        assert gpus is None or gpus == (m + 1) // 2 + 2 * (m // 2)
    at = row["at_aladdin_size"]
    assert set(at) == set(FAMILIES) and {r["workers"] for r in at.values()} == {row["workers"]["aladdin"]}
    for run in at.values():
        assert set(run["types"]) <= {"1gpu", "2gpu"} and abs(sum(t["share"] for t in run["types"].values()) - 1) < 1e-9
    assert "1-GPU" in heterogeneous.table(payload)
    heterogeneous.plot(payload, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 0


def test_time_varying_payload(tmp_path):
    from regimes import common, time_varying

    payload = time_varying.run(True, lambda line: None)
    assert set(FAMILIES) <= set(payload["gpu_hours"]) and set(FAMILIES) <= set(payload["attainment"])
    assert payload["aladdin_vs_best_baseline"] == common.ratio(payload)
    planner = payload["fixed"]["planner"]
    assert all(g > 0 for g in planner["gpu_hours"].values())
    for rows in payload["runs"].values():  # GPU-hours never below the smallest cluster held all day
        for row in rows.values():
            assert row["gpu_hours"] >= payload["setup"]["day_s"] / 3600 - 1e-9 and 0 <= row["attainment"] <= 1
    assert "fewest at 99%" in time_varying.table(payload)
    time_varying.plot(payload, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0
