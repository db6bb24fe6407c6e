"""Entry point ``vllm.endpoint_plugins: aladdin_state``: the worker as the AladdinScheduler sees it,
on the vLLM server's own port, for routers and dashboards:

- ``GET /aladdin/state``: JSON (capacity, KV held and reserved, running, waiting and held requests
  with their tokens, predictions and SLOs, the latest ended requests with their lengths
  (``?finished_since=SEQ``: those after SEQ only), totals, profile, versions);
- the ``aladdin:*`` series on vLLM's ``/metrics`` (``metrics``), set from the same state on each
  scrape.

Needs the ``aladdin`` general plugin too (``VLLM_PLUGINS=aladdin,aladdin_state``)."""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from aladdin.plugin.vllm.frontend import ENGINE_ATTR, engine_client, engine_state_read

STATE_PATH = "/aladdin/state"
METRICS_PATH = "/metrics"
FINISHED_SINCE = "finished_since"  # query: list only the requests that ended after this sequence number
NOT_OURS = ("the engine's scheduler is not AladdinScheduler: start vLLM with "
            "--scheduler-cls aladdin.plugin.vllm.scheduler.AladdinScheduler")


class RefreshMetrics:
    """ASGI middleware: before vLLM answers ``GET /metrics``, set the aladdin series from the
    engine's state; every other request passes straight through."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/") == METRICS_PATH:
            read = await engine_state_read(scope["app"].state)
            if read is not None:
                from aladdin.plugin.vllm import metrics  # registers the series in this process only

                metrics.export(read[1], read[0])
        await self.app(scope, receive, send)


class StateEndpoint:
    name = "aladdin_state"
    required_tasks = ("generate",)

    def attach_router(self, app: FastAPI) -> None:
        app.add_middleware(RefreshMetrics)

        @app.get(STATE_PATH)
        async def aladdin_state(raw: Request) -> JSONResponse:
            if engine_client(raw.app.state) is None:
                return JSONResponse({"error": "no engine behind this server"}, status_code=503)
            read = await engine_state_read(raw.app.state)
            if read is None:
                return JSONResponse({"error": NOT_OURS}, status_code=404)
            state = read[1]
            since = raw.query_params.get(FINISHED_SINCE)
            if since is not None:  # only the ends after the reader's last (the cached state is shared)
                if not since.isdigit():
                    return JSONResponse({"error": f"{FINISHED_SINCE} must be a whole number, got {since!r}"},
                                        status_code=400)
                state = {**state, "finished": [row for row in state.get("finished", ()) if row["seq"] > int(since)]}
            return JSONResponse(state)

    async def init_state(self, engine_client: Any, state: Any, args: Any) -> None:
        setattr(state, ENGINE_ATTR, engine_client)
