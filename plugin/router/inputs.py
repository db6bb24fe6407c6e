"""A client's request, checked and measured before it is placed.

Why here: every bad input must become one clear 4xx line before the router spends a placement
on it (malformed JSON, unknown model, a prompt longer than any worker's context, a negative or
huge ``max_tokens``, a bad SLO header), and the prompt must be measured in the model's tokens,
which is CPU work done off the event loop (``Tokenizer.count`` runs in an executor).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aladdin.errors import AladdinError

# SLO headers: the router's own, then llm-d's (both milliseconds).
TTFT_HEADERS = ("X-Aladdin-TTFT-SLO-Ms", "x-llm-d-slo-ttft-ms")
ATGT_HEADERS = ("X-Aladdin-ATGT-SLO-Ms", "x-llm-d-slo-tpot-ms")
MAX_SLO_MS = 24 * 3600 * 1000.0
MAX_TOKENS_BOUND = 2**24  # beyond any model's context: refused even before the context check
CHAT_PATH = "/v1/chat/completions"


class ClientError(Exception):
    """A request the router refuses, with its HTTP status and one-line reason."""

    def __init__(self, status: int, message: str, kind: str = "BadRequestError", retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        """OpenAI's (and vLLM's) error shape, so clients parse it the same way."""
        return {"error": {"message": self.message, "type": self.kind, "param": None, "code": self.status}}


@dataclass(frozen=True)
class ParsedRequest:
    """What placement needs of one request; ``payload`` is the client's JSON object."""

    path: str
    payload: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int | None
    ttft_slo: float | None  # seconds, from a header (None: the router's default)
    atgt_slo: float | None
    predicted_output_tokens: int | None = None  # the client's own, in vllm_xargs.aladdin_output_tokens

    @property
    def chat(self) -> bool:
        return self.path == CHAT_PATH

    @property
    def wants_usage(self) -> bool:
        """The client asked for the final usage chunk of a stream itself."""
        options = self.payload.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))


def prompt_text(request: ParsedRequest) -> str:
    """The prompt's words, for a length model that reads them: a completion's prompt, or the
    chat messages' contents one per line (a prompt given as token ids has none)."""
    if request.chat:
        return "\n".join(_content_text(m.get("content")) for m in request.payload["messages"])
    prompt = request.payload["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) else ""


class Tokenizer(Protocol):
    """Counts a request's prompt tokens (blocking; the router calls it in an executor)."""

    def count(self, request: ParsedRequest) -> int: ...


def parse(path: str, body: bytes, headers: Mapping[str, str]) -> ParsedRequest:
    """Check the body and headers of a completion request; ClientError(400) names the problem."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ClientError(400, "the request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise ClientError(400, "the request needs a 'model' (a string)")
    if path == CHAT_PATH:
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ClientError(400, "'messages' must be a non-empty list of message objects")
    else:
        prompt = payload.get("prompt")
        if not _one_prompt(prompt):
            raise ClientError(400, "'prompt' must be one non-empty string or one list of token ids "
                                   "(send one request per prompt)")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise ClientError(400, f"'stream' must be true or false, got {stream!r}")
    n = payload.get("n", 1)
    if n != 1 and n is not None:
        raise ClientError(400, f"'n' must be 1 through the router (got {n!r}): send one request per sample")
    max_tokens = None
    for key in ("max_completion_tokens", "max_tokens"):
        value = payload.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ClientError(400, f"'{key}' must be a whole number, got {value!r}")
        if value < 1:
            raise ClientError(400, f"'{key}' must be at least 1, got {value}")
        if value > MAX_TOKENS_BOUND:
            raise ClientError(400, f"'{key}' {value} exceeds any context (at most {MAX_TOKENS_BOUND})")
        max_tokens = value if max_tokens is None else min(max_tokens, value)
    xargs = payload.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        raise ClientError(400, "'vllm_xargs' must be a JSON object")
    predicted = None
    if xargs:
        from aladdin.plugin.vllm.config import request_inputs  # the engine plugin's own check of these keys

        try:
            predicted = request_inputs(xargs).predicted_output_tokens
        except AladdinError as exc:
            raise ClientError(400, str(exc)) from None
    return ParsedRequest(path, payload, model, stream, max_tokens, _slo_header(headers, TTFT_HEADERS),
                         _slo_header(headers, ATGT_HEADERS), predicted)


def _one_prompt(prompt: Any) -> bool:
    if isinstance(prompt, str):
        return bool(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return True
    return isinstance(prompt, list) and len(prompt) == 1 and _one_prompt(prompt[0])


def _slo_header(headers: Mapping[str, str], names: tuple[str, ...]) -> float | None:
    """The first of ``names`` present, in seconds; a bad value is a 400 naming the header."""
    for name in names:
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            raise ClientError(400, f"header {name} must be a number of milliseconds, got {raw!r}") from None
        if not (math.isfinite(value) and 0 < value <= MAX_SLO_MS):
            raise ClientError(400, f"header {name} must be > 0 and at most {MAX_SLO_MS:.0f} ms, got {raw!r}")
        return value / 1000.0
    return None


def check_lengths(request: ParsedRequest, prompt_tokens: int, context_limit: int | None) -> None:
    """Refuse what no worker can hold: the prompt, or the prompt plus ``max_tokens``."""
    if context_limit is None:
        return
    if prompt_tokens >= context_limit:
        raise ClientError(400, f"the prompt has {prompt_tokens} tokens; the largest worker context is "
                               f"{context_limit} tokens (prompt plus at least one output token)")
    if request.max_tokens is not None and prompt_tokens + request.max_tokens > context_limit:
        raise ClientError(400, f"max_tokens {request.max_tokens} plus the prompt's {prompt_tokens} tokens exceeds "
                               f"the largest worker context of {context_limit} tokens")


# ------------------------------------------------------------------ tokenizers


class HFTokenizer:
    """The model's own tokenizer (a model folder, loadgen.datasets.load_tokenizer)."""

    def __init__(self, folder: str | Path):
        from aladdin.loadgen.datasets import load_tokenizer

        self.folder = str(folder)
        self._tokenizer = load_tokenizer(folder)
        # a fast tokenizer's Rust backend counts a text prompt the same as __call__ (the same
        # normalizer, pre-tokenizer, model and special-token template), without building offsets,
        # attention masks or a BatchEncoding: a third less CPU per request, the GIL released
        backend = getattr(self._tokenizer, "backend_tokenizer", None)
        self._encode_fast = getattr(backend, "encode_batch_fast", None)

    def count(self, request: ParsedRequest) -> int:
        tok = self._tokenizer
        if request.chat:
            messages = request.payload["messages"]
            if getattr(tok, "chat_template", None):
                try:
                    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                    return max(len(tok(text, add_special_tokens=False)["input_ids"]), 1)  # the template has BOS
                except Exception:  # noqa: BLE001 - an odd message shape: fall back to the contents
                    pass
            text = "\n".join(_content_text(m.get("content")) for m in messages)
            return max(len(tok(text, add_special_tokens=True)["input_ids"]) + 4 * len(messages), 1)
        prompt = request.payload["prompt"]
        if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
            prompt = prompt[0]
        if isinstance(prompt, list):
            return len(prompt)
        if self._encode_fast is not None:
            return max(len(self._encode_fast([prompt], add_special_tokens=True)[0].ids), 1)
        return max(len(tok(prompt, add_special_tokens=True)["input_ids"]), 1)


class WordTokenizer:
    """Whitespace words as tokens: for tests and fake servers only (never the model's count)."""

    def count(self, request: ParsedRequest) -> int:
        if request.chat:
            return max(sum(len(_content_text(m.get("content")).split()) for m in request.payload["messages"]), 1)
        prompt = request.payload["prompt"]
        if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
            prompt = prompt[0]
        return len(prompt) if isinstance(prompt, list) else max(len(prompt.split()), 1)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""
