"""Compiled loops of the scheduler core (numba): a worker's forecast, and a request's KV and
ATGT checks against every candidate worker.

They run once per structural change of a worker and once per decision, over a few hundred
requests and steps each, where numpy's per-call cost would dominate. Arrays are rows of a
WorkerPool (one row per worker, one column per request slot or decode step); the formulas
are docs/placement.md's, and ``core.worker`` / ``core.pipeline`` say what each array holds.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def rebuild(row, step, inflation, block_size, dec_a, dec_b, dec_c, pre_a, pre_q,
            prompt, anchor, decoding, predicted, slo, first, seq, live,
            context, remaining, atgt_base, atgt_clock, inv_tokens_slo,
            held_max, upper_max, cum_time, held_suffix, upper_suffix):
    """Write worker ``row``'s forecast from its request columns at ``step``; returns its horizon.

    A slot holds a request when ``live``; its generated tokens are ``step - anchor`` while
    ``decoding``, else ``anchor``. When the horizon exceeds the step arrays, only ``remaining``
    and ``context`` are written and the caller grows the arrays and calls again.
    ``held_max[l, row, k]`` = max of held[i] + i over i in [k, k + 2^l) (likewise upper): sparse
    tables, so a decision reads the KV peak over any stretch of steps in O(1).
    """
    slots = live.shape[1]
    horizon = 0
    total = 0.0
    count = 0
    for s in range(slots):
        if not live[row, s]:
            remaining[row, s] = 0
            continue
        generated = _generated(row, s, step, anchor, decoding)
        context[row, s] = prompt[row, s] + generated
        r = max(predicted[row, s] - generated, 1)
        if inflation > 1.0:
            r = int(math.ceil(r * inflation))
        remaining[row, s] = r
        horizon = max(horizon, r)
        total += context[row, s]
        count += 1
    if horizon >= cum_time.shape[1]:
        return horizon
    leaving = np.zeros(horizon + 1, dtype=np.int64)
    leaving_context = np.zeros(horizon + 1)
    for s in range(slots):
        if live[row, s]:
            leaving[remaining[row, s]] += 1
            leaving_context[remaining[row, s]] += context[row, s]
    alive = count
    cum_time[row, 0] = 0.0
    for k in range(horizon):
        alive -= leaving[k]
        total -= leaving_context[k]
        h = total + k * alive  # requests with remaining > k hold context + k
        held_max[0, row, k] = h + k
        upper_max[0, row, k] = h + (block_size - 1) * alive + k
        cum_time[row, k + 1] = cum_time[row, k] + dec_a * alive + dec_b * h + dec_c
    held_suffix[row, horizon] = -np.inf
    upper_suffix[row, horizon] = -np.inf
    for k in range(horizon - 1, -1, -1):
        held_suffix[row, k] = max(held_suffix[row, k + 1], held_max[0, row, k] - k)
        upper_suffix[row, k] = max(upper_suffix[row, k + 1], upper_max[0, row, k] - k)
    level = 1
    while (1 << level) <= horizon:
        half = 1 << (level - 1)
        for k in range(horizon - (1 << level) + 1):
            held_max[level, row, k] = max(held_max[level - 1, row, k], held_max[level - 1, row, k + half])
            upper_max[level, row, k] = max(upper_max[level - 1, row, k], upper_max[level - 1, row, k + half])
        level += 1

    # Prefills still to run stall the decodes they share: every started request waits for all
    # of them, a prompt not yet started for those placed before it.
    stall_total = 0.0
    for s in range(slots):
        if live[row, s] and not _started(row, s, step, anchor, decoding, first):
            c = context[row, s]
            stall_total += pre_a * c + pre_q * c * c
    for s in range(slots):
        if not live[row, s]:
            atgt_base[row, s] = -np.inf
            atgt_clock[row, s] = 0.0
            inv_tokens_slo[row, s] = 0.0
            continue
        r = remaining[row, s]
        started = _started(row, s, step, anchor, decoding, first)
        generated = _generated(row, s, step, anchor, decoding)
        if started:
            behind = stall_total
        else:
            behind = 0.0
            for o in range(slots):
                if live[row, o] and seq[row, o] < seq[row, s] and not _started(row, o, step, anchor, decoding, first):
                    c = context[row, o]
                    behind += pre_a * c + pre_q * c * c
        tokens_slo = (r + (generated - 1 if started else 0)) * slo[row, s]
        if not math.isfinite(tokens_slo):
            atgt_base[row, s] = -np.inf
            atgt_clock[row, s] = 0.0
            inv_tokens_slo[row, s] = 0.0
            continue
        inv = 1.0 / tokens_slo
        inv_tokens_slo[row, s] = inv
        atgt_base[row, s] = (cum_time[row, r] + behind - (first[row, s] if started else 0.0)) * inv
        atgt_clock[row, s] = inv if started else 0.0
    return horizon


@njit(cache=True)
def _generated(row, s, step, anchor, decoding):
    return step - anchor[row, s] if decoding[row, s] else anchor[row, s]


@njit(cache=True)
def _started(row, s, step, anchor, decoding, first):
    return _generated(row, s, step, anchor, decoding) >= 1 and math.isfinite(first[row, s])


KV_FITS, KV_OVER, KV_CLOSE = 0, 1, 2  # kv_check's verdicts; CLOSE: the bounds straddle the limit


@njit(cache=True)
def kv_check(rows, delta, horizon, block_size, capacity, held_max, upper_max, held_suffix, upper_suffix,
             context, steps, share):
    """Per row: the peak KV's fill (its lower bound / capacity) with a request of ``context``
    tokens growing for ``steps`` steps added, and whether it stays within ``share`` of the
    capacity (the bounds: unrounded, and every block partly full). A request bigger than the
    cache even alone always fits: holding it back would not help."""
    fill = np.empty(rows.size)
    verdict = np.empty(rows.size, dtype=np.int64)
    for i in range(rows.size):
        w = rows[i]
        d = delta[w]
        left = horizon[w] - d
        shared = min(steps, max(left, 0))
        lo = -np.inf
        hi = -np.inf
        if shared > 0:  # the steps it shares: max of held[k] + k over [d, d + shared), by two table reads
            level = 0
            while (2 << level) <= shared:
                level += 1
            end = d + shared - (1 << level)
            lo = max(held_max[level, w, d], held_max[level, w, end]) - d + context
            hi = max(upper_max[level, w, d], upper_max[level, w, end]) - d + context + block_size[w] - 1
        lo = max(lo, held_suffix[w, d + shared])
        hi = max(hi, upper_suffix[w, d + shared])
        if steps > left:  # alone after the worker's horizon: its own peak
            lo = max(lo, context + steps - 1.0)
            hi = max(hi, context + steps - 1.0 + block_size[w] - 1)
        fill[i] = max(lo, 0.0) / capacity[w]
        limit = share * capacity[w]
        bs = block_size[w]
        if math.ceil((context + steps - 1.0) / bs) * bs > limit or hi <= limit:
            verdict[i] = KV_FITS
        elif lo > limit:
            verdict[i] = KV_OVER
        else:
            verdict[i] = KV_CLOSE
    return fill, verdict


@njit(cache=True)
def resident_atgt(rows, delta, observed, slots_used, cum_time, remaining, atgt_base, atgt_clock, inv_tokens_slo,
                  dec_a, dec_b, context, steps, stall, budget):
    """Per row, the largest predicted ATGT / SLO with the request added over the residents
    still within ``budget`` without it (-inf: none)."""
    out = np.empty(rows.size)
    for i in range(rows.size):
        w = rows[i]
        d = delta[w]
        per_step = dec_a[w] + dec_b[w] * context
        shift = cum_time[w, d]
        worst = -np.inf
        for s in range(slots_used[w]):
            inv = inv_tokens_slo[w, s]
            if inv == 0.0:
                continue
            ratio = atgt_base[w, s] + atgt_clock[w, s] * observed[w] - shift * inv
            if ratio > budget:
                continue  # already predicted to miss: holding requests back cannot save it
            share = min(max(remaining[w, s] - d, 0), steps)
            added = share * per_step + dec_b[w] * share * (share - 1) / 2.0 + stall[i]
            worst = max(worst, ratio + added * inv)
        out[i] = worst
    return out


@njit(cache=True)
def ttft(decoding, decoding_context_base, step, unprefilled, prefill_work_ahead, max_batched_tokens, dec_a, dec_b,
         dec_c, pre_a, pre_q, pre_pass, frontend, waited, frontend_paid, context, own_tokens):
    """Per worker, the request's predicted TTFT and its TTFT alone on an idle worker.

    The front end (unless already paid), then the prompts queued ahead in iterations of at most
    ``max_batched_tokens`` that also carry the worker's decodes, then its own prefill.
    """
    n = decoding.size
    predicted = np.empty(n)
    alone = np.empty(n)
    for w in range(n):
        wait = max(waited, frontend[w]) if frontend_paid else waited + frontend[w]
        batch = decoding[w]
        if batch > 0:
            per_iteration = dec_a[w] * batch + dec_b[w] * (decoding_context_base[w] + batch * step[w]) + dec_c[w]
        else:
            per_iteration = pre_pass[w]
        budget = max(max_batched_tokens[w] - batch, 1.0)
        own_work = pre_a[w] * context + pre_q[w] * context * context
        predicted[w] = (wait + math.ceil((unprefilled[w] + own_tokens) / budget) * per_iteration
                        + prefill_work_ahead[w] + own_work)
        alone[w] = wait + own_work + max(math.ceil(context / max_batched_tokens[w]), 1.0) * pre_pass[w]
    return predicted, alone


@njit(cache=True)
def own_atgt(rows, delta, horizon, cum_time, dec_a, dec_b, dec_c, context, steps, past, tokens, slo, budget):
    """Per row, the request's predicted ATGT / SLO (0 where even an idle worker would miss
    ``budget`` x SLO: the constraint is dropped) and whether it is within the budget. It adds
    a + b * (context + k) to every step k it shares and runs alone after the worker's horizon."""
    fill = np.empty(rows.size)
    keep = np.empty(rows.size, dtype=np.bool_)
    for i in range(rows.size):
        w = rows[i]
        d = delta[w]
        left = horizon[w] - d
        shared = min(steps, max(left, 0))
        added = steps * (dec_a[w] + dec_b[w] * context) + dec_b[w] * steps * (steps - 1) / 2.0
        future = cum_time[w, d + shared] - cum_time[w, d] + added + dec_c[w] * max(steps - left, 0)
        predicted = (past + future) / tokens
        if (past + added + dec_c[w] * steps) / tokens > budget * slo:
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
