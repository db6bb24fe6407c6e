"""Everything vLLM-version-specific the plugin touches (0.26-0.33), in one place: the base
scheduler class, request fields, finishing a request, the engine's KV geometry."""

from __future__ import annotations

from typing import Any

import vllm
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs
from vllm.v1.request import Request, RequestStatus

__all__ = ["AsyncScheduler", "EngineCoreOutput", "EngineCoreOutputs", "Request", "RequestStatus", "VLLM_VERSION"]

VLLM_VERSION = vllm.__version__


def extra_args(request: Request) -> dict[str, Any]:
    """The request's ``vllm_xargs`` (they reach ``SamplingParams.extra_args``)."""
    params = request.sampling_params
    return dict(params.extra_args or {}) if params is not None and params.extra_args else {}


def max_tokens(request: Request) -> int:
    return int(request.max_tokens)


def kv_geometry(scheduler: AsyncScheduler) -> tuple[int, int]:
    """(block size, allocatable blocks) of the engine's KV cache (one block is vLLM's null block)."""
    pool = scheduler.kv_cache_manager.block_pool
    return int(scheduler.block_size), int(pool.num_gpu_blocks) - 1


def is_finished(request: Request) -> bool:
    return RequestStatus.is_finished(request.status)


def error_output(request: Request) -> EngineCoreOutput:
    """The output that tells the front end a request ended with an error (before any token)."""
    return EngineCoreOutput(request_id=request.request_id, new_token_ids=[],
                            finish_reason=request.get_finished_reason())
