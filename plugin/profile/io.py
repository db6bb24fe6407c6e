"""The profile file: one worker configuration's fitted performance model as versioned JSON.

A profile is expensive to make (a live server, minutes of GPU time), so the file carries
what is needed to trust and reproduce it (model, hardware, vLLM version, command line, fit
diagnostics, optionally the raw samples). Readers refuse formats and versions they don't
know, and every problem is one AladdinError line naming the file. Layout: docs/perfmodel.md.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from aladdin.errors import AladdinError
from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel
from aladdin.plugin.profile.fit import FitDiagnostics

FORMAT = "aladdin-profile"
VERSION = 1
_TEXT_KEYS = ("model", "hardware", "vllm_version", "created", "command")


@dataclass(frozen=True)
class ProfileMeta:
    """Where a profile came from; ``created`` defaults to the time of saving."""

    model: str
    hardware: str
    gpus_per_worker: int
    vllm_version: str
    command: str
    created: str = ""


def save_profile(
    path: str | Path,
    perf: PerfModel,
    meta: ProfileMeta,
    *,
    prefill_fit: FitDiagnostics | None = None,
    decode_fit: FitDiagnostics | None = None,
    samples: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write ``perf`` as a profile (atomically) and return the path.

    ``samples`` holds raw measurements by kind, e.g. {"prefill": {"sum_tokens": [...], ...}}.
    """
    path = Path(path)
    prefill: dict[str, Any] = {key: float(getattr(perf.prefill, key)) for key in ("a", "q", "c")}
    decode: dict[str, Any] = {key: float(getattr(perf.decode, key)) for key in ("a", "b", "c")}
    if prefill_fit is not None:
        prefill["fit"] = prefill_fit.to_dict()
    if decode_fit is not None:
        decode["fit"] = decode_fit.to_dict()
    document: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": meta.model,
        "hardware": meta.hardware,
        "gpus_per_worker": int(meta.gpus_per_worker),
        "vllm_version": meta.vllm_version,
        "created": meta.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": meta.command,
        "prefill": prefill,
        "decode": decode,
        "kv": {
            "block_size": int(perf.kv.block_size),
            "num_blocks": int(perf.kv.num_blocks),
            "capacity_tokens": int(perf.kv.capacity_tokens),
        },
        "max_num_seqs": int(perf.max_num_seqs),
        "max_batched_tokens": int(perf.max_batched_tokens),
    }
    if perf.admit_s or perf.meta.get("admission"):
        document["admission"] = {"cost_s": float(perf.admit_s), **dict(perf.meta.get("admission") or {})}
    if perf.meta.get("derived"):
        document["derived"] = dict(perf.meta["derived"])  # an estimate from another worker size, not measured
    if samples is not None:
        document["samples"] = {
            kind: {name: np.asarray(values).tolist() for name, values in columns.items()}
            for kind, columns in samples.items()
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def load_profile(path: str | Path) -> PerfModel:
    """Read a profile; its provenance, fit diagnostics and samples go into ``PerfModel.meta``.

    meta keys: model, hardware, gpus_per_worker, vllm_version, created, command, path,
    prefill_fit and decode_fit (FitDiagnostics or None), samples (dict or None), derived
    (None for a measured profile; how it was estimated otherwise), admission (how the
    admission cost ``PerfModel.admit_s`` was measured, or None: the file has no such cost).
    """
    reader = _Reader(Path(path))
    return reader.perf_model()


class _Reader:
    """Checks a profile document field by field, failing with the file and the field named."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, problem: str) -> NoReturn:
        raise AladdinError(f"profile {self.path}: {problem}")

    def perf_model(self) -> PerfModel:
        doc = self.document()
        prefill = self.section(doc, "prefill")
        decode = self.section(doc, "decode")
        kv = self.section(doc, "kv")
        block_size = self.positive_int(kv, "block_size", "kv.")
        num_blocks = self.positive_int(kv, "num_blocks", "kv.")
        capacity = self.positive_int(kv, "capacity_tokens", "kv.")
        if capacity != num_blocks * block_size:
            self.fail(
                f"kv.capacity_tokens {capacity} is not num_blocks {num_blocks} x block_size {block_size}"
            )
        samples = doc.get("samples")
        if samples is not None and not isinstance(samples, dict):
            self.fail("samples must be an object")
        admission = doc.get("admission")
        if admission is not None and not isinstance(admission, dict):
            self.fail("admission must be an object")
        return PerfModel(
            prefill=PrefillModel(*(self.coefficient(prefill, key, "prefill.") for key in ("a", "q", "c"))),
            decode=DecodeModel(*(self.coefficient(decode, key, "decode.") for key in ("a", "b", "c"))),
            kv=KVModel(block_size=block_size, capacity_tokens=capacity),
            max_num_seqs=self.positive_int(doc, "max_num_seqs"),
            max_batched_tokens=self.positive_int(doc, "max_batched_tokens"),
            admit_s=self.coefficient(admission, "cost_s", "admission.") if admission is not None else 0.0,
            meta={
                **{key: self.text(doc, key) for key in _TEXT_KEYS},
                "gpus_per_worker": self.positive_int(doc, "gpus_per_worker"),
                "path": str(self.path),
                "prefill_fit": self.fit(prefill, "prefill."),
                "decode_fit": self.fit(decode, "decode."),
                "samples": samples,
                "derived": self.derived(doc),
                "admission": {k: v for k, v in admission.items() if k != "cost_s"} if admission is not None else None,
            },
        )

    def document(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            self.fail(f"cannot read it ({exc.strerror or exc})")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self.fail(f"not valid JSON ({exc})")
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            self.fail(f'not an Aladdin profile (expected "format": "{FORMAT}")')
        if doc.get("version") != VERSION:
            self.fail(f"unsupported version {doc.get('version')!r} (this Aladdin reads version {VERSION})")
        return doc

    def value(self, section: Mapping[str, Any], key: str, where: str) -> Any:
        if key not in section:
            self.fail(f"missing key {where}{key}")
        return section[key]

    def section(self, doc: Mapping[str, Any], key: str) -> dict[str, Any]:
        section = self.value(doc, key, "")
        if not isinstance(section, dict):
            self.fail(f"{key} must be an object")
        return section

    def number(self, section: Mapping[str, Any], key: str, where: str = "") -> float:
        value = self.value(section, key, where)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(f"{where}{key} must be a finite number, got {value!r}")
        return float(value)

    def coefficient(self, section: Mapping[str, Any], key: str, where: str = "") -> float:
        """A model coefficient: time never shrinks with more work, so negatives are refused
        (an unconstrained fit can produce them; the simulator would report negative ATGTs)."""
        value = self.number(section, key, where)
        if value < 0:
            self.fail(f"{where}{key} must be >= 0 (seconds per unit of work), got {value!r}")
        return value

    def positive_int(self, section: Mapping[str, Any], key: str, where: str = "") -> int:
        value = self.value(section, key, where)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(f"{where}{key} must be a positive integer, got {value!r}")
        return value

    def text(self, section: Mapping[str, Any], key: str) -> str:
        value = self.value(section, key, "")
        if not isinstance(value, str):
            self.fail(f"{key} must be a string, got {value!r}")
        return value

    def derived(self, doc: Mapping[str, Any]) -> dict[str, Any] | None:
        derived = doc.get("derived")
        if derived is not None and not isinstance(derived, dict):
            self.fail("derived must be an object")
        return derived

    def fit(self, section: Mapping[str, Any], where: str) -> FitDiagnostics | None:
        fit = section.get("fit")
        if fit is None:
            return None
        where = f"{where}fit."
        if not isinstance(fit, dict):
            self.fail(f"{where[:-1]} must be an object")
        method = self.value(fit, "method", where)
        if not isinstance(method, str):
            self.fail(f"{where}method must be a string, got {method!r}")
        return FitDiagnostics(
            n_samples=self.positive_int(fit, "n_samples", where),
            rms_residual_s=self.number(fit, "rms_residual_s", where),
            r_squared=self.number(fit, "r_squared", where),
            median_abs_pct_error=self.number(fit, "median_abs_pct_error", where),
            method=method,
        )
