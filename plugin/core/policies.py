"""Named placement configurations, and the spec a user composes others from.

Every policy is a :class:`PolicySpec`: filters, weighted scorers and a picker (core.pipeline).
The named ones:

- ``aladdin``: the paper's best fit. Filters: max sequences, peak KV, the new request's ATGT,
  the residents' ATGT, TTFT (soft); the fullest feasible worker in its binding dimension wins
  (pack), so load concentrates and idle workers can be released.
- ``aladdin-spread``: the same filters, the emptiest feasible worker wins (spread), keeping
  slack on every worker against prediction error.
- ``aladdin-chance``: packing with a chance-constrained KV filter (``kv-chance``): the KV margin
  against length errors is a quantile of the worker's summed remaining length (``violation``,
  ``length_cv``), not a fixed share of the cache; the headroom applies to its ATGT filters.
- ``jsq`` (fewest outstanding), ``po2`` (two random workers, the one with fewer outstanding),
  ``rr`` (round robin), ``least-kv`` (fewest KV tokens held): the baselines.

A spec string composes others: ``filters=seqs,kv,atgt,ttft;score=fill;pick=min;tie=random``,
or a JSON file with the same keys (``score`` may weigh several: ``fill:1,outstanding:0.01``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from aladdin.errors import AladdinError
from aladdin.jsonfile import read_json_object

if TYPE_CHECKING:
    from aladdin.plugin.core.pipeline import Pipeline
# The names a spec may use; what they build is in ``_parts`` (imported on build, so naming a
# policy, e.g. for --help, loads neither numpy nor the compiled kernels).
FILTERS = ("seqs", "kv", "kv-chance", "atgt-own", "atgt", "ttft", "random2")
SCORERS = ("fill", "outstanding", "kv-held", "ttft", "turn")
PICKS = ("max", "min")
TIES = ("id", "random")
PREDICTIVE = {"kv", "kv-chance", "atgt-own", "atgt", "ttft", "fill"}  # parts that read predicted lengths

ALADDIN_FILTERS = ("seqs", "kv", "atgt-own", "atgt", "ttft")
CHANCE_FILTERS = ("seqs", "kv-chance", "atgt-own", "atgt", "ttft")
# kv-chance: the chance a worker's KV runs out, and the relative spread of an output length
# around its prediction: 0.67 for the bucket mean on ShareGPT (bench_predictor.py, "rel. spread")
DEFAULT_VIOLATION = 0.05
DEFAULT_LENGTH_CV = 0.7


@dataclass(frozen=True)
class PolicySpec:
    """One placement configuration; ``build`` makes its pipeline (a fresh one per run)."""

    name: str
    filters: tuple[str, ...] = ()
    scores: tuple[tuple[str, float], ...] = ()
    pick: str = "min"
    tie: str = "id"
    headroom: float = 0.0  # share of the KV and ATGT budgets kept free, against prediction error
    seed: int = 0
    violation: float = DEFAULT_VIOLATION  # kv-chance: target chance that a worker runs out of KV
    length_cv: float = DEFAULT_LENGTH_CV  # kv-chance: an output length's error / its prediction (std)

    def __post_init__(self) -> None:
        for name in self.filters:
            if name not in FILTERS:
                raise AladdinError(f"unknown filter {name!r}; choose from {', '.join(FILTERS)}")
        for name, weight in self.scores:
            if name not in SCORERS:
                raise AladdinError(f"unknown scorer {name!r}; choose from {', '.join(SCORERS)}")
            if not math.isfinite(weight):
                raise AladdinError(f"scorer {name!r} needs a finite weight, got {weight}")
        if not self.scores:
            raise AladdinError(f"policy {self.name!r} needs at least one scorer")
        if self.pick not in PICKS:
            raise AladdinError(f"pick must be one of {', '.join(PICKS)}, got {self.pick!r}")
        if self.tie not in TIES:
            raise AladdinError(f"tie must be one of {', '.join(TIES)}, got {self.tie!r}")
        if not 0.0 <= self.headroom < 1.0:
            raise AladdinError(f"headroom must be in [0, 1), got {self.headroom}")
        if not 0.0 < self.violation < 0.5:
            raise AladdinError(f"violation must be in (0, 0.5), got {self.violation}")
        if not (math.isfinite(self.length_cv) and self.length_cv >= 0):
            raise AladdinError(f"length_cv must be >= 0, got {self.length_cv}")

    @property
    def uses_predictions(self) -> bool:
        return bool(PREDICTIVE & ({*self.filters} | {name for name, _ in self.scores}))

    @property
    def takes_headroom(self) -> bool:
        return bool({"kv", "atgt-own", "atgt"} & set(self.filters))  # kv-chance keeps its own margin

    def build(self) -> Pipeline:
        from aladdin.plugin.core.pipeline import Picker, Pipeline

        filters, scorers = _parts()
        return Pipeline(
            name=self.name,
            filters=[filters[name](self) for name in self.filters],
            scorers=[(scorers[name](), weight) for name, weight in self.scores],
            picker=Picker(highest=self.pick == "max", tie=self.tie, seed=self.seed),
            uses_predictions=self.uses_predictions,
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "scores": dict(self.scores)}


def _parts() -> tuple[dict[str, Callable[[PolicySpec], object]], dict[str, Callable[[], object]]]:
    from aladdin.plugin.core import pipeline as p

    filters: dict[str, Callable[[PolicySpec], object]] = {
        "seqs": lambda spec: p.MaxSeqs(),
        "kv": lambda spec: p.KVPeak(spec.headroom),
        "kv-chance": lambda spec: p.KVChance(spec.violation, spec.length_cv),
        "atgt-own": lambda spec: p.OwnATGT(spec.headroom),
        "atgt": lambda spec: p.ResidentATGT(spec.headroom),
        "ttft": lambda spec: p.TTFT(),
        "random2": lambda spec: p.RandomSubset(2, spec.seed),
    }
    scorers: dict[str, Callable[[], object]] = {
        "fill": p.Fill, "outstanding": p.Outstanding, "kv-held": p.KVHeld, "ttft": p.PredictedTTFT, "turn": p.Turn,
    }
    return filters, scorers


NAMED: dict[str, PolicySpec] = {
    spec.name: spec
    for spec in (
        PolicySpec("aladdin", ALADDIN_FILTERS, (("fill", 1.0),), pick="max"),
        PolicySpec("aladdin-spread", ALADDIN_FILTERS, (("fill", 1.0),), pick="min"),
        PolicySpec("aladdin-chance", CHANCE_FILTERS, (("fill", 1.0),), pick="max"),
        PolicySpec("jsq", (), (("outstanding", 1.0),)),
        PolicySpec("po2", ("random2",), (("outstanding", 1.0),)),
        PolicySpec("rr", (), (("turn", 1.0),)),
        PolicySpec("least-kv", (), (("kv-held", 1.0),)),
    )
}
POLICY_NAMES = tuple(NAMED)


def named_policy(name: str, headroom: float | None = None, seed: int = 0) -> PolicySpec:
    """A named configuration, with a headroom (only for those with SLO filters) and a seed."""
    spec = NAMED.get(name)
    if spec is None:
        raise AladdinError(f"unknown placement policy {name!r}; choose one of {', '.join(NAMED)}")
    if headroom and not spec.takes_headroom:
        raise AladdinError(f"policy {name!r} has no KV or ATGT filter: a headroom does not apply to it")
    return replace(spec, headroom=headroom or 0.0, seed=seed)


def parse_policy(text: str, headroom: float | None = None, seed: int = 0) -> PolicySpec:
    """A policy from a registry name, a spec string, or a JSON file (see the module docstring)."""
    if text in NAMED:
        return named_policy(text, headroom, seed)
    if text.endswith(".json"):
        fields = read_json_object(text, f"policy file {text}")
    elif "=" in text:
        fields = {}
        for part in filter(None, (p.strip() for p in text.split(";"))):
            key, sep, value = part.partition("=")
            if not sep:
                raise AladdinError(f"policy spec part {part!r} is not key=value")
            fields[key.strip()] = value.strip()
    else:
        raise AladdinError(f"unknown placement policy {text!r}; choose one of {', '.join(NAMED)} or give a spec")
    return _from_fields(text, fields, headroom, seed)


def _from_fields(label: str, fields: dict[str, Any], headroom: float | None, seed: int) -> PolicySpec:
    known = {"name", "filters", "score", "pick", "tie", "headroom", "seed", "violation", "length_cv"}
    unknown = set(fields) - known
    if unknown:
        raise AladdinError(f"policy {label}: unknown keys {sorted(unknown)}; use {sorted(known)}")
    filters = fields.get("filters", ())
    if isinstance(filters, str):
        filters = [f.strip() for f in filters.split(",") if f.strip()]
    score = fields.get("score", "fill")
    if isinstance(score, str):
        pairs = []
        for part in filter(None, (p.strip() for p in score.split(","))):
            name, _, weight = part.partition(":")
            try:
                pairs.append((name.strip(), float(weight) if weight else 1.0))
            except ValueError:
                raise AladdinError(f"policy {label}: scorer weight {weight!r} is not a number") from None
        score = pairs
    elif isinstance(score, dict):
        score = list(score.items())
    try:
        return PolicySpec(
            name=str(fields.get("name", "custom")),
            filters=tuple(filters),
            scores=tuple((str(n), float(w)) for n, w in score),
            pick=str(fields.get("pick", "min")),
            tie=str(fields.get("tie", "id")),
            headroom=float(headroom if headroom is not None else fields.get("headroom", 0.0)),
            seed=int(fields.get("seed", seed)),
            violation=float(fields.get("violation", DEFAULT_VIOLATION)),
            length_cv=float(fields.get("length_cv", DEFAULT_LENGTH_CV)),
        )
    except (TypeError, ValueError) as exc:
        raise AladdinError(f"policy {label}: {exc}") from None
