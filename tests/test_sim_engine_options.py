"""The simulator's vLLM engine options: chunk-wise KV, prefix caching, async scheduling (issue 13
item 2). Step-by-step agreement with vLLM's own scheduler is in test_sim_vs_vllm_scheduler.py;
these pin each option's effect on a plain schedule, the prefix cache's bookkeeping and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from aladdin.loadgen.datasets import RequestSpec
from aladdin.loadgen.schedule import ScheduledRequest
from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel
from aladdin.plugin.profile.io import ProfileMeta, save_profile
from aladdin.plugin.sim.prefix_cache import PrefixCache, prompt_block_keys
from aladdin.plugin.sim.simulator import ClusterSimulator, SimConfig

UNIT = PerfModel(PrefillModel(0.0, 0.0, 1.0), DecodeModel(0.0, 0.0, 1.0), KVModel(16, 16 * 256),
                 max_num_seqs=8, max_batched_tokens=64)  # every iteration takes 1 s


def request(rid: str, at: float, prompt: int, output: int, ids: tuple[int, ...] | None = None) -> ScheduledRequest:
    return ScheduledRequest(rid, at, RequestSpec("", prompt, output, None, ids, rid))


def run(schedule, perf=UNIT, **options):
    config = SimConfig(num_workers=1, policy="rr", oracle_lengths=True,
                       **{"prefix_caching": False, "async_scheduling": False, **options})
    return ClusterSimulator(perf, config).run(schedule)


def test_vllms_defaults_are_the_simulators_async_scheduling_as_on_the_profiles_hardware():
    config = SimConfig(num_workers=1)
    assert config.prefix_caching and config.async_scheduling is None
    gpu = replace(UNIT, meta={"hardware": "NVIDIA H200"})
    cpu = replace(UNIT, meta={"hardware": "CPU: AMD EPYC (2 cores)"})
    def asynchronous(perf, config):
        return ClusterSimulator(perf, config).workers[0].async_scheduling

    assert asynchronous(gpu, config) and not asynchronous(cpu, config)
    assert asynchronous(cpu, replace(config, async_scheduling=True))


# --- prefix caching ---------------------------------------------------------------------------


def shared_prompts(n: int, prefix: int, prompt: int) -> list[tuple[int, ...]]:
    return [tuple(range(prefix)) + tuple(10_000 * (k + 1) + j for j in range(prompt - prefix)) for k in range(n)]


def test_a_shared_prefix_is_computed_once():
    """r1 shares 64 tokens (4 blocks) of its 96 with r0: with caching it computes 32 tokens,
    one 64-token budget chunk instead of two, so its first token comes an iteration sooner."""
    ids = shared_prompts(2, 64, 96)
    schedule = [request("r0", 0.0, 96, 4, ids[0]), request("r1", 10.0, 96, 4, ids[1])]
    off, on = run(schedule), run(schedule, prefix_caching=True)
    assert off.ttft.tolist() == [2.0, 2.0]
    assert on.ttft.tolist() == [2.0, 1.0]


def test_without_token_ids_prompts_share_nothing():
    schedule = [request("r0", 0.0, 96, 4), request("r1", 10.0, 96, 4)]
    assert run(schedule, prefix_caching=True).ttft.tolist() == run(schedule).ttft.tolist()


def test_a_preempted_request_recomputes_only_what_was_evicted():
    """On 24 blocks, six 40+60-token requests preempt; with caching, a victim finds its own
    blocks again, so its recompute (10 ms a token here) is shorter and the work ends sooner."""
    schedule = [request(f"r{i}", 0.45 * i, 40, 60) for i in range(6)]
    perf = PerfModel(PrefillModel(0.01, 0.0, 1.0), UNIT.decode, KVModel(16, 16 * 24), max_num_seqs=8,
                     max_batched_tokens=128)
    off, on = run(schedule, perf), run(schedule, perf, prefix_caching=True)
    assert off.preemptions.sum() == on.preemptions.sum() == 3
    assert on.last_token.max() < off.last_token.max()


def test_cached_blocks_are_shared_and_evicted_least_recently_freed_first():
    bs = 4
    cache = PrefixCache(num_blocks=6)
    keys = prompt_block_keys(tuple(range(8)), 8, bs)  # two full blocks
    assert len(keys) == 2 and prompt_block_keys(tuple(range(8)) + (99,), 9, bs) == keys
    assert prompt_block_keys(None, 8, bs) == ()
    cache.computed(0, keys, 0, 8, bs, free=4)  # request 0 computed both blocks (2 of 6 in use)
    hits = cache.hits(1, keys, 9, bs, free=4)  # request 1 has the same 8 tokens and one more
    assert len(hits) == 2 and cache.touch(1, hits, keys) == 0  # shared: no block newly in use
    assert cache.release(0, 8, 8, bs, free=4, findable=False) == 0  # still held by request 1
    assert cache.release(1, 8, 8, bs, free=4, findable=False) == 2  # now free, and cached
    assert cache.hits(2, keys, 12, bs, free=6) == hits
    # taking 5 of the 6 free blocks uses the 4 empty ones, then evicts the block freed first:
    # request 1 freed its last block first, so its first block survives
    cache.settle(free=1)
    assert len(cache.hits(2, keys, 12, bs, free=1)) == 1


def test_a_preempted_requests_own_blocks_are_found_only_by_it():
    bs = 4
    cache = PrefixCache(num_blocks=8)
    assert cache.release(0, 10, 10, bs, free=5, findable=True) == 3  # 10 tokens of KV: two full blocks, one partial
    assert len(cache.hits(0, (), 11, bs, free=8)) == 2
    assert cache.hits(1, (), 11, bs, free=8) == []
    # a finished request's own blocks keep their place in the eviction order, findable by nobody
    assert cache.release(2, 10, 10, bs, free=5, findable=False) == 3
    assert cache.hits(2, (), 11, bs, free=8) == []
    cache.settle(free=3)  # 5 taken: the 4 holding nothing, then request 0's block 1 (it freed its last first)
    assert len(cache.hits(0, (), 11, bs, free=3)) == 1 and cache.lru_blocks == 3
    cache.settle(free=1)  # then its block 0 and one of request 2's
    assert cache.hits(0, (), 11, bs, free=1) == [] and cache.lru_blocks == 1


# --- async scheduling -------------------------------------------------------------------------


def test_async_scheduling_sees_an_arrival_one_step_later():
    """r1 arrives mid-iteration: synchronously it joins the next batch; with async scheduling
    that batch was decided when the iteration started, so r1 joins the one after."""
    schedule = [request("r0", 0.0, 16, 6), request("r1", 0.5, 16, 3)]
    sync, lagged = run(schedule), run(schedule, async_scheduling=True)
    assert sync.ttft.tolist() == [1.0, 1.5]
    assert lagged.ttft.tolist() == [1.0, 2.5]
    assert lagged.times_of(0).tolist() == sync.times_of(0).tolist()  # r0 streams unchanged


def test_async_scheduling_frees_a_finished_requests_seat_one_step_later():
    perf = PerfModel(UNIT.prefill, UNIT.decode, UNIT.kv, max_num_seqs=2, max_batched_tokens=64)
    schedule = [request("r0", 0.0, 16, 3), request("r1", 0.0, 16, 10), request("r2", 0.5, 16, 2)]
    sync, lagged = run(schedule, perf), run(schedule, perf, async_scheduling=True)
    assert sync.first_token.tolist() == [1.0, 1.0, 4.0]  # r0's last token at 3 s, r2 takes its seat
    assert lagged.first_token.tolist() == [1.0, 1.0, 5.0]  # the batch from 3 s was decided with r0 in it


def test_a_worker_with_nothing_to_run_decides_again_when_its_batch_returns():
    """With the only running request finishing, the batch decided early is empty; vLLM then
    schedules as soon as that request's last batch returns, as a synchronous engine would."""
    perf = PerfModel(UNIT.prefill, UNIT.decode, UNIT.kv, max_num_seqs=1, max_batched_tokens=64)
    schedule = [request("r0", 0.0, 16, 3), request("r1", 0.5, 16, 2)]
    assert run(schedule, perf, async_scheduling=True).first_token.tolist() == [1.0, 4.0]


def test_an_idle_worker_schedules_an_arrival_at_once():
    schedule = [request("r0", 0.0, 16, 2), request("r1", 5.25, 16, 2)]
    assert run(schedule, async_scheduling=True).ttft.tolist() == [1.0, 1.0]


# --- aladdin simulate -------------------------------------------------------------------------


@pytest.mark.parametrize("flags, expected", [([], (True, True)),
                                             (["--no-prefix-caching", "--no-async-scheduling"], (False, False)),
                                             (["--prefix-caching", "--no-async-scheduling"], (True, False))])
def test_simulate_flags_choose_the_engine_options(tmp_path, flags, expected):
    from aladdin.plugin.sim.cli import simulate as simulate_command

    profile = save_profile(tmp_path / "p.json", UNIT, ProfileMeta("tiny", "sim", 1, "0.26.0", "test"))
    out = tmp_path / "run"
    result = CliRunner().invoke(simulate_command, [
        "--profile", str(profile), "--dataset", "synthetic", "--prompt-tokens", "20:100", "--output-tokens", "2:20",
        "--rate", "2", "--num-requests", "30", "--workers", "2", "--output", str(out), *flags])
    assert result.exit_code == 0, result.output
    params = json.loads((out / "run.json").read_text())["params"]
    assert (params["prefix_caching"], params["async_scheduling"]) == expected
