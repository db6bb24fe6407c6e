"""A local cluster of workers of different sizes: the per-worker KV caches reach each vLLM's flags,
and the demo's --kv-tokens list is checked before anything starts."""

from __future__ import annotations

import pytest

from aladdin.cluster import BLOCK_SIZE, ClusterConfig, LocalCluster, usable_kv_tokens
from aladdin.demo import kv_sizes
from aladdin.errors import AladdinError
from aladdin.modeldir import default_model_dir


def test_each_worker_gets_its_own_kv_cache(tmp_path):
    cluster = LocalCluster(ClusterConfig(workers=2, kv_tokens=2080, kv_tokens_each=(2080, 8192), max_model_len=2048,
                                         state_dir=tmp_path))
    model_dir = default_model_dir("tiny")
    blocks = []
    for index in range(2):
        command = cluster._command(model_dir, 8100 + index, index)
        blocks.append(int(command[command.index("--num-gpu-blocks-override") + 1]))
    assert blocks == [2080 // BLOCK_SIZE, 8192 // BLOCK_SIZE]


def test_bad_sizes_are_one_clear_line():
    assert kv_sizes("4096", 3) == (4096, 4096, 4096)
    assert kv_sizes("2048, 8192", 2) == (2048, 8192)
    for text, words in (("2048,x", "whole numbers"), ("2048,4096,8192", "3 sizes for 2 workers")):
        with pytest.raises(AladdinError, match=words):
            kv_sizes(text, 2)
    with pytest.raises(AladdinError, match="2 sizes for 3 workers"):
        ClusterConfig(workers=3, kv_tokens_each=(4096, 4096)).validate()
    with pytest.raises(AladdinError, match="must hold one request"):
        ClusterConfig(workers=2, kv_tokens_each=(4096, 1024), max_model_len=2048).validate()


def test_a_cache_of_exactly_one_request_is_refused_before_vllm_refuses_it():
    """vLLM keeps one block back (its null block): 2048 tokens in 64 blocks hold 2016, and a
    2048-token request does not fit; the demo used to start the workers and fail with vLLM's traceback."""
    with pytest.raises(AladdinError, match="leaving 2016; give at least 2080"):
        ClusterConfig(workers=2, kv_tokens_each=(2048, 8192), max_model_len=2048).validate()
    ClusterConfig(workers=2, kv_tokens_each=(2080, 8192), max_model_len=2048).validate()
    assert usable_kv_tokens(2080) == 2048
