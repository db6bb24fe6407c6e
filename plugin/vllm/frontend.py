"""The API server's link to an engine that runs AladdinScheduler: its state, read between engine
steps and cached for ``FRESH_S`` (so the gauges and the front door cost one engine call per
window, however often they are read), and why a request ended before its first token.

The engine client is the one vLLM hands the ``aladdin_state`` endpoint plugin; without that
plugin both return None and the front door does only what needs no engine."""

from __future__ import annotations

import asyncio
import time
from typing import Any

FRESH_S = 0.05  # state read at most this long ago (the issue asks for gauges fresh within 100 ms)
ENGINE_ATTR = "aladdin_engine_client"  # where the endpoint plugin keeps the engine client on app.state


def engine_client(app_state: Any) -> Any:
    return getattr(app_state, ENGINE_ATTR, None)


async def engine_state(app_state: Any) -> dict[str, Any] | None:
    """The scheduler's state, at most FRESH_S old; None without the plugin or its scheduler."""
    read = await engine_state_read(app_state)
    return None if read is None else read[1]


async def engine_state_read(app_state: Any) -> tuple[float, dict[str, Any]] | None:
    """(when it was read, time.monotonic; the state), the read at most FRESH_S old."""
    engine = engine_client(app_state)
    if engine is None:
        return None
    cached = getattr(app_state, "aladdin_state_cache", None)
    if cached is not None and time.monotonic() - cached[0] < FRESH_S:
        return cached
    lock = getattr(app_state, "aladdin_state_lock", None)
    if lock is None:
        lock = app_state.aladdin_state_lock = asyncio.Lock()
    async with lock:  # concurrent readers share one engine call
        cached = getattr(app_state, "aladdin_state_cache", None)
        if cached is not None and time.monotonic() - cached[0] < FRESH_S:
            return cached
        read_at = time.monotonic()
        state = await engine.engine_core.call_utility_async("aladdin_state")
        if state is None:
            return None
        app_state.aladdin_state_cache = (read_at, state)
        return app_state.aladdin_state_cache


async def request_outcome(app_state: Any, request_key: str) -> dict[str, str] | None:
    """{"outcome": "rejected" | "handed-back", "message": ...} if the scheduler ended the request
    with this X-Request-Id before its first token, else None."""
    engine = engine_client(app_state)
    if engine is None:
        return None
    return await engine.engine_core.call_utility_async("aladdin_outcome", request_key)
