"""What every regime of ``bench_regimes.py`` shares: workloads, the GPU search, tables and plots.

The API (keep it small; regimes build on it, signatures do not change):

- ``PROFILES``: the ``profiles/`` folder. ``worker(profile, kv_tokens=None)``: a
  ``WorkerConfig`` from a profile file, optionally with a smaller KV cache (whole blocks, as
  ``aladdin simulate --kv-tokens``).
- ``sharegpt(count, seed=0)``: ``Workload.sharegpt`` cached for the process (tokenizing takes
  seconds). ``sharegpt_conversations(count, seed=0, max_total_tokens=4096)``: long-context
  requests, each a ShareGPT conversation's history up to one of its model replies (cached too).
- ``TieredWorkload(workload, tiers)``: the same requests, each with its own SLO tier
  (``loadgen.slo`` tiers, assigned by share with the workload's seed).
- ``slos(perf, workload, ttft_mult, atgt_mult)``: (TTFT, ATGT) SLOs as multiples of the
  unloaded latency of the median request (as ``bench_gpus_vs_rate.py`` sets them).
- ``FAMILIES`` = aladdin, jsq, po2, least-kv. ``variants(headrooms, queues)``: aladdin's
  variants (packing ``aladdin``, ``aladdin-spread`` and the chance-constrained
  ``aladdin-chance``, each per headroom and queue order) plus one per baseline.
- ``make_planner(workers, workload, config, variants=None, log=None)``: a ``Planner`` to reuse
  across rates (it caches single-worker searches).
- ``fewest_gpus(workers, workload, config, rate, ..., planner=None)``: per family the fewest GPUs
  (workers x gpus_per_worker) meeting ``config.attainment`` at cluster ``rate``; "aladdin" is
  the best of its variants (ties: the first in ``variants`` order) and the winner is recorded.
  Returns a JSON-ready dict: {"rate", "gpus", "workers", "attainment", "aladdin_variant",
  "variants": {label: gpus}}. ``fewest_gpus_rates(..., rates, ...)``: the same for several
  rates in one plan (a list of those dicts, lowest rate first; faster: searches start from the
  previous rate's answer).
- ``sweep(worker, workload, config, planner, multiples)``: (knee, rows) at multiples of one
  worker's FCFS knee, each row with the ratio and every family run once at the best baseline's
  size (what the single-configuration regimes report).
- ``run_once(worker, workload, config, variant, workers, rate, count)``: one simulation's
  summary (attainment, per SLO tier too, preemptions, TTFT/ATGT percentiles, central
  queueing) for diagnosis.
- ``sized_payload(setup, config, size, rows)``: a GPU-count regime's JSON payload.
- ``ratio(payload)``: aladdin's GPUs / the best baseline's (None if either is missing); takes a
  payload with "gpus" or "gpu_hours".
- ``format_table(headers, rows)``, ``bar_plot(path, groups, title, ylabel)``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from aladdin.errors import AladdinError
from aladdin.loadgen.schedule import ScheduledRequest
from aladdin.loadgen.slo import SLOTier, assign_tiers
from aladdin.plugin.core.perfmodel import KVModel, PerfModel
from aladdin.plugin.plan.planner import PlanConfig, Planner, Variant, WorkerConfig, Workload, unloaded_latency
from aladdin.plugin.sim.simulator import SimConfig, simulate

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
FAMILIES = ("aladdin", "jsq", "po2", "least-kv")
BASELINES = FAMILIES[1:]
ALADDIN_POLICIES = ("aladdin", "aladdin-spread", "aladdin-chance")  # the last: its KV margin is its own, headroom on ATGT
HEADROOMS = (0.05, 0.1)
QUEUES = ("fcfs", "edf")
Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------
# Workers and workloads


def worker(profile: str | Path, kv_tokens: int | None = None) -> WorkerConfig:
    """A profile's worker; with ``kv_tokens``, its KV cache cut to that many tokens (whole blocks)."""
    config = WorkerConfig.from_profile(profile if Path(profile).is_absolute() else PROFILES / Path(profile).name)
    if kv_tokens is None:
        return config
    block = config.perf.kv.block_size
    if kv_tokens < block:
        raise AladdinError(f"KV capacity {kv_tokens} is less than one KV block ({block} tokens)")
    perf = replace(config.perf, kv=KVModel(block, kv_tokens // block * block))
    return WorkerConfig(f"{config.name} (KV {perf.kv.capacity_tokens} tokens)", perf, config.gpus_per_worker)


@functools.lru_cache(maxsize=8)
def sharegpt(count: int, seed: int = 0) -> Workload:
    """``count`` ShareGPT openings (first human turn -> reply), as ``Workload.sharegpt``; cached."""
    return Workload.sharegpt(count, seed=seed)


@functools.lru_cache(maxsize=8)
def sharegpt_conversations(count: int, seed: int = 0, max_total_tokens: int = 4096,
                           turn_overhead: int = 4) -> Workload:
    """Long-context chat requests: a ShareGPT conversation's history up to a model reply.

    A chat front end resends the whole conversation each turn, so the request for the k-th
    model reply has every earlier turn as its prompt. Each conversation (in a seeded shuffle)
    contributes one request: the deepest model reply whose prompt + reply fits
    ``max_total_tokens`` (Llama-2's context), with ``turn_overhead`` tokens per turn for the chat
    template. Turns are counted with the tiny model's tokenizer (only those within 8 characters
    per token of the limit: later ones cannot fit). Cached per process.
    """
    from aladdin.loadgen.datasets import JsonArrayReader, load_tokenizer, sharegpt_path
    from aladdin.modeldir import default_model_dir

    tokenizer = load_tokenizer(default_model_dir("tiny"))
    records = list(JsonArrayReader(sharegpt_path()))
    order = np.random.default_rng(seed).permutation(len(records))
    prompts: list[int] = []
    outputs: list[int] = []
    for index in order.tolist():
        turns = records[index].get("conversations") if isinstance(records[index], dict) else None
        if not isinstance(turns, list) or not turns:
            continue
        texts = [t.get("value") if isinstance(t, dict) else None for t in turns]
        if not all(isinstance(text, str) for text in texts):
            continue
        chars = np.cumsum([len(text) for text in texts])  # a token is rarely under 1/8 of a character
        texts = texts[: int(np.searchsorted(chars, 8 * max_total_tokens)) + 1]
        lengths = [len(ids) + turn_overhead for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        best = None
        context = 0
        for k, (turn, length) in enumerate(zip(turns, lengths)):
            reply = length - turn_overhead
            if turn.get("from") == "gpt" and k > 0 and context >= 4 and reply >= 4:
                if context + reply > max_total_tokens:
                    break
                best = (context, reply)
            context += length
        if best is not None:
            prompts.append(best[0])
            outputs.append(best[1])
            if len(prompts) == count:
                return Workload(prompts, outputs, seed)
    raise AladdinError(f"only {len(prompts)} ShareGPT conversations fit {max_total_tokens} tokens; {count} asked for")


class TieredWorkload(Workload):
    """A workload whose requests each carry an SLO tier (drawn by share, seeded, per request index:
    request i has the same tier in every probe)."""

    def __init__(self, base: Workload, tiers: Sequence[SLOTier]):
        super().__init__(base.prompts, base.outputs, base.seed)
        if not tiers:
            raise AladdinError("a tiered workload needs at least one SLO tier")
        self.tiers = tuple(tiers)
        self._tiered: tuple[float, int, list[ScheduledRequest]] | None = None

    def schedule(self, rate: float, count: int) -> list[ScheduledRequest]:
        if self._tiered is not None and self._tiered[:2] == (rate, count):
            return self._tiered[2]
        tiers = assign_tiers(self.tiers, count, self.seed)
        out = [replace(r, slo_tier=t.name, ttft_slo=t.ttft_s, atgt_slo=t.atgt_s)
               for r, t in zip(super().schedule(rate, count), tiers)]
        self._tiered = (rate, count, out)
        return out


def slos(perf: PerfModel, workload: Workload, ttft_mult: float, atgt_mult: float) -> tuple[float, float]:
    """(TTFT, ATGT) SLOs: multiples of the median request's unloaded TTFT and per-token time."""
    ttft0, token0 = unloaded_latency(perf, workload)
    return ttft_mult * ttft0, atgt_mult * token0


def describe(workload: Workload) -> dict[str, float]:
    """Length statistics of a workload, for the payload."""
    return {"requests": int(workload.prompts.size),
            "prompt_mean": float(workload.prompts.mean()), "prompt_p50": float(np.median(workload.prompts)),
            "prompt_p90": float(np.percentile(workload.prompts, 90)),
            "output_mean": float(workload.outputs.mean()), "output_p50": float(np.median(workload.outputs))}


# ---------------------------------------------------------------------------------------
# The search


def variants(headrooms: Sequence[float] = HEADROOMS, queues: Sequence[str] = QUEUES,
             baselines: Sequence[str] = BASELINES) -> list[Variant]:
    """Aladdin's variants (pack, spread, chance-constrained pack) x headrooms x queue orders,
    then each baseline once."""
    return [Variant(p, h, queue=q) for p in ALADDIN_POLICIES for q in queues for h in headrooms] + [
        Variant(b) for b in baselines]


def make_planner(workers: WorkerConfig | Sequence[WorkerConfig], workload: Workload, config: PlanConfig,
                 variants_: Sequence[Variant] | None = None, log: Log | None = None) -> Planner:
    """A planner over ``workers`` (one configuration or several sizes; each policy keeps its cheapest)."""
    configs = [workers] if isinstance(workers, WorkerConfig) else list(workers)
    return Planner(configs, list(variants_ or variants()), config, workload, log)


def family_of(variant: Variant) -> str:
    return "aladdin" if variant.policy in ALADDIN_POLICIES and not variant.oracle_lengths else variant.family


def fewest_gpus(workers: WorkerConfig | Sequence[WorkerConfig], workload: Workload, config: PlanConfig, rate: float,
                *, headrooms: Sequence[float] = HEADROOMS, queues: Sequence[str] = QUEUES,
                log: Log | None = None, planner: Planner | None = None) -> dict[str, Any]:
    """Per family, the fewest GPUs that meet ``config.attainment`` at cluster ``rate`` (None: not met)."""
    return fewest_gpus_rates(workers, workload, config, [rate], headrooms=headrooms, queues=queues, log=log,
                             planner=planner)[0]


def fewest_gpus_rates(workers: WorkerConfig | Sequence[WorkerConfig], workload: Workload, config: PlanConfig,
                      rates: Sequence[float], *, headrooms: Sequence[float] = HEADROOMS,
                      queues: Sequence[str] = QUEUES, log: Log | None = None,
                      planner: Planner | None = None) -> list[dict[str, Any]]:
    """``fewest_gpus`` for several rates in one plan, lowest first: each size search starts from
    the previous rate's answer scaled, which skips most probes of badly overloaded clusters."""
    planner = planner or make_planner(workers, workload, config, variants(headrooms, queues), log)
    plan = planner.plan(rates)
    suffix = (lambda check: f" G{check.gpus_per_worker}") if len(planner.configs) > 1 else (lambda check: "")
    rows = []
    for rate in sorted(dict.fromkeys(rates)):
        out: dict[str, Any] = {"rate": rate, "gpus": {}, "workers": {}, "attainment": {}, "aladdin_variant": None,
                               "variants": {}}
        best: dict[str, Any] = {}
        for check in (c for c in plan.checks if c.rate == rate):
            out["variants"][check.variant.label + suffix(check)] = check.gpus
            family = family_of(check.variant)
            current = best.get(family)
            if check.gpus is not None and (current is None
                                           or (check.gpus, check.workers) < (current.gpus, current.workers)):
                best[family] = check
            else:
                best.setdefault(family, None)
        for family, check in best.items():
            out["gpus"][family] = None if check is None else check.gpus
            out["workers"][family] = None if check is None else check.workers
            out["attainment"][family] = None if check is None else check.attainment
            if family == "aladdin" and check is not None:
                out["aladdin_variant"] = check.variant.label + suffix(check)
        rows.append(out)
    return rows


def sized_payload(setup: dict[str, Any], config: PlanConfig, size: Mapping[str, Any],
                  rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A GPU-count regime's payload: its ``setup`` plus the search's settings, and the last
    (headline) rate's answer beside every rate's row."""
    head = rows[-1]
    return {
        "setup": {**setup, "num_requests": config.num_requests, "check_requests": config.check_requests,
                  "headrooms": list(size["headrooms"]), "queues": list(size["queues"])},
        "rate": head["rate"], "gpus": head["gpus"], "aladdin_variant": head["aladdin_variant"],
        "aladdin_vs_best_baseline": head["aladdin_vs_best_baseline"], "rates": list(rows),
    }


def sweep(worker_: WorkerConfig, workload: Workload, config: PlanConfig, planner: Planner,
          multiples: Sequence[float]) -> tuple[float, list[dict[str, Any]]]:
    """(one worker's FCFS knee, per rate row) at ``multiples`` of that knee: ``fewest_gpus_rates``
    rows plus "multiple", "aladdin_vs_best_baseline" and "at_baseline_size" (every family's
    chosen variant run once at the best baseline's worker count: ``run_once`` summaries)."""
    knee = planner.worker_rate(worker_, Variant("jsq")).rate
    rows = fewest_gpus_rates(worker_, workload, config, [m * knee for m in multiples], planner=planner)
    for multiple, row in zip(sorted(multiples), rows):
        row["multiple"] = multiple
        row["aladdin_vs_best_baseline"] = ratio(row)
        sizes = [row["workers"][b] for b in BASELINES if row["workers"].get(b)]
        row["at_baseline_size"] = {}
        if sizes:
            count = max(10, round(row["rate"] * planner.horizon(worker_)))
            for family in FAMILIES:
                variant = (Variant(family) if family != "aladdin"
                           else next((v for v in planner.variants if v.label == row["aladdin_variant"]), None))
                if variant is not None:
                    row["at_baseline_size"][family] = run_once(worker_, workload, config, variant, min(sizes),
                                                               row["rate"], count)
        print(f"  {multiple:g} x knee ({row['rate']:.3g} req/s): GPUs {row['gpus']}", flush=True)
    return knee, rows


def run_once(worker_: WorkerConfig, workload: Workload, config: PlanConfig, variant: Variant, workers: int,
             rate: float, count: int) -> dict[str, Any]:
    """One simulation of ``workers`` workers at ``rate``: what went wrong where (for the payload)."""
    sim = SimConfig(num_workers=workers, policy=variant.policy, ttft_slo=config.ttft_slo, atgt_slo=config.atgt_slo,
                    oracle_lengths=variant.oracle_lengths, predictor=config.predictor, seed=config.seed,
                    gpus_per_worker=worker_.gpus_per_worker, queue=variant.queue)
    result = simulate(workload.schedule(rate, count), worker_.perf, sim, variant.make(config.seed))
    ttft_target, atgt_target = result.targets(config.ttft_slo, config.atgt_slo)
    atgt = np.nan_to_num(result.atgt, nan=0.0)
    met = (result.ttft <= ttft_target) & (atgt <= atgt_target)
    tiers = np.array([tier for tier, _, _ in result.slos or []], dtype=object)
    return {
        "tier_attainment": {str(t): float(met[tiers == t].mean()) for t in dict.fromkeys(tiers.tolist()) if t},
        "variant": variant.label, "workers": workers, "rate": rate, "requests": count,
        "attainment": result.attainment(config.ttft_slo, config.atgt_slo),
        "ttft_attainment": float(np.mean(result.ttft <= ttft_target)),
        "atgt_attainment": float(np.mean(atgt <= atgt_target)),
        "preemptions": int(result.preemptions.sum()),
        "preempted_requests": int((result.preemptions > 0).sum()),
        "ttft_p50_s": float(np.percentile(result.ttft, 50)), "ttft_p99_s": float(np.percentile(result.ttft, 99)),
        "atgt_p99_s": float(np.percentile(atgt, 99)),
        "central_queued": int(result.central_queued), "central_queue_peak": int(result.central_queue_peak),
        "workers_used": int(np.unique(result.worker).size),
    }


def ratio(payload: Mapping[str, Any]) -> float | None:
    """Aladdin's GPUs (or GPU-hours) over the best baseline's; None when either is missing."""
    values = payload.get("gpus", payload.get("gpu_hours"))
    if not values:
        return None
    ours = values.get("aladdin")
    theirs = [values[b] for b in BASELINES if values.get(b) is not None]
    if ours is None or not theirs or min(theirs) <= 0:
        return None
    return ours / min(theirs)


# ---------------------------------------------------------------------------------------
# Output


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table, columns right-aligned to their widest cell (None prints as '-')."""
    cells = [[str(h) for h in headers]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells)


def bar_plot(path: str | Path, groups: Mapping[str, Mapping[str, float | None]], title: str, ylabel: str) -> None:
    """Grouped bars: one group per key of ``groups`` (e.g. a rate), one bar per series in it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = list(dict.fromkeys(s for g in groups.values() for s in g))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(groups) + 2), 4))
    width = 0.8 / max(1, len(series))
    for i, name in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(groups))]
        ys = [groups[g].get(name) for g in groups]
        bars = ax.bar(xs, [0 if y is None else y for y in ys], width, label=name)
        for bar, y in zip(bars, ys):
            ax.annotate("n/a" if y is None else f"{y:g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(list(groups))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def merge_json(path: str | Path, name: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Put ``payload`` under regimes[name] of the JSON file at ``path``, keeping the other regimes."""
    path = Path(path)
    document: dict[str, Any] = {}
    if path.is_file():
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise AladdinError(f"{path} is not valid JSON ({exc}); move it away to start afresh") from None
    document.setdefault("regimes", {})[name] = payload
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    return document
