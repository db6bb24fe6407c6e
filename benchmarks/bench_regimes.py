"""GPUs needed per placement policy in four regimes (issue 15): KV-bound, multi-tier SLOs,
heterogeneous pools, time-varying load.

    python benchmarks/bench_regimes.py [--regime NAME ...] [--quick] [--out benchmarks/results/regimes.json]

Each regime is a module of ``benchmarks/regimes/`` with ``NAME``, ``run(quick, log) -> dict``,
``table(payload) -> str`` and ``plot(payload, path)``. Without ``--regime`` every regime that
exists runs. Each payload is merged into ``--out`` under ``regimes[NAME]`` (other regimes'
entries are kept), its table is printed, and its plot written beside ``--out`` as
``regimes_<NAME>.png``. ``--quick`` is a seconds-long version for the tests.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from regimes.common import merge_json  # noqa: E402 (needs the path above)

REGIMES = ("kv_bound", "multi_tier", "heterogeneous", "time_varying")


def available() -> dict[str, object]:
    """The regime modules that exist, by their NAME."""
    found = {}
    for module_name in REGIMES:
        try:
            module = importlib.import_module(f"regimes.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"regimes.{module_name}":
                raise
            continue
        found[module.NAME] = module
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", action="append", default=None, help="regime to run (repeat); default: all")
    parser.add_argument("--quick", action="store_true", help="a seconds-long version (tests)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/regimes.json"))
    parser.add_argument("--verbose", action="store_true", help="print every simulation")
    args = parser.parse_args(argv)
    modules = available()
    names = args.regime or list(modules)
    unknown = [n for n in names if n not in modules]
    if unknown:
        parser.error(f"unknown regime {unknown[0]!r}; choose from {', '.join(modules)}")
    for name in names:
        module = modules[name]
        print(f"\n== {name}", flush=True)
        started = time.perf_counter()
        log = (lambda line: print(line, flush=True)) if args.verbose else (lambda line: None)
        payload = module.run(args.quick, log)
        payload.setdefault("wall_s", time.perf_counter() - started)
        payload.setdefault("quick", args.quick)
        merge_json(args.out, name, payload)
        print(module.table(payload))
        picture = args.out.parent / f"regimes_{name}.png"
        module.plot(payload, picture)
        print(f"{name}: {payload['wall_s']:.0f}s; wrote {args.out} and {picture}", flush=True)


if __name__ == "__main__":
    main()
