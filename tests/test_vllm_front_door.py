"""The front door's response handling (middleware.HeldResponse) on the streams vLLM 0.32 and 0.26
send for a request the engine ended before its first token. The real path runs against a vLLM
0.32 server in test_vllm_plugin.py; 0.26 runs on the GPU only, so its stream shape is replayed
here. The engine link is a stand-in that answers the one utility call the front door makes."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from aladdin.plugin.vllm.frontend import ENGINE_ATTR
from aladdin.plugin.vllm.middleware import OUTCOME_HEADER, HeldResponse

HANDED_BACK = {"outcome": "handed-back", "message": "its TTFT can no longer be met on this worker"}
SSE = [(b"content-type", b"text/event-stream; charset=utf-8")]
JSON = [(b"content-type", b"application/json")]


class EngineLink:
    """Answers ``aladdin_outcome`` for the request keys it was told about."""

    def __init__(self, outcomes: dict[str, dict]):
        self.engine_core = self
        self.outcomes = outcomes

    async def call_utility_async(self, name: str, key: str):
        assert name == "aladdin_outcome"
        return self.outcomes.get(key)


def chunk(**choice) -> bytes:
    return b"data: " + json.dumps({"id": "cmpl-1", "choices": [{"index": 0, **choice}]}).encode() + b"\n\n"


def respond(status: int, headers: list, bodies: list[bytes], outcomes: dict) -> list[dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def run() -> None:
        held = HeldResponse(send, SimpleNamespace(**{ENGINE_ATTR: EngineLink(outcomes)}), "key")
        await held.send({"type": "http.response.start", "status": status, "headers": headers})
        for i, body in enumerate(bodies):
            await held.send({"type": "http.response.body", "body": body, "more_body": i < len(bodies) - 1})

    asyncio.run(run())
    return sent


@pytest.mark.parametrize("status, headers, bodies", [
    (200, SSE, [b'data: {"error": {"message": "Internal server error", "code": 500}}\n\n', b"data: [DONE]\n\n"]),  # 0.32
    (200, SSE, [b"data: [DONE]\n\n"]),  # 0.26 drops the empty error output
    (200, SSE, [chunk(delta={"role": "assistant", "content": ""}, finish_reason=None), b"data: [DONE]\n\n"]),  # chat
    (500, JSON, [b'{"error": {"message": "Internal server error"}}']),  # not streamed
    (200, JSON, [b'{"choices": [{"index": 0, "text": "", "finish_reason": "error"}]}']),
])
def test_a_request_the_engine_ended_becomes_a_503_naming_the_outcome(status, headers, bodies):
    sent = respond(status, headers, bodies, {"key": HANDED_BACK})
    start, body = sent
    assert start["status"] == 503
    assert (OUTCOME_HEADER.lower().encode(), b"handed-back") in start["headers"]
    assert "TTFT can no longer be met" in json.loads(body["body"])["error"]["message"]


def test_a_served_stream_passes_unchanged_and_in_order():
    bodies = [chunk(delta={"role": "assistant", "content": ""}, finish_reason=None),
              chunk(delta={"content": "Hi"}, finish_reason=None), chunk(text="", finish_reason="length"),
              b"data: [DONE]\n\n"]
    sent = respond(200, SSE, bodies, {"key": HANDED_BACK})
    assert sent[0]["status"] == 200 and [m["body"] for m in sent[1:]] == bodies


def test_an_error_the_engine_did_not_cause_passes_unchanged():
    sent = respond(500, JSON, [b'{"error": {"message": "boom"}}'], {})
    assert sent[0]["status"] == 500 and sent[1]["body"] == b'{"error": {"message": "boom"}}'
    sent = respond(200, SSE, [b"data: [DONE]\n\n"], {})
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"data: [DONE]\n\n"
