"""The in-engine plugin on a real vLLM CPU server started with the documented flags, against a
stock server with the same small KV cache (64 usable blocks of 32 tokens: one 2048-token
request, the model's length) on the same requests."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request

import pytest

from aladdin.cluster import ClusterConfig, LocalCluster, free_port_block
from aladdin.plugin.router.workers import metric_sum, parse_metrics
from aladdin.plugin.vllm.launch import PLUGIN_ENVIRONMENT, plugin_flags

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PLUGIN_FLAGS = tuple(plugin_flags())


def start(tmp_path_factory, model_dir, extra_args: tuple[str, ...]):
    config = ClusterConfig(workers=1, kv_tokens=2080, max_model_len=2048, base_port=free_port_block(1),
                           model_dir=model_dir, state_dir=tmp_path_factory.mktemp("cluster"), extra_args=extra_args,
                           env=PLUGIN_ENVIRONMENT)  # inert without --scheduler-cls: the stock servers too
    return LocalCluster(config).__enter__()


@pytest.fixture(scope="module")
def plugin_server(tiny_model_dir, tmp_path_factory):
    cluster = start(tmp_path_factory, tiny_model_dir, PLUGIN_FLAGS)
    yield cluster.workers[0]
    cluster.__exit__(None, None, None)


@pytest.fixture(scope="module")
def small_stock_server(tiny_model_dir, tmp_path_factory):
    cluster = start(tmp_path_factory, tiny_model_dir, ())
    yield cluster.workers[0]
    cluster.__exit__(None, None, None)


def complete(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/v1/completions", data=json.dumps({"model": "tiny", **body}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def metric(url: str, name: str) -> float:
    samples = parse_metrics(urllib.request.urlopen(url + "/metrics", timeout=30).read().decode())
    return metric_sum(samples, name) or 0.0


def overload(url: str, watch=None) -> list[tuple[int, dict]]:
    """Ten requests at once that each grow from ~360 to ~760 tokens: 7600 tokens in a 2048-token cache.
    `watch(busy)` runs while they are served; `busy()` is true until the last one has ended."""
    prompt = " ".join(["hello"] * 180)
    results: list = [None] * 10

    def send(i: int) -> None:
        results[i] = complete(url, {"prompt": prompt, "max_tokens": 400, "ignore_eos": True, "temperature": 0})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(results))]
    for thread in threads:
        thread.start()
    if watch is not None:
        watch(lambda: any(thread.is_alive() for thread in threads))
    for thread in threads:
        thread.join()
    return results


def test_the_class_loads_and_its_state_answers(plugin_server):
    log = open(plugin_server.log_path, encoding="utf-8").read()
    assert re.search(r"aladdin: AladdinScheduler \S+ active on vLLM 0\.32", log)
    state = get_json(plugin_server.url + "/aladdin/state")
    assert state["capacity_tokens"] == 64 * 32 and state["policy"] == "aladdin-kv"
    assert state["running"] == state["waiting"] == state["held"] == []


def test_under_overload_the_plugin_never_preempts_and_stock_vllm_does(plugin_server, small_stock_server):
    seen = []

    def watch(busy) -> None:  # the state endpoint agrees with vLLM's own gauges while it is loaded
        while busy() and len(seen) < 5:  # no deadline: a slow machine takes longer to show the queue
            state = get_json(plugin_server.url + "/aladdin/state")
            running = metric(plugin_server.url, "vllm:num_requests_running")
            waiting = metric(plugin_server.url, "vllm:num_requests_waiting")
            held = metric(plugin_server.url, "aladdin:admission_held")
            if state["held"] and waiting:  # vLLM's gauges move on engine steps: compare once they show the queue
                seen.append((len(state["running"]), running, len(state["waiting"]) + len(state["held"]), waiting,
                             len(state["held"]), held))

    plugin = overload(plugin_server.url, watch)
    stock = overload(small_stock_server.url)
    assert all(status == 200 and body["usage"]["completion_tokens"] == 400 for status, body in plugin + stock)
    assert metric(plugin_server.url, "vllm:num_preemptions_total") == 0
    assert metric(small_stock_server.url, "vllm:num_preemptions_total") > 0
    assert seen, "the plugin never held a request back"
    assert all(abs(a - b) <= 1 and abs(c - d) <= 1 and abs(e - f) <= 1 for a, b, c, d, e, f in seen), seen


def test_the_aladdin_gauges_on_metrics_are_fresh_and_agree_with_the_state(plugin_server):
    text = urllib.request.urlopen(plugin_server.url + "/metrics", timeout=30).read().decode()
    state = get_json(plugin_server.url + "/aladdin/state")
    for name in ("aladdin:kv_reserved_tokens", "aladdin:kv_headroom_tokens", "aladdin:admission_held",
                 "aladdin:rejected_total", "aladdin:handed_back_total", "aladdin:predicted_atgt_seconds"):
        assert re.search(rf"^{re.escape(name)} ", text, re.M), name
    assert metric(plugin_server.url, "aladdin:state_age_seconds") < 0.1
    assert metric(plugin_server.url, "aladdin:kv_capacity_tokens") == state["capacity_tokens"]
    assert metric(plugin_server.url, "aladdin:kv_held_tokens") == state["kv_held_tokens"] == 0  # idle
    assert metric(plugin_server.url, "aladdin:kv_headroom_tokens") == state["kv_headroom_tokens"]


def test_a_held_request_whose_ttft_is_lost_is_handed_back_with_a_503_a_router_can_act_on(plugin_server):
    """Two requests of ~760 tokens fill the cache; the others, with a 1 s TTFT SLO, wait longer
    than that and are handed back before their first token (streamed or not)."""
    prompt = " ".join(["hello"] * 180)
    before = metric(plugin_server.url, "aladdin:handed_back_total")
    results: list = [None] * 6

    def send(i: int) -> None:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 400, "ignore_eos": True, "stream": i % 2 == 1,
                "vllm_xargs": {"aladdin_ttft_slo": 1.0}}
        request = urllib.request.Request(plugin_server.url + "/v1/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                results[i] = (response.status, response.headers, response.read())
        except urllib.error.HTTPError as exc:
            results[i] = (exc.code, exc.headers, exc.read())

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    served = [r for r in results if r[0] == 200]
    handed_back = [r for r in results if r[0] == 503]
    assert len(served) + len(handed_back) == len(results), [r[:2] for r in results]
    assert len(served) == 2, [r[:2] for r in results]  # two fill the cache, so a streamed one is handed back too
    for _, headers, body in handed_back:
        assert headers.get("X-Aladdin-Outcome") == "handed-back" and headers.get("Retry-After"), body
        assert "TTFT can no longer be met" in json.loads(body)["error"]["message"]
    for _, headers, body in served:  # served whole, streamed or not
        if headers.get("Content-Type", "").startswith("text/event-stream"):
            assert body.rstrip().endswith(b"data: [DONE]") and b'"error"' not in body
        else:
            assert json.loads(body)["usage"]["completion_tokens"] == 400
    assert metric(plugin_server.url, "aladdin:handed_back_total") - before == len(handed_back)
    assert metric(plugin_server.url, "vllm:num_preemptions_total") == 0


def test_a_request_beyond_the_model_length_is_refused_at_once_and_one_at_it_is_served(plugin_server):
    """vLLM keeps one request of the model's length within its cache, so the front end's own
    length check (400) is what refuses what could never fit; one at that length is admitted."""
    started = time.monotonic()
    status, body = complete(plugin_server.url, {"prompt": " ".join(["hello"] * 2100), "max_tokens": 10})
    assert status == 400 and time.monotonic() - started < 10
    status, body = complete(plugin_server.url, {"prompt": " ".join(["hello"] * 500), "max_tokens": 1000,
                                                "ignore_eos": True})  # ~1000 prompt tokens: about 2000 in all
    assert status == 200 and body["usage"]["completion_tokens"] == 1000


def test_bad_vllm_xargs_get_a_400_and_the_server_keeps_serving(plugin_server):
    status, body = complete(plugin_server.url, {"prompt": "hi", "max_tokens": 4,
                                                "vllm_xargs": {"aladdin_output_tokens": "lots"}})
    assert status == 400 and "vllm_xargs.aladdin_output_tokens" in body["error"]["message"]
    status, body = complete(plugin_server.url, {"prompt": "hi", "max_tokens": 4, "ignore_eos": True,
                                                "vllm_xargs": {"aladdin_output_tokens": 4, "aladdin_atgt_slo": 0.5}})
    assert status == 200 and body["usage"]["completion_tokens"] == 4
