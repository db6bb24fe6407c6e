"""The plugin's configuration: where it comes from, what it holds, and the per-request inputs.

Sources, later ones winning per key: the defaults below; a JSON file named by the environment
variable ``ALADDIN_VLLM_CONFIG``; vLLM's ``--additional-config '{"aladdin": {...}}'``.

Per request, ``vllm_xargs`` (which vLLM copies into ``SamplingParams.extra_args``) may carry
``aladdin_output_tokens`` (predicted output length, as a router sends it), ``aladdin_ttft_slo``
and ``aladdin_atgt_slo`` (seconds; seconds per token). Absent: the plugin's own predictor and
the configured SLOs.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from aladdin.errors import AladdinError
from aladdin.jsonfile import read_json_object
from aladdin.plugin.core.predictor import RESERVATION_QUANTILE

CONFIG_ENV = "ALADDIN_VLLM_CONFIG"
ADDITIONAL_CONFIG_KEY = "aladdin"
PREDICTED_KEY, TTFT_KEY, ATGT_KEY = "aladdin_output_tokens", "aladdin_ttft_slo", "aladdin_atgt_slo"


@dataclass(frozen=True)
class PluginConfig:
    """``profile``: a profile JSON of this engine's configuration; without one only the KV and
    max-sequences filters apply (ATGT and TTFT need the time models). ``headroom``: share of the
    KV (and ATGT) budget kept free. ``lost_ttft``: ``hand-back`` returns a waiting request whose
    TTFT can no longer be met with a retryable error, so a router re-places it; ``best-effort``
    keeps it. ``length_quantile``: the plugin's own predictor reserves this quantile of the
    lengths it saw for similar prompts (null: their mean, the paper's choice); a higher one
    under-predicts, and so preempts, less often. ``default_output_tokens``: the prediction
    before the predictor has learned; null reserves the request's own ``max_tokens`` then.
    ``tick_s``: how often held requests are re-checked without a capacity change.
    ``max_held``: held requests beyond which the front door (``--middleware``) answers 503."""

    profile: str | None = None
    ttft_slo: float = math.inf
    atgt_slo: float = math.inf
    headroom: float = 0.05
    lost_ttft: str = "hand-back"
    length_quantile: float | None = RESERVATION_QUANTILE
    default_output_tokens: int | None = None
    tick_s: float = 0.05
    max_held: int = 64  # the front door (middleware) answers 503 once this many wait for admission

    def __post_init__(self) -> None:
        for name in ("ttft_slo", "atgt_slo", "tick_s"):
            if not getattr(self, name) > 0:
                raise AladdinError(f"aladdin plugin config: {name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.headroom < 1.0:
            raise AladdinError(f"aladdin plugin config: headroom must be in [0, 1), got {self.headroom}")
        if self.lost_ttft not in ("hand-back", "best-effort"):
            raise AladdinError(f"aladdin plugin config: lost_ttft must be hand-back or best-effort, got {self.lost_ttft!r}")
        if self.length_quantile is not None and not 0.0 < self.length_quantile < 1.0:
            raise AladdinError(f"aladdin plugin config: length_quantile must be in (0, 1) or null for the mean, "
                               f"got {self.length_quantile}")
        if (self.default_output_tokens is not None and self.default_output_tokens < 1) or self.max_held < 0:
            raise AladdinError("aladdin plugin config: default_output_tokens must be >= 1 (or null) and max_held >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(additional_config: Any = None, environ: dict[str, str] | None = None) -> PluginConfig:
    """The configuration from the environment file and vLLM's additional config."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = environ.get(CONFIG_ENV)
    if path:
        values.update(read_json_object(path, f"{CONFIG_ENV}={path}"))
    if isinstance(additional_config, dict) and isinstance(additional_config.get(ADDITIONAL_CONFIG_KEY), dict):
        values.update(additional_config[ADDITIONAL_CONFIG_KEY])
    known = {f.name for f in fields(PluginConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise AladdinError(f"aladdin plugin config: unknown keys {unknown}; use {sorted(known)}")
    return PluginConfig(**values)


@dataclass(frozen=True)
class RequestInputs:
    """What a request says about itself through ``vllm_xargs`` (None: not given)."""

    predicted_output_tokens: int | None = None
    ttft_slo: float | None = None
    atgt_slo: float | None = None


def request_inputs(extra_args: dict[str, Any]) -> RequestInputs:
    """Parse and check the request's aladdin keys; a bad value is one clear AladdinError."""
    def number(key: str, integer: bool) -> float | int | None:
        value = extra_args.get(key)
        if value is None:
            return None
        try:
            parsed = int(value) if integer else float(value)
        except (TypeError, ValueError):
            raise AladdinError(f"vllm_xargs.{key} must be a {'whole' if integer else ''} number, got {value!r}") from None
        if integer and parsed != float(value):
            raise AladdinError(f"vllm_xargs.{key} must be a whole number, got {value!r}")
        if not (math.isfinite(parsed) and parsed > 0):
            raise AladdinError(f"vllm_xargs.{key} must be > 0, got {value!r}")
        return parsed

    return RequestInputs(number(PREDICTED_KEY, True), number(TTFT_KEY, False), number(ATGT_KEY, False))
