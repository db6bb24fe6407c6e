"""The replay schedule: every request with its absolute send offset, computed once.

``build_schedule`` is the single place where a dataset and an arrival process become the
list a run replays; the CLI, the plain locustfile's master and the simulator all call it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from aladdin.errors import AladdinError
from aladdin.loadgen import arrivals, datasets
from aladdin.loadgen.datasets import RequestSpec
from aladdin.loadgen.slo import assign_tiers, parse_slo_tiers
from aladdin.loadgen.workload import WorkloadConfig


@dataclass(frozen=True)
class ScheduledRequest:
    """One request of the replay and the offset (s from the run start) it must be sent at."""

    id: str
    offset: float
    spec: RequestSpec
    slo_tier: str | None = None  # the --slo-tiers tier drawn for it
    ttft_slo: float | None = None  # its own SLOs in seconds (tier or trace); None: the run's default
    atgt_slo: float | None = None
    # a length model's prediction made when the schedule was built (aladdin.plugin.predict.text);
    # None: the scheduler core predicts it on arrival
    predicted_output_tokens: int | None = None


def load_specs(config: WorkloadConfig, tokenizer=None, *, prompts: bool = True) -> list[RequestSpec]:
    """The requests of the workload, in send order, before arrival times are attached.

    ``tokenizer`` (default: :func:`workload_tokenizer`, loaded only when needed) counts ShareGPT
    texts and synthesizes the prompts of synthetic and trace requests. With ``prompts=False``
    those two carry token counts only (``prompt`` empty, no ids), and no tokenizer is loaded.
    """
    if config.dataset == "sharegpt":
        return datasets.load_sharegpt(
            tokenizer if tokenizer is not None else workload_tokenizer(config),
            config.num_requests,
            seed=config.seed,
            path=config.dataset_path,
            min_prompt_tokens=config.min_prompt_tokens,
            max_prompt_tokens=config.max_prompt_tokens,
            min_output_tokens=config.min_output_tokens,
            max_output_tokens=config.max_output_tokens,
            max_total_tokens=config.max_total_tokens,
        )
    if prompts:
        tokenizer = tokenizer if tokenizer is not None else workload_tokenizer(config)
    else:
        tokenizer = None
        if config.tokenizer and not Path(config.tokenizer).is_dir():
            raise AladdinError(f"tokenizer folder {config.tokenizer} does not exist")
    if config.dataset == "synthetic":
        return datasets.synthetic(
            tokenizer, config.num_requests, tuple(config.prompt_tokens), tuple(config.output_tokens), seed=config.seed
        )
    return datasets.load_trace(
        config.dataset_path, tokenizer, time_scale=config.time_scale, seed=config.seed, limit=config.num_requests
    )


def workload_tokenizer(config: WorkloadConfig):
    """The tokenizer that counts the workload's tokens: its ``tokenizer`` folder, else the tiny model's."""
    from aladdin.modeldir import default_model_dir

    return datasets.load_tokenizer(config.tokenizer or default_model_dir("tiny"))


def build_schedule(config: WorkloadConfig, tokenizer=None, *, prompts: bool = True) -> list[ScheduledRequest]:
    """The workload's requests with their send offsets (``tokenizer`` and ``prompts``: as load_specs)."""
    config.validate()
    specs = load_specs(config, tokenizer, prompts=prompts)
    offsets = arrivals.make_offsets(
        config.arrival,
        len(specs),
        rate=config.rate,
        cv=config.cv,
        seed=config.seed,
        trace_arrivals=[s.arrival for s in specs] if config.arrival == "trace" else None,
    )
    width = len(str(len(specs) - 1))
    schedule = [ScheduledRequest(f"r{i:0{width}d}", float(t), s) for i, (t, s) in enumerate(zip(offsets, specs))]
    if config.slo_tiers:
        tiers = assign_tiers(parse_slo_tiers(config.slo_tiers), len(schedule), config.seed)
        schedule = [replace(r, slo_tier=t.name, ttft_slo=t.ttft_s, atgt_slo=t.atgt_s) for r, t in zip(schedule, tiers)]
    return schedule


def shard(schedule: list[ScheduledRequest], parts: int) -> list[list[ScheduledRequest]]:
    """Split round-robin in time order, so every part sees the whole time span at 1/parts the rate."""
    return [schedule[i::parts] for i in range(parts)]


def schedule_to_jsonable(schedule: list[ScheduledRequest]) -> list[dict]:
    out = []
    for r in schedule:
        item = {"id": r.id, "offset": r.offset, "spec": _spec_dict(r.spec)}
        for name in _SLO_FIELDS:  # only when set: schedules without SLOs keep their old lines
            if getattr(r, name) is not None:
                item[name] = getattr(r, name)
        out.append(item)
    return out


_SLO_FIELDS = ("slo_tier", "ttft_slo", "atgt_slo")


def schedule_from_jsonable(items: list[dict]) -> list[ScheduledRequest]:
    out = []
    for item in items:
        spec = dict(item["spec"])
        if spec.get("prompt_token_ids") is not None:
            spec["prompt_token_ids"] = tuple(spec["prompt_token_ids"])
        slos = {name: item.get(name) for name in _SLO_FIELDS}
        for name in ("ttft_slo", "atgt_slo"):
            if slos[name] is not None:
                slos[name] = float(slos[name])
        out.append(ScheduledRequest(item["id"], float(item["offset"]), RequestSpec(**spec), **slos))
    return out


def _spec_dict(spec: RequestSpec) -> dict:
    d = asdict(spec)
    if d.get("prompt_token_ids") is not None:
        d["prompt_token_ids"] = list(d["prompt_token_ids"])
    return d


def save_schedule(path: str | Path, schedule: list[ScheduledRequest]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for item in schedule_to_jsonable(schedule):
            fh.write(json.dumps(item, separators=(",", ":")) + "\n")


def load_schedule(path: str | Path) -> list[ScheduledRequest]:
    try:
        with open(path, encoding="utf-8") as fh:
            return schedule_from_jsonable([json.loads(line) for line in fh if line.strip()])
    except OSError as exc:
        raise AladdinError(f"cannot read schedule {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise AladdinError(f"schedule {path} is corrupt: {exc}") from None
