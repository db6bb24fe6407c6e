"""``--middleware aladdin.plugin.vllm.middleware.admission``: the front door of a vLLM server that
runs AladdinScheduler, answering before a completion's stream starts (a real HTTP status, not
an SSE error event):

- 400 naming the problem when the request's aladdin ``vllm_xargs`` are malformed;
- 503 with ``Retry-After`` when the engine already holds ``max_held`` requests it cannot admit
  yet, so a client or router retries on another worker.

The engine's state is read through the ``aladdin_state`` endpoint plugin's engine client and
cached for the plugin's ``tick_s``; without that plugin only the 400 check applies.
"""

import json
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from aladdin.errors import AladdinError
from aladdin.plugin.vllm.config import request_inputs

COMPLETION_PATHS = ("/v1/completions", "/v1/chat/completions")
RETRY_AFTER_S = 1


def error_response(message: str, status: int, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """vLLM's own error body, so clients parse it the same way."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}},
                        status_code=status, headers=headers)


async def engine_state(app_state: Any) -> dict[str, Any] | None:
    engine = getattr(app_state, "aladdin_engine_client", None)
    if engine is None:
        return None
    cached = getattr(app_state, "aladdin_state_cache", None)
    now = time.monotonic()
    if cached is not None and now - cached[0] < cached[1].get("tick_s", 0.05):
        return cached[1]
    state = await engine.engine_core.call_utility_async("aladdin_state")
    if state is not None:
        app_state.aladdin_state_cache = (now, state)
    return state


async def admission(request: Request, call_next):
    if request.method != "POST" or request.url.path not in COMPLETION_PATHS:
        return await call_next(request)
    try:
        payload = json.loads(await request.body())
    except ValueError:
        return await call_next(request)  # vLLM answers malformed JSON itself
    xargs = payload.get("vllm_xargs") if isinstance(payload, dict) else None
    if isinstance(xargs, dict):
        try:
            request_inputs(xargs)
        except AladdinError as exc:
            return error_response(str(exc), 400, "BadRequestError")
    state = await engine_state(request.app.state)
    if state is not None and len(state["held"]) >= state["max_held"]:
        return error_response(f"this worker already holds {len(state['held'])} requests it cannot start yet; "
                              "retry on another worker", 503, "ServiceUnavailableError",
                              {"Retry-After": str(RETRY_AFTER_S)})
    return await call_next(request)
