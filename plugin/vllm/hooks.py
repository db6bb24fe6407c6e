"""Entry point ``vllm.general_plugins: aladdin``: gives vLLM's engine core utility methods that
read the AladdinScheduler, so the API server can ask between engine steps
(``engine_core.call_utility_async(name, ...)``). It runs in every vLLM process, more than once,
and changes nothing unless the scheduler named by ``--scheduler-cls`` is ours."""

from __future__ import annotations

from typing import Any


def _scheduler_method(engine_core: Any, name: str) -> Any:
    method = getattr(getattr(engine_core, "scheduler", None), name, None)
    return method if callable(method) else None


def aladdin_state(engine_core: Any) -> dict[str, Any] | None:
    """The scheduler's state (GET /aladdin/state, the aladdin:* gauges); None if it is not ours."""
    method = _scheduler_method(engine_core, "aladdin_state")
    return method() if method else None


def aladdin_outcome(engine_core: Any, request_key: str) -> dict[str, str] | None:
    """Whether the scheduler refused or handed back the request with this X-Request-Id."""
    method = _scheduler_method(engine_core, "outcome")
    return method(request_key) if method else None


UTILITIES = {"aladdin_state": aladdin_state, "aladdin_outcome": aladdin_outcome}


def register() -> None:
    from vllm.v1.engine.core import EngineCore

    for name, function in UTILITIES.items():
        if getattr(EngineCore, name, None) is not function:
            setattr(EngineCore, name, function)
