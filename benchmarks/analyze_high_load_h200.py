"""Why the simulator is faster than the real H200 worker at 32-64 req/s (issue 13), from the recorded runs.

Reads the real runs of ``benchmarks/results/sim_vs_real_h200.json`` (every token's client
arrival time), simulates each one's schedule with the profile (the simulator in-process on the
run's schedule.jsonl, with bench_sim_vs_real.py's settings) and compares, per load:

1. decode step time vs batch: in 100 ms windows, the step time the tokens imply (window / the
   median tokens a request decoding the whole window got) against the profile's decode model
   plus the prefill work of the requests whose first token falls in the window, for the real
   run and for the simulated one (whose step times are the model by construction); and step by
   step: the client receives one step's chunks as a burst (gaps < 0.5 ms), so the interval
   between the starts of two bursts with no first token in them is one pure decode step, against
   the decode model at that burst's batch and context;
2. the front end: the spacing of chunks inside one step's delivery burst (the API server's
   per-streamed-chunk cost), streamed chunks/s, multi-token chunks (vLLM merges a stream's
   tokens when its coroutine fell behind), send -> response headers (the HTTP + tokenization
   intake), and real minus simulated TTFT against the chunks/s streamed when a request arrives;
3. two candidate models, constants fitted on the 8/16/32 req/s runs, the 64 req/s run held out:
   an engine cost per admitted request (fitted on the windows of 1: real minus simulated
   excess per join), simulated by running the simulator with it; and a front-end queue on top of
   the simulated timeline: one FIFO server (the API server's event loop) that spends ``s_req``
   on each arriving request and ``s_chunk`` on each streamed chunk (tokens of a stream still
   queued merge into one chunk); ``s_chunk`` is the measured burst spacing, ``s_req`` is fitted
   to the send -> headers excess. Each prints the TTFT/ATGT percentiles it gives;
4. the admission cost the profiler measured directly (the profile's ``admission``, already in
   every simulation above), beside the per-join excess fitted in section 3 beyond it.

    .venv/bin/python benchmarks/analyze_high_load_h200.py
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESULTS = Path("benchmarks/results")
LOADS = (8, 16, 32, 64)
FIT_LOADS = (8, 16, 32)
WINDOW_S = 0.1
BURST_GAP_S = 0.5e-3  # consecutive chunk receptions closer than this belong to one step's delivery
BATCH_BINS = (1, 16, 32, 64, 96, 160, 257)


@dataclass
class Run:
    """One run's requests, in id order: send time, prompt tokens, per-token receive times."""

    ids: list[str]
    sent: np.ndarray
    headers: np.ndarray
    prompt: np.ndarray
    tokens: list[np.ndarray]
    chunk_times: list[np.ndarray]
    chunk_tokens: list[np.ndarray]

    @property
    def first(self) -> np.ndarray:
        return np.array([t[0] for t in self.tokens])

    @property
    def last(self) -> np.ndarray:
        return np.array([t[-1] for t in self.tokens])

    @property
    def ttft(self) -> np.ndarray:
        return self.first - self.sent


def load_run(path: Path, order: list[str] | None = None) -> Run:
    recs = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        recs[rec["id"]] = rec
    ids = order or sorted(recs)
    rs = [recs[i] for i in ids]
    return Run(ids, np.array([r["sent"] for r in rs]), np.array([r["first_byte"] for r in rs]),
               np.array([r["prompt_tokens"] for r in rs], dtype=float),
               [np.repeat(r["chunk_times"], r["chunk_tokens"]) for r in rs],
               [np.asarray(r["chunk_times"]) for r in rs], [np.asarray(r["chunk_tokens"]) for r in rs])


def atgt(tokens: list[np.ndarray]) -> np.ndarray:
    return np.array([(t[-1] - t[0]) / (len(t) - 1) for t in tokens if len(t) > 1])


def pcts(values: np.ndarray) -> dict:
    return {"p50_ms": float(np.percentile(values, 50) * 1e3), "p99_ms": float(np.percentile(values, 99) * 1e3)}


def simulate(real_dir: Path, perf, join_cost_s: float = 0.0) -> Run:
    """The simulator on the real run's own schedule (schedule.jsonl): one worker, jsq, prefix
    caching off, async scheduling on, as the H200 server ran (bench_sim_vs_real.py's settings).

    ``join_cost_s`` > 0 is the candidate model of section 3: every admitted request costs that
    much more engine time than the profile's admission cost says (``PerfModel.admit_s``, which
    takes it out of the front-end time, so a lone prompt's TTFT is unchanged).
    """
    from dataclasses import replace

    from aladdin.loadgen.schedule import load_schedule
    from aladdin.plugin.core.policies import parse_policy
    from aladdin.plugin.sim.simulator import ClusterSimulator, SimConfig

    perf = replace(perf, admit_s=perf.admit_s + join_cost_s)
    schedule = load_schedule(real_dir / "schedule.jsonl")
    spec = parse_policy("jsq", None, 0)
    config = SimConfig(num_workers=1, policy=spec.name, prefix_caching=False, async_scheduling=True)
    result = ClusterSimulator(perf, config, spec).run(schedule)
    tokens = [result.times_of(i) for i in range(len(result.ids))]
    order = np.argsort(result.ids)
    return Run([result.ids[i] for i in order], result.arrival[order], result.arrival[order],
               result.prompt_tokens[order].astype(float), [tokens[i] for i in order],
               [tokens[i] for i in order], [np.ones(tokens[i].size, int) for i in order])


# ---------------------------------------------------------------------------------------
# 1. decode step time vs batch


def step_windows(run: Run, profile: dict) -> np.ndarray:
    """Rows (batch, context, implied step s, decode model s, prefill work per step s, joins per step)."""
    dec, pre = profile["decode"], profile["prefill"]
    first, last = run.first, run.last
    rows = []
    for a in np.arange(0.0, last.max(), WINDOW_S):
        b = a + WINDOW_S
        live = np.flatnonzero((first < b) & (last > a))
        counts = np.array([np.searchsorted(run.tokens[k][1:], b, "right") - np.searchsorted(run.tokens[k][1:], a, "right")
                           for k in live])
        whole = (first[live] <= a) & (last[live] >= b)
        if not whole.any() or np.median(counts[whole]) < 3:
            continue
        steps = float(np.median(counts[whole]))
        batch = int((counts > 0).sum())
        context = float(sum(run.prompt[k] + np.searchsorted(run.tokens[k], a + WINDOW_S / 2, "right")
                            for k in live[counts > 0]))
        joins = np.flatnonzero((first >= a) & (first < b))
        work = float(np.sum(pre["a"] * run.prompt[joins] + pre["q"] * run.prompt[joins] ** 2))
        rows.append((batch, context, WINDOW_S / steps, dec["a"] * batch + dec["b"] * context + dec["c"],
                     work / steps, len(joins) / steps))
    return np.array(rows)


def step_table(windows: dict[str, np.ndarray]) -> list[dict]:
    out = []
    for lo, hi in zip(BATCH_BINS[:-1], BATCH_BINS[1:]):
        row = {"batch": f"{lo}-{hi - 1}"}
        for side, w in windows.items():
            m = (w[:, 0] >= lo) & (w[:, 0] < hi)
            if m.sum() < 3:
                continue
            step = WINDOW_S * m.sum() / np.sum(WINDOW_S / w[m, 2])  # total time / total steps
            row[side] = {"windows": int(m.sum()), "step_ms": step * 1e3, "decode_model_ms": w[m, 3].mean() * 1e3,
                         "model_with_prefill_ms": (w[m, 3] + w[m, 4]).mean() * 1e3,
                         "step_over_model_pct": 100 * (step / (w[m, 3] + w[m, 4]).mean() - 1),
                         "joins_per_step": float(w[m, 5].mean())}
        if len(row) > 1:
            out.append(row)
    return out


def pure_decode_steps(run: Run, profile: dict) -> list[dict]:
    """Burst-to-burst intervals of pure decode steps against the decode model, per batch bin.

    Only bursts with no first token, after a burst with no first token, are kept (a step with a
    prefill, and the one after it under async scheduling, are not pure decode), and intervals
    over 50 ms (idle gaps) are dropped.
    """
    dec = profile["decode"]
    events = sorted((t, k, i) for i, times in enumerate(run.chunk_times) for k, t in enumerate(times))
    times = np.array([e[0] for e in events])
    starts = np.r_[0, np.flatnonzero(np.diff(times) > BURST_GAP_S) + 1]
    ends = np.r_[starts[1:], len(times)]
    counts = np.array([np.searchsorted(run.tokens[e[2]], e[0], "right") for e in events])
    rows = []
    for s, e in zip(starts, ends):
        members = range(s, e)
        rows.append((times[s], e - s, any(events[j][1] == 0 for j in members),
                     sum(run.prompt[events[j][2]] + counts[j] for j in members)))
    out = []
    interval = np.diff([r[0] for r in rows])
    batch = np.array([r[1] for r in rows[1:]])
    pure = np.array([not (a[2] or b[2]) for a, b in zip(rows[:-1], rows[1:])]) & (interval < 0.05)
    model = dec["a"] * batch + dec["b"] * np.array([r[3] for r in rows[1:]]) + dec["c"]
    for lo, hi in zip(BATCH_BINS[:-1], BATCH_BINS[1:]):
        m = pure & (batch >= lo) & (batch < hi)
        if m.sum() >= 10:
            out.append({"batch": f"{lo}-{hi - 1}", "steps": int(m.sum()), "interval_p50_ms": float(np.median(interval[m]) * 1e3),
                        "model_p50_ms": float(np.median(model[m]) * 1e3),
                        "excess_p50_ms": float(np.median(interval[m] - model[m]) * 1e3)})
    return out


def profile_points(profile: dict) -> dict:
    """The profiler's own decode measurements per batch size, against its fitted model."""
    s, d = profile["samples"]["decode"], profile["decode"]
    batch, ctx, t = (np.asarray(s[k], dtype=float) for k in ("batch_size", "total_context", "time"))
    model = d["a"] * batch + d["b"] * ctx + d["c"]
    return {str(int(b)): {"samples": int((batch == b).sum()), "median_ms": float(np.median(t[batch == b]) * 1e3),
                          "model_error_pct": float(np.median(100 * (model[batch == b] / t[batch == b] - 1)))}
            for b in np.unique(batch)}


# ---------------------------------------------------------------------------------------
# 2. the front end


def front_end_stats(run: Run) -> dict:
    times = np.sort(np.concatenate(run.chunk_times))
    gaps = np.diff(times)
    inside = gaps[gaps < BURST_GAP_S]
    per_window = np.histogram(times, bins=np.arange(0.0, times[-1] + WINDOW_S, WINDOW_S))[0] / WINDOW_S
    chunks = len(times)
    tokens = int(sum(t.size for t in run.tokens))
    return {"chunk_spacing_in_burst_us": float(np.median(inside) * 1e6), "chunks": chunks, "tokens": tokens,
            "multi_token_chunks_pct": 100 * float(sum((c > 1).sum() for c in run.chunk_tokens)) / chunks,
            "chunks_per_s_p50": float(np.median(per_window[per_window > 0])),
            "chunks_per_s_p99": float(np.percentile(per_window, 99)),
            "send_to_headers_ms": {k: float(np.percentile(run.headers - run.sent, q) * 1e3)
                                   for k, q in (("p50", 50), ("p90", 90), ("p99", 99))},
            "headers_to_first_token_ms": {k: float(np.percentile(run.first - run.headers, q) * 1e3)
                                          for k, q in (("p50", 50), ("p90", 90), ("p99", 99))}}


def ttft_vs_stream(real: Run, sim: Run) -> list[dict]:
    """Real minus simulated TTFT per request, binned by the chunks/s streamed in the 100 ms before it."""
    times = np.sort(np.concatenate(real.chunk_times))
    rate = (np.searchsorted(times, real.sent) - np.searchsorted(times, real.sent - WINDOW_S)) / WINDOW_S
    delta = real.ttft - sim.ttft
    intake = real.headers - real.sent
    running = np.array([((real.first <= t) & (real.last > t)).sum() for t in real.sent])
    out = []
    for lo, hi in ((0, 2000), (2000, 4000), (4000, 6000), (6000, 8000), (8000, 1e9)):
        m = (rate >= lo) & (rate < hi)
        if m.sum() >= 5:
            out.append({"chunks_per_s": f"{lo:g}-{hi:g}" if hi < 1e9 else f">={lo:g}", "requests": int(m.sum()),
                        "running_p50": float(np.median(running[m])),
                        "real_ttft_p50_ms": float(np.median(real.ttft[m]) * 1e3),
                        "sim_ttft_p50_ms": float(np.median(sim.ttft[m]) * 1e3),
                        "delta_p50_ms": float(np.median(delta[m]) * 1e3),
                        "send_to_headers_p50_ms": float(np.median(intake[m]) * 1e3)})
    return out


# ---------------------------------------------------------------------------------------
# 3. the front-end queue on top of the simulated timeline


def front_end_queue(sim: Run, s_req: float, s_chunk: float) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(intake wait, extra TTFT per request, delivered token times) when one FIFO server sits
    between the client and the simulated engine.

    Jobs: each request's intake at its send time (cost ``s_req``; its wait beyond the cost
    delays the request's whole timeline, the cost itself is already in the profile's front-end
    time) and each simulated token at its engine time (cost ``s_chunk``; a token whose stream
    still has a chunk waiting to be served joins that chunk for free). First order: the queue
    sees the simulated engine's times, unshifted by the intake waits (no feedback on the engine).
    """
    n = len(sim.ids)
    kinds, owners, times = [np.zeros(n, int)], [np.arange(n)], [sim.sent]
    for i, t in enumerate(sim.tokens):
        kinds.append(np.ones(t.size, int))
        owners.append(np.full(t.size, i))
        times.append(t)
    kind, owner, at = (np.concatenate(x) for x in (kinds, owners, times))
    order = np.lexsort((kind, at))
    wait_in = np.zeros(n)
    delivered = [np.empty(t.size) for t in sim.tokens]
    position = np.zeros(n, int)
    pending_start = np.full(n, -np.inf)  # start of the stream's queued chunk (inf: none)
    pending_end = np.zeros(n)
    free = 0.0
    for j in order:
        i, t = owner[j], at[j]
        if kind[j] == 0:
            start = max(free, t)
            wait_in[i] = start - t
            free = start + s_req
            continue
        if pending_start[i] > t:  # its stream's previous chunk is still queued: merge
            end = pending_end[i]
        else:
            start = max(free, t)
            end = free = start + s_chunk
            pending_start[i], pending_end[i] = start, end
        delivered[i][position[i]] = end
        position[i] += 1
    extra = wait_in + np.array([d[0] - t[0] for d, t in zip(delivered, sim.tokens)])
    return wait_in, extra, [d + w for d, w in zip(delivered, wait_in)]


def corrected(sim: Run, s_req: float, s_chunk: float) -> dict:
    wait, extra, delivered = front_end_queue(sim, s_req, s_chunk)
    return {"ttft": pcts(sim.ttft + extra), "atgt": pcts(atgt(delivered)), "intake_wait": pcts(wait)}


INTAKE_QUANTILES = (50, 90, 99)


def intake_excess(real: dict[int, Run]) -> dict[int, np.ndarray]:
    """Send -> response headers beyond its median at the lowest load: the intake's queueing."""
    base = np.median(real[LOADS[0]].headers - real[LOADS[0]].sent)
    return {load: run.headers - run.sent - base for load, run in real.items()}


def fit_s_req(real: dict[int, Run], sim: dict[int, Run], s_chunk: float) -> tuple[float, list]:
    """The intake cost whose queueing best matches the fit loads' send -> headers excess at
    p50/p90/p99 (squared error, seconds); TTFT itself is not fitted, so the simulator's
    load-independent TTFT error (p50 +12%, p99 -32% at 8 req/s) does not leak into s_req."""
    want = intake_excess(real)
    scores = []
    for s_req in np.round(np.arange(0.0, 12.01e-3, 0.25e-3), 6):
        err = 0.0
        for load in FIT_LOADS:
            wait = front_end_queue(sim[load], s_req, s_chunk)[0]
            err += float(np.sum((np.percentile(wait, INTAKE_QUANTILES) - np.percentile(want[load], INTAKE_QUANTILES)) ** 2))
        scores.append((float(s_req), err))
    return min(scores, key=lambda x: x[1])[0], scores


# ---------------------------------------------------------------------------------------


def _intake(wait: np.ndarray) -> str:
    return "/".join(f"{v * 1e3:.1f}" for v in np.percentile(wait, INTAKE_QUANTILES))


def join_cost(windows: dict[int, dict[str, np.ndarray]]) -> dict:
    """Engine time per admitted request beyond the model, fitted on the fit loads' windows.

    Per window: excess = window - steps * (decode model + prefill work per step), regressed on
    the joins in it (no intercept), for the real and for the simulated run; the simulated
    coefficient is the estimator's own bias (the simulator's steps are the model exactly), so
    the cost is real minus simulated. Checked on the held-out load: predicted vs real excess.
    """
    def rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        steps = WINDOW_S / w[:, 2]
        return WINDOW_S - steps * (w[:, 3] + w[:, 4]), w[:, 5] * steps

    coef = {}
    for side in ("real", "sim"):
        excess, joins = (np.concatenate(x) for x in zip(*(rows(windows[x][side]) for x in FIT_LOADS)))
        coef[side] = float(excess @ joins / (joins @ joins))
    cost = coef["real"] - coef["sim"]
    held = {}
    for load in windows:
        er, jr = rows(windows[load]["real"])
        held[str(load)] = {"real_excess_s": float(er.sum() - coef["sim"] * jr.sum()), "predicted_s": float(cost * jr.sum()),
                           "joins": float(jr.sum())}
    return {"cost_s": cost, "real_coef_s": coef["real"], "sim_bias_coef_s": coef["sim"], "by_load": held}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="profiles/h200-llama2-7b.json")
    parser.add_argument("--out", type=Path, default=RESULTS / "high_load_h200_analysis.json")
    args = parser.parse_args()

    from aladdin.plugin.profile.io import load_profile

    profile = json.loads(Path(args.profile).read_text())
    perf = load_profile(args.profile)
    real, sim = {}, {}
    for load in LOADS:
        real_dir = RESULTS / f"sim_vs_real_h200_real_r{load}"
        real[load] = load_run(real_dir / "requests.jsonl")
        sim[load] = simulate(real_dir, perf)
        if sim[load].ids != real[load].ids:
            raise SystemExit(f"{real_dir}: the simulated requests are not the real run's")

    doc: dict = {"inputs": {"real_runs": [str(RESULTS / f"sim_vs_real_h200_real_r{x}") for x in LOADS],
                            "profile": args.profile, "window_s": WINDOW_S, "burst_gap_s": BURST_GAP_S,
                            "simulator": "ClusterSimulator on each run's schedule.jsonl: 1 worker, jsq, prefix "
                                         "caching off, async scheduling on (as bench_sim_vs_real.py)"},
                 "profile_decode_points": profile_points(profile), "loads": {}}
    print("profile decode points (batch: samples, median ms, model error %):")
    print("  " + ", ".join(f"{b}: {v['samples']}, {v['median_ms']:.2f}, {v['model_error_pct']:+.1f}"
                           for b, v in doc["profile_decode_points"].items()))

    print("\n1. decode step time vs batch (100 ms windows; model = decode model + prefill work of the joins)")
    print(f"{'load':>4} {'batch':>7} | {'real win':>8} {'step':>6} {'model':>6} {'over':>6} {'joins':>5} | "
          f"{'sim win':>7} {'step':>6} {'model':>6} {'over':>6} {'joins':>5}")
    windows = {}
    for load in LOADS:
        windows[load] = {"real": step_windows(real[load], profile), "sim": step_windows(sim[load], profile)}
        table = step_table(windows[load])
        doc["loads"][str(load)] = {"step_vs_batch": table}
        for row in table:
            cells = []
            for side in ("real", "sim"):
                v = row.get(side)
                cells.append(f"{v['windows']:>8} {v['step_ms']:6.2f} {v['model_with_prefill_ms']:6.2f} "
                             f"{v['step_over_model_pct']:+5.1f}% {v['joins_per_step']:5.2f}" if v else f"{'-':>8}" + " " * 29)
            print(f"{load:>4} {row['batch']:>7} | {cells[0]} | {cells[1]}")
    print("   pure decode steps, burst to burst (median interval vs decode model, ms)")
    for load in LOADS:
        steps = pure_decode_steps(real[load], profile)
        doc["loads"][str(load)]["pure_decode_steps"] = steps
        print(f"{load:>4} " + ", ".join(f"batch {r['batch']}: {r['steps']} steps {r['interval_p50_ms']:.2f} vs "
                                       f"{r['model_p50_ms']:.2f} ({r['excess_p50_ms']:+.2f})" for r in steps))
    joins = join_cost(windows)
    doc["join_cost"] = joins
    print(f"   engine time per admitted request beyond the model: {joins['cost_s'] * 1e3:.2f} ms (real "
          f"{joins['real_coef_s'] * 1e3:+.2f} minus estimator bias {joins['sim_bias_coef_s'] * 1e3:+.2f}, fitted on "
          f"{FIT_LOADS}); excess over the run, real vs predicted: "
          + ", ".join(f"{k} req/s {v['real_excess_s']:.2f} vs {v['predicted_s']:.2f} s" for k, v in joins["by_load"].items()))

    print("\n2. front end")
    print(f"{'load':>4} {'spacing us':>10} {'chunks/s p50':>12} {'p99':>7} {'multi-tok %':>11} "
          f"{'send->hdr p50':>13} {'p90':>6} {'p99':>6} {'hdr->tok1 p50':>13} {'p90':>6} {'p99':>6}")
    for load in LOADS:
        fe = front_end_stats(real[load])
        doc["loads"][str(load)]["front_end"] = fe
        h = fe["send_to_headers_ms"]
        print(f"{load:>4} {fe['chunk_spacing_in_burst_us']:>10.1f} {fe['chunks_per_s_p50']:>12.0f} "
              f"{fe['chunks_per_s_p99']:>7.0f} {fe['multi_token_chunks_pct']:>11.2f} {h['p50']:>13.1f} "
              f"{h['p90']:>6.1f} {h['p99']:>6.1f} " + " ".join(f"{v:>{w}.1f}" for v, w in
                                                               zip(fe["headers_to_first_token_ms"].values(), (13, 6, 6))))
    print("\n   real - simulated TTFT vs chunks/s streamed in the 100 ms before the request")
    print(f"{'load':>4} {'chunks/s':>10} {'reqs':>5} {'running':>7} {'real':>7} {'sim':>7} {'delta':>7} {'send->hdr':>9}")
    for load in LOADS:
        rows = ttft_vs_stream(real[load], sim[load])
        doc["loads"][str(load)]["ttft_vs_stream"] = rows
        for r in rows:
            print(f"{load:>4} {r['chunks_per_s']:>10} {r['requests']:>5} {r['running_p50']:>7.0f} "
                  f"{r['real_ttft_p50_ms']:>7.1f} {r['sim_ttft_p50_ms']:>7.1f} {r['delta_p50_ms']:>7.1f} "
                  f"{r['send_to_headers_p50_ms']:>9.1f}")

    s_chunk = float(np.median([doc["loads"][str(x)]["front_end"]["chunk_spacing_in_burst_us"] for x in FIT_LOADS])) * 1e-6
    sim_join = {load: simulate(RESULTS / f"sim_vs_real_h200_real_r{load}", perf, joins["cost_s"]) for load in LOADS}
    s_req, scores = fit_s_req(real, sim, s_chunk)
    s_req_join, scores_join = fit_s_req(real, sim_join, s_chunk)
    print(f"\n3. candidate models, constants fitted on {FIT_LOADS}, 64 req/s held out: join cost "
          f"{joins['cost_s'] * 1e3:.2f} ms per admitted request (engine); front-end queue s_chunk "
          f"{s_chunk * 1e6:.1f} us (burst spacing), s_req {s_req * 1e3:.2f} ms (on the plain simulator) / "
          f"{s_req_join * 1e3:.2f} ms (with the join cost)")
    print(f"{'load':>4} {'':24} {'ttft p50':>8} {'p99':>7} {'atgt p50':>8} {'p99':>7}   % vs real (ttft p50 p99, "
          "atgt p50 p99); intake wait p50/p90/p99 ms")
    excess = intake_excess(real)
    model_doc = {"join_cost_s": joins["cost_s"], "s_chunk_s": s_chunk, "s_req_s": s_req, "s_req_with_join_cost_s": s_req_join,
                 "fit_loads": list(FIT_LOADS), "held_out": [64], "fit_scores": scores,
                 "fit_scores_with_join_cost": scores_join, "loads": {}}
    for load in LOADS:
        rows = {"real": {"ttft": pcts(real[load].ttft), "atgt": pcts(atgt(real[load].tokens)),
                         "intake_wait": pcts(excess[load])},
                "sim": {"ttft": pcts(sim[load].ttft), "atgt": pcts(atgt(sim[load].tokens))},
                "sim + join cost": {"ttft": pcts(sim_join[load].ttft), "atgt": pcts(atgt(sim_join[load].tokens))},
                "sim + front end": corrected(sim[load], s_req, s_chunk),
                "sim + join + front end": corrected(sim_join[load], s_req_join, s_chunk)}
        for name in ("sim + front end", "sim + join + front end"):
            rows[name]["wait"] = front_end_queue(sim[load] if name == "sim + front end" else sim_join[load],
                                                 s_req if name == "sim + front end" else s_req_join, s_chunk)[0]
        ref = rows["real"]
        for name, r in rows.items():
            r["pct_vs_real"] = {f"{m}_{p}": 100 * (r[m][f"{p}_ms"] / ref[m][f"{p}_ms"] - 1)
                                for m in ("ttft", "atgt") for p in ("p50", "p99")}
            print(f"{load:>4} {name:24} {r['ttft']['p50_ms']:>8.1f} {r['ttft']['p99_ms']:>7.1f} "
                  f"{r['atgt']['p50_ms']:>8.2f} {r['atgt']['p99_ms']:>7.2f}   "
                  + ("" if name == "real" else " ".join(f"{v:+4.0f}%" for v in r["pct_vs_real"].values()))
                  + (f"   {_intake(excess[load] if name == 'real' else r['wait'])}" if "wait" in r or name == "real" else ""))
            r.pop("wait", None)
        model_doc["loads"][str(load)] = rows
    doc["candidate_models"] = model_doc

    measured = profile.get("admission")
    if measured is not None:
        doc["profiled_admission"] = {"cost_s": measured["cost_s"], "iqr_s": measured["iqr_s"],
                                     "by_prompt_tokens": measured["by_prompt_tokens"],
                                     "join_excess_median_s": measured.get("join_excess_median_s"),
                                     "leave_excess_median_s": measured.get("leave_excess_median_s"),
                                     "fitted_here_beyond_it_s": joins["cost_s"]}
        print(f"\n4. the profiler's admission cost (aladdin profile admission: joins into a steady decode batch): "
              f"{measured['cost_s'] * 1e3:.2f} ms per request (IQR {measured['iqr_s'][0] * 1e3:.2f} to "
              f"{measured['iqr_s'][1] * 1e3:.2f} ms), in every run above; the high-load runs' per-join excess "
              f"beyond it: {joins['cost_s'] * 1e3:.2f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
