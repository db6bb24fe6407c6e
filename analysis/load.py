"""Read runs into one columnar shape: a per-request DataFrame plus flat chunk arrays.

Two sources give the same ``RunData``: an Aladdin run folder (``requests.jsonl`` and an
optional ``run.json``) and a vLLM ``bench serve`` result JSON saved with
``--save-result --save-detailed``. Chunk lists are kept flat (one numpy array for all
requests, in request order) because a million per-row Python lists would not fit the
memory budget; ``n_chunks`` in the frame says how many entries belong to each request.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd

from aladdin.errors import AladdinError
from aladdin.loadgen.records import ERROR, OK, SCHEMA_VERSION, TIMEOUT

ALADDIN_FORMAT = "aladdin"
VLLM_BENCH_FORMAT = "vllm-bench"

# Columns of RunData.requests, in order; times are seconds on the run's clock.
REQUEST_COLUMNS = (
    "id", "scheduled", "sent", "done", "n_chunks", "usage_output_tokens", "prompt_tokens",
    "requested_output_tokens", "outcome", "error", "status", "worker",
)
# Per-request SLO columns (--slo-tiers runs): added to RunData.requests only when a record has them.
SLO_COLUMNS = ("slo_tier", "ttft_slo", "atgt_slo")

# Where a run's preemption count comes from: the simulator's own count (run.json summary), or
# vLLM's counter scraped into the run folder's counters.json (the admission benchmark writes it).
PREEMPTIONS_SIMULATED = "simulator"
PREEMPTIONS_VLLM = "vllm:num_preemptions_total"
COUNTERS_FILE = "counters.json"

_BATCH_BYTES = 32 << 20  # lines parsed per batch, so Python objects never pile up for the whole file
_TIMES_KEY = '"chunk_times":['
_TOKENS_KEY = '"chunk_tokens":['


@dataclass
class RunData:
    """One run, as loaded: per-request columns plus the flat chunk arrays."""

    label: str
    source: str
    format: str  # ALADDIN_FORMAT | VLLM_BENCH_FORMAT
    requests: pd.DataFrame  # REQUEST_COLUMNS, one row per request
    chunk_times: np.ndarray  # float64, every content chunk's arrival, grouped by request
    chunk_tokens: np.ndarray  # int32, tokens carried by each chunk (always >= 1)
    meta: dict = field(default_factory=dict)  # run.json, or the bench result's scalar fields
    partial_lines: int = 0  # unreadable lines skipped (a killed run's cut last line)
    preemptions: int | None = None  # over the whole run; None: not recorded (see _preemptions)
    preemptions_source: str | None = None  # PREEMPTIONS_SIMULATED or PREEMPTIONS_VLLM


def load_runs(paths: Sequence[str | Path]) -> list[RunData]:
    """Load every path (run folder or bench JSON) and make the labels unique."""
    runs: list[RunData] = []
    for path in paths:
        runs.extend(load_path(path))
    seen: dict[str, int] = {}
    for run in runs:
        count = seen.get(run.label, 0) + 1
        seen[run.label] = count
        if count > 1:
            run.label = f"{run.label} ({count})"
    return runs


def load_path(path: str | Path) -> list[RunData]:
    """A folder (or its requests.jsonl) is an Aladdin run; another file must be a vLLM bench result."""
    path = Path(path)
    if path.is_dir():
        return [load_run_dir(path)]
    if path.name == "requests.jsonl" and path.is_file():
        return [load_run_dir(path.parent)]
    if path.is_file():
        return load_vllm_bench(path)
    raise AladdinError(f"{path}: no such run folder or result file")


# --------------------------------------------------------------------------- aladdin runs


def load_run_dir(path: str | Path) -> RunData:
    """Read ``requests.jsonl`` (required) and ``run.json`` (optional metadata) of one run folder."""
    path = Path(path)
    records_path = path / "requests.jsonl"
    if not records_path.is_file():
        raise AladdinError(f"{path}: no requests.jsonl in this run folder")
    meta = _read_run_json(path / "run.json")
    columns: dict[str, list] = {name: [] for name in (*REQUEST_COLUMNS, *SLO_COLUMNS)}
    times_parts: list[np.ndarray] = []
    tokens_parts: list[np.ndarray] = []
    partial_lines = 0
    with open(records_path, encoding="utf-8", errors="replace") as fh:
        while lines := fh.readlines(_BATCH_BYTES):
            try:
                batch = _parse_compact(lines, records_path)
            except _NotCompact:
                batch = _parse_generic(lines, records_path)
            partial_lines += batch.partial_lines
            _append_columns(batch.records, columns)
            columns["n_chunks"].append(batch.n_chunks)
            times_parts.append(batch.chunk_times)
            tokens_parts.append(batch.chunk_tokens)
    if not columns["id"]:
        detail = f" ({partial_lines} unreadable line(s))" if partial_lines else ""
        raise AladdinError(f"{records_path}: no complete records{detail}")
    requests, chunk_times, chunk_tokens = _drop_empty_chunks(
        _frame(columns), np.concatenate(times_parts), np.concatenate(tokens_parts))
    label = meta.get("label")
    if not isinstance(label, str) or not label:
        label = path.resolve().name
    preemptions, source = _preemptions(path, meta)
    return RunData(label=label, source=str(path), format=ALADDIN_FORMAT, requests=requests,
                   chunk_times=chunk_times, chunk_tokens=chunk_tokens, meta=meta, partial_lines=partial_lines,
                   preemptions=preemptions, preemptions_source=source)


def _preemptions(path: Path, meta: dict) -> tuple[int | None, str | None]:
    """The run's preemptions and their source: a simulation's own count, else vLLM's counter
    from ``counters.json`` in the folder; (None, None) when neither is there (``aladdin replay``
    reads no server counter)."""
    summary = meta.get("summary")
    if meta.get("simulated") and isinstance(summary, dict):
        count = summary.get("preemptions")
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            return count, PREEMPTIONS_SIMULATED
    counters = path / COUNTERS_FILE
    if not counters.is_file():
        return None, None
    value = _read_run_json(counters).get("preemptions")
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 and float(value).is_integer()):
        raise AladdinError(f"{counters}: 'preemptions' must be a whole number >= 0, got {value!r}")
    return int(value), PREEMPTIONS_VLLM


def _read_run_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise AladdinError(f"{path}: not valid JSON") from None
    if not isinstance(meta, dict):
        raise AladdinError(f"{path}: expected a JSON object")
    return meta


@dataclass
class _Batch:
    """Complete records of a block of lines, with their chunk arrays already flat."""

    records: list[dict]  # chunk lists left out (or empty)
    n_chunks: np.ndarray
    chunk_times: np.ndarray
    chunk_tokens: np.ndarray
    partial_lines: int


class _NotCompact(Exception):
    """The fast parser met something it does not handle; the generic parser takes the batch."""


def _parse_compact(lines: list[str], source: Path) -> _Batch:
    """Fast path for lines as RecordWriter writes them (compact separators).

    Float parsing dominates the cost of json.loads on these lines, so the two number arrays
    are cut out of each line as text and parsed in one go by pandas' C CSV reader (about 4x
    faster); the rest of the line still goes through json.loads, which validates it.
    """
    rests, times_text, tokens_text = [], [], []
    partial = 0
    for line in lines:
        cut = _cut_arrays(line)
        if cut is None:
            if not line.strip():
                continue
            if _decode_lines([line])[1]:
                partial += 1  # e.g. a line cut inside its arrays
                continue
            raise _NotCompact  # a valid record in another layout
        rests.append(cut[0])
        times_text.append(cut[1])
        tokens_text.append(cut[2])
    try:  # one decode call for the whole batch; a bad line sends it through the per-line loop
        decoded = json.loads("[" + ",".join(rests) + "]")
        if len(decoded) != len(rests):
            raise ValueError("a line held more than one value")
    except ValueError:
        decoded, bad = _decode_lines(rests)
        partial += bad
        keep = [i for i, rec in enumerate(decoded) if rec is not None]
        decoded = [decoded[i] for i in keep]
        times_text = [times_text[i] for i in keep]
        tokens_text = [tokens_text[i] for i in keep]
    for rec in decoded:
        if not isinstance(rec, dict):
            raise _NotCompact
        _check_schema(rec, source)
    n_times = _count_items(times_text)
    if not np.array_equal(n_times, _count_items(tokens_text)):
        raise _NotCompact
    chunk_times = _parse_numbers(times_text, np.float64)
    chunk_tokens = _parse_numbers(tokens_text, np.int32)
    if len(chunk_times) != n_times.sum() or len(chunk_tokens) != n_times.sum():
        raise _NotCompact
    return _Batch(decoded, n_times, chunk_times, chunk_tokens, partial)


def _decode_lines(lines: list[str]) -> tuple[list[dict | None], int]:
    """Decode each line on its own: None (and one more partial line) where it is not a JSON object."""
    decoded: list[dict | None] = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        decoded.append(rec if isinstance(rec, dict) else None)
    return decoded, decoded.count(None)


def _cut_arrays(line: str) -> tuple[str, str, str] | None:
    """(line without the array contents, chunk_times text, chunk_tokens text), or None."""
    t, k = line.find(_TIMES_KEY), line.find(_TOKENS_KEY)
    if t < 0 or k < 0:
        return None
    t, k = t + len(_TIMES_KEY), k + len(_TOKENS_KEY)
    t_end, k_end = line.find("]", t), line.find("]", k)
    if t_end < 0 or k_end < 0:
        return None
    if t < k:
        return line[:t] + line[t_end:k] + line[k_end:], line[t:t_end], line[k:k_end]
    return line[:k] + line[k_end:t] + line[t_end:], line[t:t_end], line[k:k_end]


def _count_items(texts: list[str]) -> np.ndarray:
    return np.fromiter((s.count(",") + 1 if s else 0 for s in texts), dtype=np.int64, count=len(texts))


def _parse_numbers(texts: list[str], dtype) -> np.ndarray:
    joined = ",".join(filter(None, texts))
    if not joined:
        return np.zeros(0, dtype=dtype)
    try:
        frame = pd.read_csv(io.StringIO(joined), header=None, lineterminator=",", dtype=dtype,
                            na_filter=False, engine="c")
    except (ValueError, pd.errors.ParserError):
        raise _NotCompact from None
    if frame.shape[1] != 1:
        raise _NotCompact
    return frame.iloc[:, 0].to_numpy()


def _parse_generic(lines: list[str], source: Path) -> _Batch:
    """Any valid JSON layout; unreadable lines (a killed run's cut last line) are counted and skipped."""
    decoded, partial = _decode_lines([line for line in lines if line.strip()])
    records = [rec for rec in decoded if rec is not None]
    for rec in records:
        _check_schema(rec, source)
    times = [rec.get("chunk_times") or () for rec in records]
    tokens = [rec.get("chunk_tokens") or () for rec in records]
    n_times = np.fromiter(map(len, times), dtype=np.int64, count=len(records))
    n_tokens = np.fromiter(map(len, tokens), dtype=np.int64, count=len(records))
    if not np.array_equal(n_times, n_tokens):
        bad = records[int(np.flatnonzero(n_times != n_tokens)[0])]
        raise AladdinError(f"{source}: record {bad.get('id')!r} has {len(bad.get('chunk_times') or ())} "
                           f"chunk_times but {len(bad.get('chunk_tokens') or ())} chunk_tokens")
    try:
        chunk_times = np.array(list(chain.from_iterable(times)), dtype=np.float64)
        chunk_tokens = np.array(list(chain.from_iterable(tokens)), dtype=np.float64)
    except (TypeError, ValueError):
        raise AladdinError(f"{source}: a chunk_times or chunk_tokens entry is not a number") from None
    if np.isnan(chunk_times).any() or np.isnan(chunk_tokens).any():
        raise AladdinError(f"{source}: a chunk_times or chunk_tokens entry is not a number")
    return _Batch(records, n_times, chunk_times.reshape(-1), chunk_tokens.reshape(-1).astype(np.int32), partial)


def _check_schema(rec: dict, source: Path) -> None:
    version = rec.get("schema")
    if version != SCHEMA_VERSION:
        raise AladdinError(f"{source}: record schema version {version!r} is not supported "
                           f"(this aladdin reads {SCHEMA_VERSION})")


def _append_columns(records: list[dict], columns: dict[str, list]) -> None:
    """Move one batch of record dicts into the column lists (numbers as float arrays, None -> NaN)."""
    get = dict.get
    columns["id"].extend(str(get(r, "id")) for r in records)
    for name in ("scheduled", "sent", "done", "prompt_tokens", "requested_output_tokens", "status"):
        columns[name].append(np.array([get(r, name) for r in records], dtype=np.float64))
    columns["usage_output_tokens"].append(np.array([get(r, "output_tokens") for r in records], dtype=np.float64))
    columns["outcome"].extend(get(r, "outcome", OK) for r in records)
    columns["error"].extend(get(r, "error") for r in records)
    columns["worker"].extend(get(r, "worker") for r in records)
    if "slo_tier" in columns:
        columns["slo_tier"].extend(get(r, "slo_tier") for r in records)
        for name in ("ttft_slo", "atgt_slo"):
            columns[name].append(np.array([get(r, name) for r in records], dtype=np.float64))


def _frame(columns: dict[str, list]) -> pd.DataFrame:
    data = {}
    for name in REQUEST_COLUMNS:
        values = columns[name]
        data[name] = np.concatenate(values) if values and isinstance(values[0], np.ndarray) else values
    frame = pd.DataFrame(data, columns=list(REQUEST_COLUMNS))
    frame["outcome"] = frame["outcome"].astype("category")
    frame["worker"] = frame["worker"].astype("category")  # a few names repeated a million times
    if "slo_tier" in columns:
        tiers = columns["slo_tier"]
        ttft = np.concatenate(columns["ttft_slo"]) if columns["ttft_slo"] else np.zeros(0)
        atgt = np.concatenate(columns["atgt_slo"]) if columns["atgt_slo"] else np.zeros(0)
        if any(t is not None for t in tiers) or not np.isnan(ttft).all() or not np.isnan(atgt).all():
            frame["slo_tier"] = pd.Series(tiers, dtype="object").astype("category")
            frame["ttft_slo"] = ttft
            frame["atgt_slo"] = atgt
    return frame


def _drop_empty_chunks(requests: pd.DataFrame, times: np.ndarray, tokens: np.ndarray):
    """Drop chunks that carry no token, so the first kept chunk is the first token (TTFT)."""
    keep = tokens > 0
    if keep.all():
        return requests, times, tokens
    owner = np.repeat(np.arange(len(requests)), requests["n_chunks"].to_numpy())
    requests = requests.copy()
    requests["n_chunks"] = np.bincount(owner[keep], minlength=len(requests))
    return requests, times[keep], tokens[keep]


# --------------------------------------------------------------------------- vLLM bench results


def load_vllm_bench(path: str | Path) -> list[RunData]:
    """Convert a ``vllm bench serve --save-result --save-detailed`` JSON (or an --append-result file)."""
    path = Path(path)
    documents = _read_json_documents(path)
    runs = []
    for index, doc in enumerate(documents):
        suffix = f"#{index + 1}" if len(documents) > 1 else ""
        runs.append(_bench_to_run(doc, path, suffix))
    return runs


# Compressed bench results (``result.json.gz``, ``.json.xz``), told by their first bytes.
_COMPRESSED = ((b"\x1f\x8b", "gzip", gzip.open), (b"\xfd7zXZ\x00", "xz", lzma.open))


def _read_text(path: Path) -> str:
    """The file's text, decompressed when it is gzip or xz (whatever its name)."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    for magic, name, opener in _COMPRESSED:
        if head.startswith(magic):
            try:
                with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
                    return fh.read()
            except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:  # a cut or damaged file
                raise AladdinError(f"{path}: corrupt {name} file ({exc})") from None
    return path.read_text(encoding="utf-8", errors="replace")


def _bench_stem(path: Path) -> str:
    """The file name without ``.json`` and a compression suffix: ``r.json.xz`` -> ``r``."""
    name = path.name
    for suffix in (".gz", ".xz"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".json") or path.name


def _read_json_documents(path: Path) -> list[dict]:
    text = _read_text(path)
    if not text.strip():
        raise AladdinError(f"{path}: empty file (expected a run folder or a vLLM bench result JSON)")
    try:
        documents: list = [json.loads(text)]
    except ValueError:
        try:  # --append-result writes one JSON object per line
            documents = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError:
            raise AladdinError(f"{path}: not JSON; expected a run folder or a vLLM bench result JSON") from None
    if not all(isinstance(doc, dict) for doc in documents):
        raise AladdinError(f"{path}: not a vLLM bench serve result (expected a JSON object)")
    return documents


def _bench_to_run(doc: dict, path: Path, suffix: str) -> RunData:
    """Rebuild each request's chunk times as send + ttft + cumsum(itls), one token per chunk."""
    if "ttfts" not in doc or "itls" not in doc:
        if "duration" in doc and "completed" in doc:
            raise AladdinError(f"{path}: vLLM bench result has no per-request data; rerun with --save-detailed")
        raise AladdinError(f"{path}: not a vLLM bench serve result (no 'ttfts'/'itls' arrays)")
    ttfts = _bench_array(doc, "ttfts", path)
    n = len(ttfts)
    itls = doc["itls"]
    if not isinstance(itls, list) or len(itls) != n or not all(isinstance(x, list) for x in itls):
        raise AladdinError(f"{path}: 'itls' must be a list of {n} lists of inter-token gaps")
    errors = doc.get("errors")
    if errors is None:
        failed = np.zeros(n, dtype=bool)
        errors = [None] * n
    else:
        if not isinstance(errors, list) or len(errors) != n:
            raise AladdinError(f"{path}: 'errors' must be a list of {n} entries")
        failed = np.array([bool(e) for e in errors])
    starts = _optional_bench_array(doc, "start_times", n, path)
    sent = starts - np.nanmin(starts) if starts is not None and n else np.zeros(n)
    queue = _optional_bench_array(doc, "queue_times", n, path)
    scheduled = sent - np.nan_to_num(queue) if queue is not None else sent.copy()  # arrival, before the semaphore

    n_chunks = np.where(failed, 0, 1 + np.fromiter(map(len, itls), dtype=np.int64, count=n))
    has = n_chunks > 0
    ends = np.cumsum(n_chunks)
    first = np.zeros(int(ends[-1]) if n else 0, dtype=bool)
    first[(ends - n_chunks)[has]] = True
    step = np.zeros(len(first))
    step[~first] = np.fromiter(chain.from_iterable(itl for itl, bad in zip(itls, failed) if not bad),
                               dtype=np.float64, count=int((~first).sum()))
    since_start = np.cumsum(step)
    since_first = since_start - np.repeat(since_start[first], n_chunks[has])
    chunk_times = np.repeat((sent + ttfts)[has], n_chunks[has]) + since_first
    last = np.full(n, np.nan)
    last[has] = chunk_times[ends[has] - 1]
    latencies = _optional_bench_array(doc, "latencies", n, path)
    output_lens = _or_nan(_optional_bench_array(doc, "output_lens", n, path), n)
    requests = pd.DataFrame({
        "id": [str(i) for i in range(n)],
        "scheduled": scheduled,
        "sent": sent,
        "done": sent + latencies if latencies is not None else last,
        "n_chunks": n_chunks,
        "usage_output_tokens": np.where(failed, np.nan, output_lens),
        "prompt_tokens": _or_nan(_optional_bench_array(doc, "input_lens", n, path), n),
        "requested_output_tokens": np.full(n, np.nan),
        "outcome": pd.Categorical(np.where(failed, ERROR, OK), categories=[OK, ERROR, TIMEOUT]),
        "error": [str(e) if e else None for e in errors],
        "status": np.full(n, np.nan),
        "worker": [None] * n,
    }, columns=list(REQUEST_COLUMNS))
    meta = {k: v for k, v in doc.items() if not isinstance(v, (list, dict))}
    label = (doc.get("label") or _bench_stem(path)) + suffix
    return RunData(label=str(label), source=str(path), format=VLLM_BENCH_FORMAT, requests=requests,
                   chunk_times=chunk_times, chunk_tokens=np.ones(len(chunk_times), dtype=np.int32), meta=meta)


def _bench_array(doc: dict, key: str, path: Path) -> np.ndarray:
    values = doc[key]
    if not isinstance(values, list):
        raise AladdinError(f"{path}: '{key}' must be a list")
    try:
        return np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise AladdinError(f"{path}: '{key}' must hold numbers") from None


def _optional_bench_array(doc: dict, key: str, n: int, path: Path) -> np.ndarray | None:
    if doc.get(key) is None:
        return None
    values = _bench_array(doc, key, path)
    if len(values) != n:
        raise AladdinError(f"{path}: '{key}' has {len(values)} entries, expected {n}")
    return values


def _or_nan(values: np.ndarray | None, n: int) -> np.ndarray:
    return values if values is not None else np.full(n, np.nan)
