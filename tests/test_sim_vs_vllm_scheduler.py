"""The simulator's engine against vLLM's real V1 scheduler, step by step (plugin/sim/differential.py).

The tests marked ``vllm`` drive vLLM's own Scheduler / AsyncScheduler in-process (no server, no
model: a stand-in model-runner output); the others need no vLLM. Every case agrees on every
step; what used to differ is pinned here (docs/simulator.md).
"""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest

from aladdin.loadgen.datasets import RequestSpec
from aladdin.loadgen.schedule import ScheduledRequest
from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel
from aladdin.plugin.sim import differential as d
from aladdin.plugin.sim.simulator import ClusterSimulator, SimConfig

needs_vllm = pytest.mark.vllm


@pytest.fixture(scope="module")
def results():
    """Every default case, run once on both sides."""
    pytest.importorskip("vllm")
    out = {}
    for case in d.default_cases():
        vllm, ties = d.drive_vllm(case)
        out[case.name] = (case, vllm, d.run_sim(case), ties)
    return out


def comparison(results, name: str) -> d.Comparison:
    case, vllm, sim, _ = results[name]
    return d.compare(name, vllm, sim)


def schedule_fields_agree(c: d.Comparison) -> bool:
    return all(c.field_agreement[f] == 1.0 for f in ("scheduled", "preempted", "waiting"))


# --- where the simulator must match vLLM step for step: every case ----------------------------


@needs_vllm
@pytest.mark.parametrize("name", [c.name for c in d.default_cases()])
def test_same_batches_preemptions_kv_and_queue_every_step(results, name):
    case, vllm, sim, ties = results[name]
    assert ties == 0  # no arrival on a step boundary, where tie rules could differ
    c = d.compare(name, vllm, sim)
    assert c.vllm_steps == c.sim_steps
    assert c.agreement == 1.0, c.first_divergence


@needs_vllm
def test_kv_exhaustion_preempts_the_same_victims_on_both_sides(results):
    _, vllm, sim, _ = results["kv_exhaustion"]
    victims = [v for step in vllm for v in step.preempted]
    assert victims and victims == [v for step in sim for v in step.preempted]
    assert max(step.kv_blocks for step in vllm) == 24  # the whole cache


@needs_vllm
def test_max_num_seqs_caps_the_running_set_on_both_sides(results):
    case, vllm, sim, _ = results["max_num_seqs"]
    assert max(len(s.scheduled) for s in vllm) == case.max_num_seqs
    assert any(s.waiting for s in vllm)


@needs_vllm
def test_a_prompt_longer_than_the_budget_is_chunked_the_same_way(results):
    case, vllm, sim, _ = results["prompt_longer_than_budget"]
    chunks = [dict(s.scheduled).get("r00", 0) for s in vllm[:5]]
    assert chunks == [64, 64, 64, 64, 44]  # 300 tokens through a 64-token budget
    assert [dict(s.scheduled).get("r00", 0) for s in sim[:5]] == chunks


# --- what used to differ (docs/simulator.md) ---------------------------------------------------


@needs_vllm
def test_kv_is_allocated_chunk_by_chunk(results):
    """Found by the harness: the simulator took a whole prompt's blocks at admission (19 for the
    first 64-token chunk of a 300-token prompt), and under KV pressure preempted more (6 vs 4)."""
    _, vllm, sim, _ = results["prompt_longer_than_budget"]
    assert vllm[0].kv_blocks == sim[0].kv_blocks == 4  # 64 of 300 tokens in 16-token blocks
    _, vllm, sim, _ = results["random_long_prompts_kv_pressure"]
    assert sum(len(s.preempted) for s in vllm) == sum(len(s.preempted) for s in sim) == 4


def first_chunks(steps: list[d.Step]) -> dict[str, int]:
    seen: dict[str, int] = {}
    for s in steps:
        for rid, tokens in s.scheduled:
            seen.setdefault(rid, tokens)
    return seen


@needs_vllm
def test_prefix_caching_computes_only_the_uncached_part(results):
    """With prefix caching on both sides, a prompt that shares 64 tokens (4 blocks) with an
    earlier one computes only the rest; off, all of it."""
    for name, r01 in (("shared_prefix_caching_on", 96 - 64), ("shared_prefix_caching_off", 96)):
        _, vllm, sim, _ = results[name]
        assert first_chunks(vllm)["r01"] == first_chunks(sim)["r01"] == r01
    # a preempted request finds its own blocks still cached: vLLM recomputes 47 of its 95 tokens
    _, vllm, sim, _ = results["kv_exhaustion_prefix_caching"]
    victims = {v for s in sim for v in s.preempted}
    recomputed = [(k, rid) for k, s in enumerate(sim) for rid, tokens in s.scheduled if rid in victims and tokens == 47]
    assert recomputed and all(dict(vllm[k].scheduled)[rid] == 47 for k, rid in recomputed)


@needs_vllm
def test_async_scheduling_decides_each_batch_a_step_early(results):
    """AsyncScheduler schedules a batch while the previous one runs: a new request is seen a step
    later, a finished one frees its seat a step later, so the same work takes more steps."""
    for name, steps in (("async_scheduling", 18), ("async_scheduling_max_num_seqs", 27)):
        _, vllm, sim, _ = results[name]
        assert len(vllm) == len(sim) == steps
    _, vllm, sim, _ = results["async_scheduling"]
    assert dict(vllm[1].scheduled) == dict(sim[1].scheduled) == {"r00": 1}  # r01 (arrived at 0.5 s) waits for batch 2


@needs_vllm
def test_victims_of_an_empty_vllm_batch_count_with_the_next_step():
    """Found by the harness: vLLM may preempt in a schedule() that then runs nothing (here a
    request that had all its tokens, with async scheduling); the harness used to drop those victims."""
    specs = [(0.339256, 113, 30, 48), (1.091573, 283, 41, 32), (1.665104, 116, 36, 0), (2.294597, 101, 31, 100),
             (3.271116, 24, 8, 24), (3.444494, 70, 8, 70), (3.591898, 180, 37, 32), (4.648539, 119, 15, 100),
             (5.156059, 244, 45, 0), (5.321999, 11, 17, 11)]  # (arrival, prompt, output, shared prefix)
    case = d.Case("empty_batch_victim", tuple(d.Req(f"r{i:02d}", *spec) for i, spec in enumerate(specs)),
                  num_blocks=30, max_num_seqs=3, max_batched_tokens=32, prefix_caching=True, async_scheduling=True)
    vllm, sim = d.run_vllm(case), d.run_sim(case)
    assert sum(len(s.preempted) for s in vllm) == sum(len(s.preempted) for s in sim) == 2
    assert d.compare(case.name, vllm, sim).agreement == 1.0


# --- the harness itself ---------------------------------------------------------------------


@needs_vllm
@pytest.mark.parametrize("prefix_caching", [False, True])
@pytest.mark.parametrize("async_scheduling", [False, True])
def test_random_workloads_agree_exactly(prefix_caching, async_scheduling):
    """Random workloads, with KV to spare and under KV pressure, shared prefixes when caching."""
    pytest.importorskip("vllm")
    prefixes = (0, 16, 32, 48, 64, 100) if prefix_caching else ()
    for seed in range(6):
        rng = random.Random(seed)
        case = d.Case(f"fuzz{seed}", tuple(d._random_requests(rng.randint(5, 25), seed, rate=rng.choice([0.3, 1.0, 3.0]),
                                                               max_prompt=300, max_output=50, shared_prefixes=prefixes)),
                      num_blocks=rng.choice([30, 2000]), block_size=rng.choice([16, 32]), max_num_seqs=rng.randint(1, 8),
                      max_batched_tokens=rng.choice([32, 64, 256]), prefix_caching=prefix_caching,
                      async_scheduling=async_scheduling)
        c = d.run_case(case)
        assert c.agreement == 1.0, (seed, c.first_divergence)


@pytest.mark.parametrize("prefix_caching", [False, True])
@pytest.mark.parametrize("async_scheduling", [False, True])
def test_the_stepped_simulator_times_every_token_as_the_fast_path_does(prefix_caching, async_scheduling):
    """The harness cuts decode runs to one iteration; token times must not change, with every option."""
    perf = PerfModel(PrefillModel(5e-5, 1e-9, 0.015), DecodeModel(1.5e-4, 3.4e-7, 0.012), KVModel(16, 16 * 40),
                     max_num_seqs=6, max_batched_tokens=96)
    for case in (d.case_named("random_kv_pressure"), d.case_named("random_long_prompts_kv_pressure"),
                 d.case_named("random_shared_prefixes_gpu_defaults")):
        schedule = [replace(r, offset=r.offset * 0.01) for r in d.schedule_of(case)]  # steps are ~10 ms here
        config = SimConfig(num_workers=1, policy="rr", oracle_lengths=True, prefix_caching=prefix_caching,
                           async_scheduling=async_scheduling)
        fast = ClusterSimulator(perf, config).run(schedule)
        stepped = d.SteppedSimulator(perf, prefix_caching=prefix_caching, async_scheduling=async_scheduling)
        result = stepped.run(schedule)
        assert result.preemptions.sum() > 0
        np.testing.assert_array_equal(result.token_offsets, fast.token_offsets)
        np.testing.assert_allclose(result.token_times, fast.token_times, rtol=1e-12)
        assert len(stepped.steps) == fast.iterations < sum(r.spec.output_tokens for r in schedule)  # runs were jumped


def test_simultaneous_arrivals_share_an_idle_workers_first_iteration():
    """Found by the harness: four requests arriving at one instant on an idle worker all start in
    its first iteration, as vLLM admits them (the simulator used to start the first alone)."""
    perf = PerfModel(PrefillModel(0.0, 0.0, 1.0), DecodeModel(0.0, 0.0, 1.0), KVModel(16, 16 * 256),
                     max_num_seqs=8, max_batched_tokens=64)
    schedule = [ScheduledRequest(f"r{i}", 0.0, RequestSpec("x", 24, 5, None, None, f"s{i}")) for i in range(4)]
    sim = d.SteppedSimulator(perf)
    result = sim.run(schedule)
    assert dict(sim.steps[0].scheduled) == {"r0": 24, "r1": 24, "r2": 16}  # the 64-token budget
    assert result.ttft.tolist() == [1.0, 1.0, 2.0, 2.0]


def test_cases_are_well_formed():
    names = [c.name for c in d.default_cases()]
    assert len(names) == len(set(names))
    for case in d.default_cases():
        assert d.unit_times(case)
        assert len({r.id for r in case.requests}) == len(case.requests)
        assert all(r.shared_prefix <= r.prompt for r in case.requests)


def test_a_burst_on_idle_workers_still_spreads_by_kv_held():
    """While a burst is placed, an idle worker reports the KV its first iteration will take, so
    least-kv sends the burst's requests to different workers as it did before the fix."""
    perf = PerfModel(PrefillModel(0.0, 0.0, 1.0), DecodeModel(0.0, 0.0, 1.0), KVModel(16, 16 * 256),
                     max_num_seqs=8, max_batched_tokens=256)
    schedule = [ScheduledRequest(f"r{i}", 0.0, RequestSpec("x", 40, 3, None, None, f"s{i}")) for i in range(4)]
    result = ClusterSimulator(perf, SimConfig(num_workers=4, policy="least-kv", oracle_lengths=True)).run(schedule)
    assert sorted(result.worker.tolist()) == [0, 1, 2, 3]
    assert result.ttft.tolist() == [1.0] * 4
