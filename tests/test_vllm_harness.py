"""The real vLLM CPU harness: the shared server streams pinned-length outputs and reports KV state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from aladdin.cluster import ClusterConfig, LocalCluster, free_port_block
from aladdin.errors import AladdinError


@pytest.mark.vllm
def test_streamed_completion_has_pinned_length_and_kv_metrics(vllm_server):
    from aladdin.loadgen.client import Endpoint, RunClock, StreamingClient, served_models

    assert served_models(vllm_server.url) == ["tiny"]
    clock = RunClock(start_epoch=__import__("time").time())
    client = StreamingClient(Endpoint(vllm_server.url, model="tiny"), clock)
    rec = client.run("t0", "Tell me about the history of the printing press.", None, 24, scheduled=0.0)
    client.close()
    assert rec.outcome == "ok", rec.error
    assert rec.status == 200
    assert sum(rec.chunk_tokens) == 24 == rec.output_tokens
    assert rec.prompt_tokens and rec.prompt_tokens > 5
    times = [rec.dispatched, rec.sent, rec.first_byte, *rec.chunk_times, rec.done]
    assert times == sorted(times)

    metrics = urllib.request.urlopen(vllm_server.url + "/metrics", timeout=10).read().decode()
    assert "vllm:kv_cache_usage_perc" in metrics
    info = next(line for line in metrics.splitlines() if line.startswith("vllm:cache_config_info"))
    assert 'num_gpu_blocks="512"' in info and 'block_size="32"' in info  # 16384 tokens / 32


@pytest.mark.vllm
def test_busy_port_is_a_clear_error(vllm_server, tmp_path):
    config = ClusterConfig(workers=1, base_port=vllm_server.port, state_dir=tmp_path)
    with pytest.raises(AladdinError, match=f"port.*{vllm_server.port}.*already in use"):
        LocalCluster(config).start()


def test_missing_vllm_is_a_clear_error(monkeypatch, tmp_path):
    import aladdin.cluster as cluster

    monkeypatch.setattr(cluster, "vllm_available", lambda: False)
    with pytest.raises(AladdinError, match="vLLM is not installed"):
        LocalCluster(ClusterConfig(state_dir=tmp_path)).start()


def test_kv_smaller_than_one_request_is_refused():
    with pytest.raises(AladdinError, match="--kv-tokens"):
        LocalCluster(ClusterConfig(kv_tokens=1024, max_model_len=4096))


@pytest.mark.vllm
def test_worker_dying_at_start_shows_its_log(tiny_model_dir, tmp_path):
    # A context longer than the model's positions makes vLLM refuse to start.
    config = ClusterConfig(
        workers=1, model_dir=tiny_model_dir, state_dir=tmp_path, base_port=free_port_block(1),
        max_model_len=65536, kv_tokens=65536 + 32,
    )
    with pytest.raises(AladdinError) as err:
        LocalCluster(config).start()
    message = str(err.value)
    assert "exited with code" in message and "max_model_len" in message.lower().replace("-", "_")
    assert not (tmp_path / "state.json").exists()


@pytest.mark.vllm
def test_cluster_up_stops_its_workers_on_ctrl_c(tiny_model_dir, tmp_path):
    # Started as a shell's background job is (and nohup): with SIGINT ignored, which Python keeps
    # unless told. Before the fix the command then never stopped on SIGINT.
    proc = subprocess.Popen(
        [sys.executable, "-m", "aladdin", "cluster", "up", "--model-dir", str(tiny_model_dir), "--kv-tokens", "8192",
         "--max-model-len", "2048", "--base-port", str(free_port_block(1)), "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        url = proc.stdout.readline().strip()  # printed once the worker serves
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read()
        pid = json.loads((tmp_path / "state.json").read_text())["workers"][0]["pid"]
    finally:
        proc.send_signal(signal.SIGINT)  # also when the test fails: never leave a server behind
    # stop() gives vLLM 30 s of its own shutdown before SIGKILL, and a loaded machine adds the
    # interpreters' exits
    assert proc.wait(timeout=150) == 0
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the server's whole process group is gone
    assert not (tmp_path / "state.json").exists()
