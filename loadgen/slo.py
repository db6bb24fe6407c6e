"""Per-request SLOs: tiers by share (``--slo-tiers``), their seeded assignment, and the headers.

A tier spec is ``NAME:SHARE:ttft=S,atgt=S;NAME:SHARE:...`` with seconds, e.g.
``interactive:0.7:ttft=0.5,atgt=0.05;batch:0.3:ttft=10,atgt=0.2``. Shares must sum to 1.
Each scheduled request gets one tier, drawn from a generator seeded with the workload seed,
so the same flags always give the same tiers. Kept free of heavy imports (numpy is imported
only when tiers are assigned): the CLI validates specs with it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from aladdin.errors import AladdinError

TTFT_HEADER = "X-Aladdin-TTFT-SLO-Ms"
ATGT_HEADER = "X-Aladdin-ATGT-SLO-Ms"
SHARE_TOLERANCE = 1e-6
_TIER_STREAM = 0x510_7135  # second seed word: tier draws never share a stream with other draws
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_KEYS = {"ttft": "ttft_s", "atgt": "atgt_s"}


@dataclass(frozen=True)
class SLOTier:
    """One class of requests: its share of the workload and its targets in seconds."""

    name: str
    share: float
    ttft_s: float
    atgt_s: float


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AladdinError(f"--slo-tiers: {what} {text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise AladdinError(f"--slo-tiers: {what} must be a positive number, got {text}")
    return value


def parse_slo_tiers(spec: str) -> tuple[SLOTier, ...]:
    """The tiers of a ``--slo-tiers`` spec; AladdinError with a one-line reason when it is bad."""
    if spec is None or not spec.strip():
        raise AladdinError("--slo-tiers is empty; expected NAME:SHARE:ttft=S,atgt=S[;...]")
    tiers: list[SLOTier] = []
    for part in spec.split(";"):
        part = part.strip()
        if not part:
            raise AladdinError(f"--slo-tiers {spec!r}: an empty tier (check the ';' separators)")
        fields = part.split(":")
        if len(fields) != 3:
            raise AladdinError(f"--slo-tiers: tier {part!r} is not NAME:SHARE:ttft=S,atgt=S")
        name, share_text, targets = (f.strip() for f in fields)
        if not _NAME.fullmatch(name):
            raise AladdinError(f"--slo-tiers: tier name {name!r} must be letters, digits, '_', '-' or '.'")
        if any(t.name == name for t in tiers):
            raise AladdinError(f"--slo-tiers: tier {name!r} is named twice")
        share = _number(share_text, f"tier {name!r} share")
        values: dict[str, float] = {}
        for item in targets.split(","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq:
                raise AladdinError(f"--slo-tiers: tier {name!r}: {item.strip()!r} is not KEY=SECONDS")
            if key not in _KEYS:
                raise AladdinError(f"--slo-tiers: tier {name!r}: unknown key {key!r} (use ttft, atgt)")
            if key in values:
                raise AladdinError(f"--slo-tiers: tier {name!r}: {key} given twice")
            values[key] = _number(value.strip(), f"tier {name!r} {key}")
        missing = [k for k in _KEYS if k not in values]
        if missing:
            raise AladdinError(f"--slo-tiers: tier {name!r} lacks {' and '.join(missing)}")
        tiers.append(SLOTier(name, share, values["ttft"], values["atgt"]))
    total = sum(t.share for t in tiers)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise AladdinError(f"--slo-tiers: shares sum to {total:g}, not 1")
    return tuple(tiers)


def assign_tiers(tiers: tuple[SLOTier, ...], count: int, seed: int) -> list[SLOTier]:
    """One tier per request, drawn by share from a generator seeded with (seed, a constant)."""
    import numpy as np

    rng = np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, _TIER_STREAM])
    shares = np.array([t.share for t in tiers], dtype=np.float64)
    picks = rng.choice(len(tiers), size=count, p=shares / shares.sum())
    return [tiers[i] for i in picks.tolist()]


def slo_headers(ttft_s: float | None, atgt_s: float | None) -> dict[str, str]:
    """The per-request SLO headers (milliseconds) for the targets that are set."""
    headers = {}
    if ttft_s is not None:
        headers[TTFT_HEADER] = f"{ttft_s * 1000:g}"
    if atgt_s is not None:
        headers[ATGT_HEADER] = f"{atgt_s * 1000:g}"
    return headers
