"""Entry point ``vllm.endpoint_plugins: aladdin_state``: ``GET /aladdin/state`` on the vLLM
server's own port, the worker as the AladdinScheduler sees it (JSON), for routers and
dashboards. Needs the ``aladdin`` general plugin too (``VLLM_PLUGINS=aladdin,aladdin_state``)."""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

STATE_PATH = "/aladdin/state"


class StateEndpoint:
    name = "aladdin_state"
    required_tasks = ("generate",)

    def attach_router(self, app: FastAPI) -> None:
        @app.get(STATE_PATH)
        async def aladdin_state(raw: Request) -> JSONResponse:
            engine = getattr(raw.app.state, "aladdin_engine_client", None)
            if engine is None:
                return JSONResponse({"error": "no engine behind this server"}, status_code=503)
            state: Any = await engine.engine_core.call_utility_async("aladdin_state")
            if state is None:
                return JSONResponse({"error": "the engine's scheduler is not AladdinScheduler: start vLLM with "
                                              "--scheduler-cls aladdin.plugin.vllm.scheduler.AladdinScheduler"},
                                    status_code=404)
            return JSONResponse(state)

    async def init_state(self, engine_client: Any, state: Any, args: Any) -> None:
        state.aladdin_engine_client = engine_client
