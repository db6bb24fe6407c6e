"""``--middleware aladdin.plugin.vllm.middleware.FrontDoor``: the front door of a vLLM server that
runs AladdinScheduler. It answers with a real HTTP status before a completion's stream starts,
never an SSE error event:

- 400 naming the problem when the request's aladdin ``vllm_xargs`` are malformed;
- 503 with ``Retry-After`` when the engine already holds ``max_held`` requests it cannot admit
  yet, so a client or router retries on another worker;
- 503 with ``Retry-After`` and ``X-Aladdin-Outcome: rejected | handed-back`` (and the reason)
  when the scheduler refused the request or handed it back before its first token. The engine
  can only end such a request with vLLM's generic error, so the front door tags each request
  with an ``X-Request-Id`` (unless the client sent one), holds the response back until its first
  token or error, and asks the engine why when it is an error.

It reads the engine through the ``aladdin_state`` endpoint plugin; without that plugin only the
400 check applies. A pure ASGI middleware, so streams pass through untouched after the first
token."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aladdin.errors import AladdinError
from aladdin.plugin.vllm.config import request_inputs
from aladdin.plugin.vllm.frontend import engine_client, engine_state, request_outcome

COMPLETION_PATHS = ("/v1/completions", "/v1/chat/completions")
RETRY_AFTER_S = 1
OUTCOME_HEADER = "X-Aladdin-Outcome"
REQUEST_ID_HEADER = b"x-request-id"
PREAMBLE_EVENTS = 8  # stream events held back at most while waiting for the first token


def error_body(message: str, status: int, kind: str) -> bytes:
    """vLLM's own error body, so clients parse it the same way."""
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()


async def respond(send: Any, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


DONE = b"data: [DONE]"


def carries_output(event: bytes) -> bool:
    """Whether a stream event carries the request's output (a token, a tool call, a normal
    finish), as opposed to what vLLM sends before it: a chat role chunk, a usage-only chunk."""
    if not event.startswith(b"data: {"):
        return event.strip() != DONE
    try:
        chunk = json.loads(event[len(b"data: "):])
    except ValueError:
        return True
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        return True
    for choice in choices:
        delta = choice.get("delta") or {}
        if choice.get("text") or delta.get("content") or set(delta) - {"role", "content"}:
            return True
        if choice.get("finish_reason") not in (None, "error"):
            return True
    return False


def ended_in_error(payload: bytes) -> bool:
    """An error body or event: vLLM 0.32 sends {"error": ...}; 0.26 ends the choice with
    ``finish_reason: "error"`` in a normal chunk (or a 200 JSON body)."""
    if payload.startswith(b"data: "):
        payload = payload[len(b"data: "):]
    if payload.startswith(b'{"error"'):
        return True
    if b'"finish_reason":"error"' not in payload.replace(b" ", b""):
        return False
    try:
        chunk = json.loads(payload)
    except ValueError:
        return False
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    return bool(choices) and any(isinstance(c, dict) and c.get("finish_reason") == "error" for c in choices)


class FrontDoor:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in COMPLETION_PATHS:
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # disconnects still reach vLLM

        problem = bad_xargs(body)
        if problem:
            await respond(send, 400, error_body(problem, 400, "BadRequestError"))
            return
        app_state = scope["app"].state
        state = await engine_state(app_state)
        if state is None:  # not our scheduler (or no engine link): only the 400 check applies
            await self.app(scope, replay, send)
            return
        if len(state["held"]) >= state["max_held"]:
            await respond(send, 503, error_body(
                f"this worker already holds {len(state['held'])} requests it cannot start yet; retry on another "
                "worker", 503, "ServiceUnavailableError"), {"Retry-After": str(RETRY_AFTER_S)})
            return
        key = request_key(scope)
        await self.app(scope, replay, HeldResponse(send, app_state, key).send)


def bad_xargs(body: bytes) -> str | None:
    """The problem with the request's aladdin vllm_xargs, if any (vLLM answers malformed JSON itself)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    xargs = payload.get("vllm_xargs") if isinstance(payload, dict) else None
    if isinstance(xargs, dict):
        try:
            request_inputs(xargs)
        except AladdinError as exc:
            return str(exc)
    return None


def request_key(scope: dict) -> str:
    """The request's X-Request-Id, set to a fresh one when the client sent none (vLLM builds the
    engine's request id from it, which is how the engine's outcome is found again)."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            return value.decode("latin-1")
    key = uuid.uuid4().hex
    scope["headers"] = [*scope["headers"], (REQUEST_ID_HEADER, key.encode())]
    return key


class HeldResponse:
    """Holds the response start (and what a stream sends before its output: a chat role chunk, a
    usage chunk) until the first output, an error or the stream's end; an end without output
    that the scheduler caused becomes a 503 with its reason, anything else passes unchanged."""

    def __init__(self, send: Any, app_state: Any, key: str) -> None:
        self._send = send
        self._app_state = app_state
        self._key = key
        self._held: list[dict] = []  # the start message, then body messages
        self._events = 0
        self._decided = False  # the response passes through from here on
        self._answered = False  # a 503 was sent instead

    async def send(self, message: dict) -> None:
        if self._answered:
            return  # the 503 replaced vLLM's response: the rest of it goes nowhere
        if self._decided:
            await self._send(message)
            return
        self._held.append(message)
        if message["type"] == "http.response.start":
            return
        if message["type"] != "http.response.body":
            await self._flush()
            return
        start = self._held[0]
        body = message.get("body", b"")
        streaming = any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in start["headers"])
        ended = not message.get("more_body", False)
        if not streaming:
            if not ended:
                return  # a whole JSON body is short: hold it
            if (start["status"] >= 500 or ended_in_error(b"".join(m.get("body", b"") for m in self._held[1:]))) \
                    and await self._answer_outcome():
                return
            await self._flush()
            return
        for event in body.split(b"\n\n"):
            event = event.strip()
            if not event:
                continue
            # vLLM 0.32 streams an error event; 0.26 drops the empty error output and sends only [DONE]
            if (ended_in_error(event) or event == DONE) and await self._answer_outcome():
                return
            if carries_output(event) or event == DONE or self._events >= PREAMBLE_EVENTS:
                await self._flush()
                return
            self._events += 1
        if ended:
            await self._flush()

    async def _answer_outcome(self) -> bool:
        outcome = await request_outcome(self._app_state, self._key) if engine_client(self._app_state) else None
        if outcome is None:
            return False
        self._answered = True
        await respond(self._send, 503, error_body(f"aladdin {outcome['outcome']}: {outcome['message']}", 503,
                                                  "ServiceUnavailableError"),
                      {"Retry-After": str(RETRY_AFTER_S), OUTCOME_HEADER: outcome["outcome"]})
        return True

    async def _flush(self) -> None:
        self._decided = True
        held, self._held = self._held, []
        for message in held:
            await self._send(message)
