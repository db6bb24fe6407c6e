"""The simulator's engine against vLLM's real V1 scheduler, step by step (plugin/sim/differential.py).

The tests marked ``vllm`` drive vLLM's own Scheduler / AsyncScheduler in-process (no server, no
model: a stand-in model-runner output); the others need no vLLM. Where the two may differ, the
difference is pinned here and explained in docs/simulator.md.
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


# --- where the simulator must match vLLM step for step ------------------------------------

MATCHING = ["chunked_prefill_budget", "simultaneous_burst", "max_num_seqs", "prompt_longer_than_budget",
            "kv_exhaustion", "shared_prefix_caching_off", "random_kv_pressure", "random_roomy"]


@needs_vllm
@pytest.mark.parametrize("name", MATCHING)
def test_same_batches_preemptions_and_queue_every_step(results, name):
    case, vllm, sim, ties = results[name]
    assert ties == 0  # no arrival on a step boundary, where tie rules could differ
    c = d.compare(name, vllm, sim)
    assert c.vllm_steps == c.sim_steps
    assert schedule_fields_agree(c), c.first_divergence
    # KV blocks agree too once the simulator's whole-prompt reservation is taken out
    assert c.kv_agreement_chunkwise == 1.0, c.first_divergence


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


# --- the differences that remain (docs/simulator.md) ----------------------------------------


@needs_vllm
def test_difference_whole_prompt_reserved_at_admission(results):
    """The simulator reserves a prompt's blocks at admission, vLLM allocates chunk by chunk."""
    _, vllm, sim, _ = results["prompt_longer_than_budget"]
    assert (vllm[0].kv_blocks, sim[0].kv_blocks, sim[0].kv_reserved_ahead) == (4, 19, 15)  # 64 vs 300 tokens
    # under KV pressure that costs extra preemptions of requests still prefilling
    _, vllm, sim, _ = results["random_long_prompts_kv_pressure"]
    preemptions = (sum(len(s.preempted) for s in vllm), sum(len(s.preempted) for s in sim))
    assert preemptions[1] > preemptions[0]


@needs_vllm
def test_difference_prefix_caching_is_not_modelled(results):
    """With prefix caching, vLLM computes only what is not cached; the simulator the whole prompt."""
    off, on = comparison(results, "shared_prefix_caching_off"), comparison(results, "shared_prefix_caching_on")
    assert off.agreement == 1.0 and on.agreement < 1.0
    _, vllm, sim, _ = results["shared_prefix_caching_on"]
    first_chunk = {}
    for side, steps in (("vllm", vllm), ("sim", sim)):
        seen = {}
        for s in steps:
            for rid, tokens in s.scheduled:
                seen.setdefault(rid, tokens)
        first_chunk[side] = seen
    assert first_chunk["sim"]["r01"] == 96 and first_chunk["vllm"]["r01"] == 96 - 64  # 4 blocks hit
    # and a preempted request can find its own blocks still cached when it resumes
    c = comparison(results, "kv_exhaustion_prefix_caching")
    assert c.field_agreement["preempted"] == 1.0 and c.field_agreement["scheduled"] < 1.0


@needs_vllm
def test_difference_async_scheduling_decides_each_batch_a_step_early(results):
    """AsyncScheduler schedules a batch while the previous one runs: a new request is seen a step
    later, a finished one frees its slot a step later, so the same work takes more steps."""
    for name in ("async_scheduling", "async_scheduling_max_num_seqs"):
        case, vllm, sim, _ = results[name]
        sync = d.run_vllm(replace(case, async_scheduling=False))
        assert d.compare(name, sync, sim).agreement > 0.8  # the same case without async
        assert len(vllm) > len(sim)
        c = comparison(results, name)
        assert c.agreement < 0.5
    _, vllm, _, _ = results["async_scheduling"]
    assert dict(vllm[1].scheduled) == {"r00": 1}  # r01 (arrived at 0.5 s) waits for batch 2


# --- the harness itself ---------------------------------------------------------------------


@needs_vllm
def test_random_workloads_with_kv_to_spare_agree_exactly():
    pytest.importorskip("vllm")
    for seed in range(8):
        rng = random.Random(seed)
        case = d.Case(f"fuzz{seed}", tuple(d._random_requests(rng.randint(5, 25), seed, rate=rng.choice([0.3, 1.0, 3.0]),
                                                               max_prompt=300, max_output=50)),
                      num_blocks=2000, block_size=rng.choice([16, 32]), max_num_seqs=rng.randint(1, 8),
                      max_batched_tokens=rng.choice([32, 64, 256]))
        c = d.run_case(case)
        assert schedule_fields_agree(c) and c.kv_agreement_chunkwise == 1.0, (seed, c.first_divergence)


def test_the_stepped_simulator_times_every_token_as_the_fast_path_does():
    """The harness cuts decode runs to one iteration; token times must not change."""
    perf = PerfModel(PrefillModel(5e-5, 1e-9, 0.015), DecodeModel(1.5e-4, 3.4e-7, 0.012), KVModel(16, 16 * 40),
                     max_num_seqs=6, max_batched_tokens=96)
    for case in (d.case_named("random_kv_pressure"), d.case_named("random_long_prompts_kv_pressure")):
        schedule = [replace(r, offset=r.offset * 0.01) for r in d.schedule_of(case)]  # steps are ~10 ms here
        fast = ClusterSimulator(perf, SimConfig(num_workers=1, policy="rr", oracle_lengths=True)).run(schedule)
        stepped = d.SteppedSimulator(perf)
        result = stepped.run(schedule)
        assert result.preemptions.sum() > 0
        np.testing.assert_array_equal(result.token_offsets, fast.token_offsets)
        np.testing.assert_allclose(result.token_times, fast.token_times, rtol=1e-12)
        assert len(stepped.steps) == fast.iterations


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
