"""Entry point ``vllm.general_plugins: aladdin``: gives vLLM's engine core a utility method that
returns the AladdinScheduler's state, so the API server can ask for it between engine steps
(``engine_core.call_utility_async("aladdin_state")``). It runs in every vLLM process, more than
once, and changes nothing unless the scheduler named by ``--scheduler-cls`` is ours."""

from __future__ import annotations

from typing import Any


def aladdin_state(engine_core: Any) -> dict[str, Any] | None:
    scheduler = getattr(engine_core, "scheduler", None)
    exporter = getattr(scheduler, "aladdin_state", None)
    return exporter() if callable(exporter) else None


def register() -> None:
    from vllm.v1.engine.core import EngineCore

    if getattr(EngineCore, "aladdin_state", None) is not aladdin_state:
        EngineCore.aladdin_state = aladdin_state
