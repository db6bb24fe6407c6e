"""How a vLLM server is started with the engine plugin: its flags and environment, defined once.

The README's "Use inside your vLLM" block spells the same thing out for users; the local cluster,
the demo, the benchmarks and the tests build their servers from here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from aladdin.plugin.vllm.config import ADDITIONAL_CONFIG_KEY

SCHEDULER_CLASS = "aladdin.plugin.vllm.scheduler.AladdinScheduler"
FRONT_DOOR = "aladdin.plugin.vllm.middleware.FrontDoor"
# VLLM_PLUGINS: the engine hook and GET /aladdin/state (inert unless --scheduler-cls names ours)
VLLM_PLUGINS = "aladdin,aladdin_state"
PLUGIN_ENVIRONMENT = {"VLLM_PLUGINS": VLLM_PLUGINS}


def plugin_flags(profile: str | Path | None = None, ttft_slo: float = math.inf, atgt_slo: float = math.inf,
                 **settings) -> list[str]:
    """vLLM flags that turn the plugin on: the scheduler class, the front door, and its config
    (``settings``: any other PluginConfig key) through ``--additional-config``."""
    config = dict(settings)
    if profile is not None:
        config["profile"] = str(Path(profile).resolve())
    config.update({name: value for name, value in (("ttft_slo", ttft_slo), ("atgt_slo", atgt_slo))
                   if math.isfinite(value)})
    flags = ["--scheduler-cls", SCHEDULER_CLASS, "--middleware", FRONT_DOOR]
    if config:
        flags += ["--additional-config", json.dumps({ADDITIONAL_CONFIG_KEY: config})]
    return flags
