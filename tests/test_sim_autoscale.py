"""The simulator's autoscaler (plugin/sim/autoscale.py): the planner's heartbeat rule starts
workers that take placements only after the start-up delay, drains and releases them on a
scale-down, charges their held time as GPU-hours, and decides the same for every policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aladdin.errors import AladdinError
from aladdin.loadgen.datasets import RequestSpec
from aladdin.loadgen.schedule import ScheduledRequest
from aladdin.plugin.plan.planner import HeartbeatConfig
from aladdin.plugin.profile.io import load_profile
from aladdin.plugin.sim.autoscale import DRAINING, OFF, STARTING, UP, AutoscaleConfig, Autoscaler, drain_order
from aladdin.plugin.sim.simulator import SimConfig, SimResult, simulate

ROOT = Path(__file__).resolve().parents[1]
PERF = load_profile(ROOT / "profiles/h200-llama2-7b.json")
STARTUP = 40.0
SCALING = AutoscaleConfig(2.0, HeartbeatConfig(30.0, headroom=0.0, scale_down_after=2), startup_s=STARTUP)


def step_schedule(seed: int = 1) -> list[ScheduledRequest]:
    """1 req/s, 20 req/s from 120 s to 240 s, then 1 req/s again until 360 s."""
    rng = np.random.default_rng(seed)
    times, t = [], 0.0
    while t < 360.0:
        t += rng.exponential(1.0 / (20.0 if 120.0 <= t < 240.0 else 1.0))
        times.append(t)
    return [ScheduledRequest(f"r{i}", x, RequestSpec("", int(rng.integers(50, 800)), int(rng.integers(20, 400)),
                                                     None, None, str(i)))
            for i, x in enumerate(times)]


def run(policy: str, schedule: list[ScheduledRequest] | None = None) -> SimResult:
    config = SimConfig(num_workers=12, policy=policy, ttft_slo=1.0, atgt_slo=0.05, autoscale=SCALING)
    return simulate(schedule or step_schedule(), PERF, config)


def served_between(result: SimResult, worker: int) -> tuple[float, float]:
    """(earliest arrival, latest last token) of the requests one worker served."""
    mine = result.worker == worker
    return float(result.arrival[mine].min()), float(result.last_token[mine].max())


def test_scale_up_after_a_rate_step_takes_placements_only_after_the_startup_delay():
    result = run("jsq")
    log = result.scaling
    # the heartbeat at 150 s is the first to see the step (the interval 120-150 s): 20 / 2 = 10 workers
    assert dict(log.beats)[120.0] == 1 and dict(log.beats)[150.0] == 10
    started = [c for c in log.changes if c.state == STARTING and c.time_s == 150.0]
    assert len(started) == 9
    for change in started:
        ready = next(c.time_s for c in log.changes if c.worker == change.worker and c.state == UP)
        assert ready == 150.0 + STARTUP
        first_arrival, _ = served_between(result, change.worker)
        assert first_arrival + PERF.frontend_s >= ready  # nothing placed while it started
    assert result.attainment(1.0, 0.05) > 0.9


def step_down_schedule() -> list[ScheduledRequest]:
    """20 req/s of long outputs for a minute, then 0.5 req/s: a scale-down with requests still running."""
    rng = np.random.default_rng(3)
    times, t = [], 0.0
    while t < 120.0:
        t += rng.exponential(1.0 / (20.0 if t < 60.0 else 0.5))
        times.append(t)
    return [ScheduledRequest(f"r{i}", x, RequestSpec("", 200, int(rng.integers(500, 1500)), None, None, str(i)))
            for i, x in enumerate(times)]


def test_scale_down_drains_then_releases_when_the_last_request_ends():
    config = AutoscaleConfig(2.0, HeartbeatConfig(10.0, headroom=0.0, scale_down_after=1), startup_s=5.0)
    result = simulate(step_down_schedule(), PERF, SimConfig(num_workers=12, policy="jsq", ttft_slo=1.0, atgt_slo=0.05,
                                                            autoscale=config))
    log = result.scaling
    assert dict(log.beats)[60.0] == 10 and dict(log.beats)[70.0] == 1
    drained = [c for c in log.changes if c.state == DRAINING]
    busy = 0
    for change in drained:
        off = next(c.time_s for c in log.changes
                   if c.worker == change.worker and c.state == OFF and c.time_s >= change.time_s)
        mine = result.worker == change.worker
        placed = result.arrival[mine] + PERF.frontend_s  # jsq never queues: placed as it reaches the cluster
        assert not ((placed > change.time_s) & (placed <= off)).any()  # no placement while draining
        before = mine & (result.arrival + PERF.frontend_s <= change.time_s)
        assert off == pytest.approx(max(change.time_s, float(result.last_token[before].max())))
        busy += off > change.time_s
    assert busy >= 1  # some drained worker still had requests to finish
    assert log.held_over_time()[-1][1:] == (1, 1)


def test_gpu_hours_are_the_held_time_times_gpus_per_worker():
    arrivals = list(np.linspace(0.0, 60.0, 601)[:-1])  # 10 req/s for the first minute, then nothing
    config = AutoscaleConfig(2.5, HeartbeatConfig(60.0, headroom=0.0, scale_down_after=1), startup_s=30.0)
    scaler = Autoscaler(config, max_workers=6, gpus_per_worker=2, arrivals=arrivals)
    assert scaler.next_time == 60.0
    changes = scaler.advance(60.0, {0: 0.0})  # 10 / 2.5 = 4 workers: three start
    assert [(c.worker, c.state) for c in changes] == [(1, STARTING), (2, STARTING), (3, STARTING)]
    assert scaler.next_time == 90.0
    assert [c.state for c in scaler.advance(90.0, {0: 0.0})] == [UP, UP, UP]
    changes = scaler.advance(120.0, {0: 5.0, 1: 0.0, 2: 3.0, 3: 0.0})  # no arrivals: 1 worker
    assert [(c.worker, c.state) for c in changes] == [(3, DRAINING), (1, DRAINING), (2, DRAINING)]
    assert scaler.empty(120.0, 3) and scaler.empty(120.0, 1) and scaler.empty(150.0, 2)
    assert not scaler.empty(150.0, 0)  # an up worker is never released
    log = scaler.close(200.0)
    assert log.held_s == {0: 200.0, 1: 60.0, 2: 90.0, 3: 60.0}
    assert log.gpu_hours == pytest.approx((200.0 + 60.0 + 90.0 + 60.0) * 2 / 3600.0)
    assert log.held_over_time()[-1] == (150.0, 1, 1)


def test_a_scale_down_cancels_starting_workers_first_and_a_scale_up_undrains():
    rates = [(0.0, 20.0), (30.0, 5.0), (60.0, 10.0), (90.0, 0.0)]  # 4, 1, 2 workers at 5 req/s each
    arrivals = [t + k / r for t, r in rates if r for k in range(int(30 * r))]
    config = AutoscaleConfig(5.0, HeartbeatConfig(30.0, headroom=0.0, scale_down_after=1), startup_s=100.0,
                             initial_workers=2)
    scaler = Autoscaler(config, max_workers=4, gpus_per_worker=1, arrivals=arrivals)
    assert [(c.worker, c.state) for c in scaler.advance(30.0, {0: 0.0, 1: 0.0})] == [(2, STARTING), (3, STARTING)]
    changes = scaler.advance(60.0, {0: 0.0, 1: 9.0})
    assert [(c.worker, c.state) for c in changes] == [(3, OFF), (2, OFF), (0, DRAINING)]
    assert [(c.worker, c.state) for c in scaler.advance(90.0, {0: 4.0, 1: 9.0})] == [(0, UP)]  # warm: at once
    assert scaler.close(120.0).held_s == {0: 120.0, 1: 120.0, 2: 30.0, 3: 30.0}
    assert drain_order({0: 1.0, 1: 0.0, 2: 0.0}) == [2, 1, 0]


def test_every_policy_gets_the_same_autoscaler_decisions():
    schedule = step_schedule(seed=2)
    beats = {policy: run(policy, schedule).scaling.beats for policy in ("aladdin", "jsq", "po2", "least-kv")}
    assert len({tuple(b) for b in beats.values()}) == 1


def test_bad_autoscaler_settings_are_one_line_errors():
    with pytest.raises(AladdinError, match="at least 1 worker"):
        SimConfig(num_workers=4, autoscale=AutoscaleConfig(1.0, HeartbeatConfig(min_workers=0))).validate()
    with pytest.raises(AladdinError, match="initial workers"):
        SimConfig(num_workers=4, autoscale=AutoscaleConfig(1.0, HeartbeatConfig(), initial_workers=5)).validate()
    with pytest.raises(AladdinError, match="colocated"):
        SimConfig(num_workers=4, prefill_workers=1, autoscale=AutoscaleConfig(1.0, HeartbeatConfig())).validate()
    with pytest.raises(AladdinError, match="start-up"):
        SimConfig(num_workers=4, autoscale=AutoscaleConfig(1.0, HeartbeatConfig(), startup_s=-1.0)).validate()


def test_the_core_source_scales_on_the_predicted_fill_with_the_same_hysteresis():
    config = AutoscaleConfig(1.0, HeartbeatConfig(10.0, scale_down_after=2), source="core", target_fill=0.5,
                             initial_workers=1)
    scaler = Autoscaler(config, max_workers=8, gpus_per_worker=1, arrivals=[])
    assert scaler.desired(10.0, demand=3.2) == 7  # ceil(3.2 / 0.5)
    assert scaler.desired(20.0, demand=0.4) == 7  # a lower count waits for 2 heartbeats
    assert scaler.desired(30.0, demand=0.4) == 1
    assert scaler.desired(40.0, demand=0.0) == 1  # never below min_workers


def test_the_core_source_follows_the_load_in_a_simulation():
    config = AutoscaleConfig(2.0, HeartbeatConfig(30.0, headroom=0.0, scale_down_after=2), startup_s=STARTUP,
                             source="core", target_fill=0.05)
    result = simulate(step_schedule(), PERF, SimConfig(num_workers=12, policy="jsq", ttft_slo=1.0, atgt_slo=0.05,
                                                       autoscale=config))
    wanted = dict(result.scaling.beats)
    assert wanted[180.0] > wanted[90.0] and wanted[330.0] < wanted[180.0]
