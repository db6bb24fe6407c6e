"""Two local vLLM CPU workers for the front ends' real-vLLM tests: worker 0 with the engine plugin
(a small KV cache), worker 1 stock."""

from __future__ import annotations

from aladdin.cluster import LocalCluster
from aladdin.plugin.vllm.launch import VLLM_PLUGINS, plugin_flags

PLUGIN_FLAGS = tuple(plugin_flags())
PLUGIN_BLOCKS = 65  # 64 usable blocks of 32 tokens: 2048 KV tokens, one max-length request


class MixedCluster(LocalCluster):
    """Worker 0 with the engine plugin (its flags, VLLM_PLUGINS, a small KV cache), worker 1 stock."""

    def _command(self, model_dir, port, index):
        command = super()._command(model_dir, port, index)
        if index != 0:
            return ["env", "-u", "VLLM_PLUGINS", *command]
        blocks = command.index("--num-gpu-blocks-override") + 1
        command[blocks] = str(PLUGIN_BLOCKS)
        return ["env", f"VLLM_PLUGINS={VLLM_PLUGINS}", *command, *PLUGIN_FLAGS]
