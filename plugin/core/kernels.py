"""Compiled loops of the scheduler core (numba): a worker's forecast, and a request's KV, TTFT
and ATGT checks against every candidate worker; the predictor's sorted windows.

They run once per structural change of a worker and once per decision, over a few hundred
requests and steps each, where numpy's per-call cost would dominate. They read a WorkerPool's
few packed arrays (one dispatch argument each, since numba checks every argument's type per
call), indexed by the constants below: a worker's per-request columns ``ints[field, row,
slot]`` and ``floats[field, row, slot]``, its scalars ``scalars[field, row]``, its per-step
forecast ``steps[field, row, k]`` and sparse tables ``tables[field, level, row, k]``. The
formulas are docs/placement.md's; core.worker says what each field holds.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Per-request columns (a slot per request) and the pool's per-worker scalars.
SLOT_INTS = ("prompt", "anchor", "decoding", "predicted", "seq", "live", "context", "remaining")
PROMPT, ANCHOR, DECODING, PREDICTED, SEQ, LIVE, CONTEXT, REMAINING = range(len(SLOT_INTS))
SLOT_FLOATS = ("slo", "first", "atgt_base", "atgt_clock", "inv_tokens_slo")
SLO, FIRST, ATGT_BASE, ATGT_CLOCK, INV_TOKENS_SLO = range(len(SLOT_FLOATS))
STEP_ROWS = ("cum_time", "held_suffix", "upper_suffix")
CUM_TIME, HELD_SUFFIX, UPPER_SUFFIX = range(len(STEP_ROWS))
TABLES = ("held_max", "upper_max")  # max of held[i] + i (upper[i] + i) over i in [k, k + 2^level)
HELD_MAX, UPPER_MAX = range(len(TABLES))
SCALARS = (
    "origin", "horizon", "outstanding", "decoding", "decoding_context_base", "unprefilled",
    "prefill_work_ahead", "kv_held", "capacity", "block_size", "max_num_seqs", "max_batched_tokens",
    "dec_a", "dec_b", "dec_c", "pre_a", "pre_q", "pre_pass", "frontend", "admit",
)
(ORIGIN, HORIZON, OUTSTANDING, N_DECODING, DECODING_CONTEXT_BASE, UNPREFILLED, PREFILL_WORK_AHEAD, KV_HELD,
 CAPACITY, BLOCK_SIZE, MAX_NUM_SEQS, MAX_BATCHED_TOKENS, DEC_A, DEC_B, DEC_C, PRE_A, PRE_Q, PRE_PASS,
 FRONTEND, ADMIT) = range(len(SCALARS))

KV_FITS, KV_OVER, KV_CLOSE = 0, 1, 2  # kv_check's verdicts; CLOSE: the bounds straddle the limit


@njit(cache=True)
def _generated(ints, row, s, step):
    return step - ints[ANCHOR, row, s] if ints[DECODING, row, s] else ints[ANCHOR, row, s]


@njit(cache=True)
def _started(ints, floats, row, s, step):
    return _generated(ints, row, s, step) >= 1 and math.isfinite(floats[FIRST, row, s])


@njit(cache=True)
def _prefill_stall(scalars, row, context):
    """Engine time a prompt of ``context`` tokens adds to the iterations it shares: its prefill
    work and its admission (PerfModel.admit_s)."""
    return scalars[PRE_A, row] * context + scalars[PRE_Q, row] * context * context + scalars[ADMIT, row]


@njit(cache=True)
def rebuild(row, step, inflation, scalars, ints, floats, steps, tables):
    """Write worker ``row``'s forecast from its request columns at ``step``; returns its horizon.

    A slot holds a request when LIVE; its generated tokens are ``step - ANCHOR`` while
    DECODING, else ANCHOR. When the horizon exceeds the step arrays, only CONTEXT and
    REMAINING are written and the caller grows the arrays and calls again.
    """
    slots = ints.shape[2]
    block_size = scalars[BLOCK_SIZE, row]
    horizon = 0
    total = 0.0
    count = 0
    for s in range(slots):
        if not ints[LIVE, row, s]:
            ints[REMAINING, row, s] = 0
            continue
        generated = _generated(ints, row, s, step)
        ints[CONTEXT, row, s] = ints[PROMPT, row, s] + generated
        r = max(ints[PREDICTED, row, s] - generated, 1)
        if inflation > 1.0:
            r = int(math.ceil(r * inflation))
        ints[REMAINING, row, s] = r
        horizon = max(horizon, r)
        total += ints[CONTEXT, row, s]
        count += 1
    if horizon >= steps.shape[2]:
        return horizon
    leaving = np.zeros(horizon + 1, dtype=np.int64)
    leaving_context = np.zeros(horizon + 1)
    for s in range(slots):
        if ints[LIVE, row, s]:
            leaving[ints[REMAINING, row, s]] += 1
            leaving_context[ints[REMAINING, row, s]] += ints[CONTEXT, row, s]
    alive = count
    steps[CUM_TIME, row, 0] = 0.0
    for k in range(horizon):
        alive -= leaving[k]
        total -= leaving_context[k]
        h = total + k * alive  # requests with remaining > k hold context + k
        tables[HELD_MAX, 0, row, k] = h + k
        tables[UPPER_MAX, 0, row, k] = h + (block_size - 1) * alive + k
        steps[CUM_TIME, row, k + 1] = (steps[CUM_TIME, row, k] + scalars[DEC_A, row] * alive + scalars[DEC_B, row] * h
                                       + scalars[DEC_C, row])
    steps[HELD_SUFFIX, row, horizon] = -np.inf
    steps[UPPER_SUFFIX, row, horizon] = -np.inf
    for k in range(horizon - 1, -1, -1):
        steps[HELD_SUFFIX, row, k] = max(steps[HELD_SUFFIX, row, k + 1], tables[HELD_MAX, 0, row, k] - k)
        steps[UPPER_SUFFIX, row, k] = max(steps[UPPER_SUFFIX, row, k + 1], tables[UPPER_MAX, 0, row, k] - k)
    level = 1
    while (1 << level) <= horizon:
        half = 1 << (level - 1)
        for k in range(horizon - (1 << level) + 1):
            for t in range(2):
                tables[t, level, row, k] = max(tables[t, level - 1, row, k], tables[t, level - 1, row, k + half])
        level += 1

    # Prefills still to run stall the decodes they share: every started request waits for all
    # of them, a prompt not yet started for those placed before it.
    stall_total = 0.0
    for s in range(slots):
        if ints[LIVE, row, s] and not _started(ints, floats, row, s, step):
            stall_total += _prefill_stall(scalars, row, ints[CONTEXT, row, s])
    for s in range(slots):
        floats[ATGT_BASE, row, s] = -np.inf
        floats[ATGT_CLOCK, row, s] = 0.0
        floats[INV_TOKENS_SLO, row, s] = 0.0
        if not ints[LIVE, row, s]:
            continue
        r = ints[REMAINING, row, s]
        started = _started(ints, floats, row, s, step)
        if started:
            behind = stall_total
        else:
            behind = 0.0
            for o in range(slots):
                if ints[LIVE, row, o] and ints[SEQ, row, o] < ints[SEQ, row, s] and not _started(ints, floats, row, o, step):
                    behind += _prefill_stall(scalars, row, ints[CONTEXT, row, o])
        tokens_slo = (r + (_generated(ints, row, s, step) - 1 if started else 0)) * floats[SLO, row, s]
        if not math.isfinite(tokens_slo):
            continue
        inv = 1.0 / tokens_slo
        floats[INV_TOKENS_SLO, row, s] = inv
        floats[ATGT_BASE, row, s] = (steps[CUM_TIME, row, r] + behind - (floats[FIRST, row, s] if started else 0.0)) * inv
        floats[ATGT_CLOCK, row, s] = inv if started else 0.0
    return horizon


@njit(cache=True)
def kv_check(rows, delta, scalars, steps, tables, context, new_steps, shares):
    """Per row: the peak KV's fill (its lower bound / capacity) with a request of ``context``
    tokens growing for ``new_steps`` steps added, and whether it stays within ``shares[i]`` of
    the capacity (the bounds: unrounded, and every block partly full). A request bigger than the
    cache even alone always fits: holding it back would not help."""
    fill = np.empty(rows.size)
    verdict = np.empty(rows.size, dtype=np.int64)
    for i in range(rows.size):
        w = rows[i]
        d = delta[w]
        block = scalars[BLOCK_SIZE, w]
        left = int(scalars[HORIZON, w]) - d
        shared = min(new_steps, max(left, 0))
        lo = -np.inf
        hi = -np.inf
        if shared > 0:  # the steps it shares: max of held[k] + k over [d, d + shared), two table reads
            level = 0
            while (2 << level) <= shared:
                level += 1
            end = d + shared - (1 << level)
            lo = max(tables[HELD_MAX, level, w, d], tables[HELD_MAX, level, w, end]) - d + context
            hi = max(tables[UPPER_MAX, level, w, d], tables[UPPER_MAX, level, w, end]) - d + context + block - 1
        lo = max(lo, steps[HELD_SUFFIX, w, d + shared])
        hi = max(hi, steps[UPPER_SUFFIX, w, d + shared])
        if new_steps > left:  # alone after the worker's horizon: its own peak
            lo = max(lo, context + new_steps - 1.0)
            hi = max(hi, context + new_steps - 1.0 + block - 1)
        capacity = scalars[CAPACITY, w]
        fill[i] = max(lo, 0.0) / capacity
        limit = shares[i] * capacity
        if math.ceil((context + new_steps - 1.0) / block) * block > limit or hi <= limit:
            verdict[i] = KV_FITS
        elif lo > limit:
            verdict[i] = KV_OVER
        else:
            verdict[i] = KV_CLOSE
    return fill, verdict


@njit(cache=True)
def resident_atgt(rows, delta, observed, slots_used, scalars, steps, ints, floats, context, new_steps, stall):
    """Per row, the largest predicted ATGT / SLO with the request added over the residents
    predicted to meet their SLO without it (-inf: none)."""
    out = np.empty(rows.size)
    for i in range(rows.size):
        w = rows[i]
        d = delta[w]
        per_step = scalars[DEC_A, w] + scalars[DEC_B, w] * context
        dec_b = scalars[DEC_B, w]
        shift = steps[CUM_TIME, w, d]
        worst = -np.inf
        for s in range(slots_used[w]):
            inv = floats[INV_TOKENS_SLO, w, s]
            if inv == 0.0:
                continue
            ratio = floats[ATGT_BASE, w, s] + floats[ATGT_CLOCK, w, s] * observed[w] - shift * inv
            if ratio > 1.0:
                continue  # already predicted to miss: holding requests back cannot save it
            share = min(max(ints[REMAINING, w, s] - d, 0), new_steps)
            added = share * per_step + dec_b * share * (share - 1) / 2.0 + stall[i]
            worst = max(worst, ratio + added * inv)
        out[i] = worst
    return out


@njit(cache=True)
def ttft(scalars, step, waited, frontend_paid, context, own_tokens):
    """Per worker, the request's predicted TTFT and its TTFT alone on an idle worker.

    The front end (unless already paid), then the prompts queued ahead in iterations of at most
    ``max_batched_tokens`` that also carry the worker's decodes, then its own prefill.
    """
    n = scalars.shape[1]
    predicted = np.empty(n)
    alone = np.empty(n)
    for w in range(n):
        frontend = scalars[FRONTEND, w]
        wait = max(waited, frontend) if frontend_paid else waited + frontend
        batch = scalars[N_DECODING, w]
        if batch > 0:
            per_iteration = (scalars[DEC_A, w] * batch + scalars[DEC_B, w] * (scalars[DECODING_CONTEXT_BASE, w] + batch * step[w])
                             + scalars[DEC_C, w])
        else:
            per_iteration = scalars[PRE_PASS, w]
        max_batched = scalars[MAX_BATCHED_TOKENS, w]
        budget = max(max_batched - batch, 1.0)
        own_work = _prefill_stall(scalars, w, context)
        predicted[w] = (wait + math.ceil((scalars[UNPREFILLED, w] + own_tokens) / budget) * per_iteration
                        + scalars[PREFILL_WORK_AHEAD, w] + own_work)
        alone[w] = wait + own_work + max(math.ceil(context / max_batched), 1.0) * scalars[PRE_PASS, w]
    return predicted, alone


@njit(cache=True)
def own_atgt(rows, delta, scalars, steps, context, new_steps, past, tokens, slo, budget):
    """Per row, the request's predicted ATGT / SLO (0 where even an idle worker would miss
    ``budget`` x SLO: the constraint is dropped) and whether it is within the budget. It adds
    a + b * (context + k) to every step k it shares and runs alone after the worker's horizon."""
    fill = np.empty(rows.size)
    keep = np.empty(rows.size, dtype=np.bool_)
    for i in range(rows.size):
        w = rows[i]
        d = delta[w]
        left = int(scalars[HORIZON, w]) - d
        shared = min(new_steps, max(left, 0))
        dec_b, dec_c = scalars[DEC_B, w], scalars[DEC_C, w]
        added = new_steps * (scalars[DEC_A, w] + dec_b * context) + dec_b * new_steps * (new_steps - 1) / 2.0
        future = steps[CUM_TIME, w, d + shared] - steps[CUM_TIME, w, d] + added + dec_c * max(new_steps - left, 0)
        predicted = (past + future) / tokens
        if (past + added + dec_c * new_steps) / tokens > budget * slo:
            fill[i] = 0.0
            keep[i] = True
        else:
            fill[i] = predicted / slo
            keep[i] = predicted <= budget * slo
    return fill, keep


@njit(cache=True)
def sorted_replace(values, count, evict, old, new):
    """Keep ``values[:count]`` ascending: take out one ``old`` (when ``evict``), put in ``new``.
    Without an eviction ``count`` already includes the new value's place."""
    n = count if evict else count - 1  # values sorted in [:n] before the change
    if evict:
        i = np.searchsorted(values[:n], old)
        values[i : n - 1] = values[i + 1 : n].copy()
        n -= 1
    j = np.searchsorted(values[:n], new)
    values[j + 1 : n + 1] = values[j:n].copy()
    values[j] = new


@njit(cache=True)
def tail_above(values, count, threshold):
    """(first index of ``values[:count]`` (ascending) above ``threshold``, sum of the tail)."""
    start = np.searchsorted(values[:count], threshold, side="right")
    total = 0
    for i in range(start, count):
        total += values[i]
    return start, total
