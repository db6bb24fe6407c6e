"""Per-worker performance models (prefill, decode iteration, KV cache) and their fitting.

Aladdin places requests and sizes clusters by predicting, for one worker (one vLLM engine
with a fixed model, GPU type and tensor-parallel degree), how long prefills and decode
iterations take and how many KV tokens the running requests hold. Everything here is pure
numpy arithmetic with no I/O, so the simulator, planner, router and the in-engine plugin
can all share it; the forms and their derivations are in docs/perfmodel.md.

Units: times in seconds, sizes in tokens. Wrong shapes or values raise ValueError; callers
that handle user input turn that into AladdinError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def _scalar_or_array(values: np.ndarray) -> float | np.ndarray:
    """Scalars in give a Python float out; arrays in give an ndarray out."""
    return float(values) if values.ndim == 0 else values


def _remaining(remaining_tokens: ArrayLike) -> np.ndarray:
    """Predicted remaining output tokens as whole iterations, at least one each."""
    return np.maximum(np.ceil(np.asarray(remaining_tokens, dtype=float)).astype(np.int64).ravel(), 1)


@dataclass(frozen=True)
class PrefillModel:
    """T_pre = a * sum(n) + q * sum(n^2) + c for one batch of full prompts of n tokens.

    ``q`` is the quadratic attention term (zero when a linear fit is good enough); ``c``
    is the fixed cost of one forward pass.
    """

    a: float
    q: float
    c: float

    def time(self, prompt_tokens: ArrayLike) -> float:
        """Time of one iteration that prefills these whole prompts together (0 if none)."""
        n = np.asarray(prompt_tokens, dtype=float).ravel()
        if n.size == 0:
            return 0.0
        return float(self.a * n.sum() + self.q * (n * n).sum() + self.c)

    def time_single(self, prompt_tokens: ArrayLike) -> float | np.ndarray:
        """Element-wise prefill time of one-request batches."""
        return self.chunk_time(prompt_tokens, 0)

    def chunk_time(self, new_tokens: ArrayLike, computed_tokens: ArrayLike = 0) -> float | np.ndarray:
        """Element-wise time of an iteration that only prefills one chunk.

        The chunk has ``new_tokens`` tokens and follows ``computed_tokens`` tokens already
        in the KV cache (earlier chunks or prefix-cache hits); a chunk of zero tokens costs 0.
        """
        new = np.asarray(new_tokens, dtype=float)
        variable = self.chunk_work(new, computed_tokens)
        return _scalar_or_array(np.where(new > 0, variable + self.c, 0.0))

    def chunk_work(self, new_tokens: ArrayLike, computed_tokens: ArrayLike = 0) -> float | np.ndarray:
        """Element-wise variable part of a chunk's time: a*n + q*((k+n)^2 - k^2).

        (k+n)^2 - k^2 = n*(2k+n) is the attention work of n new tokens over a prefix of k,
        so the chunks of one prompt add up to exactly the full prompt's a*N + q*N^2.
        """
        n = np.asarray(new_tokens, dtype=float)
        k = np.asarray(computed_tokens, dtype=float)
        return _scalar_or_array(self.a * n + self.q * n * (2.0 * k + n))


@dataclass(frozen=True)
class DecodeModel:
    """T_dec = a * B + b * S + c for one decode iteration of B requests holding S context tokens.

    S is the sum over the batch of prompt + generated tokens at that iteration.
    """

    a: float
    b: float
    c: float

    def time(self, batch_size: ArrayLike, total_context_tokens: ArrayLike) -> float | np.ndarray:
        """Element-wise iteration time; an empty batch (B = 0) costs 0."""
        size = np.asarray(batch_size, dtype=float)
        context = np.asarray(total_context_tokens, dtype=float)
        times = self.a * size + self.b * context + self.c
        return _scalar_or_array(np.where(size > 0, times, 0.0))

    def predicted_atgt(self, context_lengths: ArrayLike, remaining_tokens: ArrayLike) -> np.ndarray:
        """Average decode time per token each request of a batch sees until it finishes.

        Assumes no request joins, every running request emits one token per iteration and
        leaves after its remaining tokens, so iteration k (k = 0, 1, ...) runs the B_k
        requests with remaining > k, holding S_k = sum(context) + k * B_k tokens; request i
        sees mean(T_dec(B_k, S_k) for k < remaining_i). Prefill stalls are not included.
        Remaining lengths are rounded up, and below 1 count as 1: a running request has
        at least one token left (an overrun prediction should be re-estimated by the caller).
        """
        context = np.asarray(context_lengths, dtype=float).ravel()
        remaining = _remaining(remaining_tokens)
        if context.shape != remaining.shape:
            raise ValueError("context_lengths and remaining_tokens must have the same length")
        if context.size == 0:
            return np.zeros(0)
        order = np.argsort(remaining)
        remaining_sorted = remaining[order]
        # context_from[j] = total context of the requests at sorted positions j..end
        context_from = np.append(np.cumsum(context[order][::-1])[::-1], 0.0)
        steps = np.arange(remaining_sorted[-1])
        first_alive = np.searchsorted(remaining_sorted, steps, side="right")
        batch = context.size - first_alive
        step_times = self.a * batch + self.b * (context_from[first_alive] + steps * batch) + self.c
        return np.cumsum(step_times)[remaining - 1] / remaining


@dataclass(frozen=True)
class KVModel:
    """Paged KV cache: each request holds its context rounded up to whole blocks.

    ``capacity_tokens`` is the engine's allocatable block count times ``block_size``.
    """

    block_size: int
    capacity_tokens: int

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.capacity_tokens < 0 or self.capacity_tokens % self.block_size:
            raise ValueError(
                f"capacity_tokens must be a non-negative multiple of block_size {self.block_size}, "
                f"got {self.capacity_tokens}"
            )

    @property
    def num_blocks(self) -> int:
        return self.capacity_tokens // self.block_size

    def blocks(self, tokens: ArrayLike) -> int | np.ndarray:
        """Element-wise number of blocks that ``tokens`` context tokens occupy."""
        counts = -(-np.asarray(tokens, dtype=np.int64) // self.block_size)
        return int(counts) if counts.ndim == 0 else counts

    def tokens_held(self, context_lengths: ArrayLike) -> int:
        """KV tokens (block-rounded) held by requests with these context lengths."""
        return int(np.sum(self.blocks(np.ravel(context_lengths)))) * self.block_size

    def free_tokens(self, context_lengths: ArrayLike) -> int:
        """Capacity left after these requests; negative when they over-commit the cache."""
        return self.capacity_tokens - self.tokens_held(context_lengths)

    def peak_tokens_held(self, context_lengths: ArrayLike, remaining_tokens: ArrayLike) -> int:
        """Largest future KV use while the requests grow one token per iteration and finish.

        Same picture as DecodeModel.predicted_atgt: at iteration k the requests with
        remaining > k hold context + k tokens. The peak falls just before some request
        leaves, so only k = remaining_j - 1 needs checking (an n x n evaluation). For a
        request not yet prefilled, pass its prompt and predicted output length.
        """
        context = np.asarray(context_lengths, dtype=np.int64).ravel()
        remaining = _remaining(remaining_tokens)
        if context.shape != remaining.shape:
            raise ValueError("context_lengths and remaining_tokens must have the same length")
        if context.size == 0:
            return 0
        last_steps = np.unique(remaining) - 1
        alive = remaining[:, None] > last_steps[None, :]
        held = np.where(alive, self.blocks(context[:, None] + last_steps[None, :]), 0)
        return int(held.sum(axis=0).max()) * self.block_size

    def fits(self, context_lengths: ArrayLike, remaining_tokens: ArrayLike | None = None) -> bool:
        """Whether the requests fit now, or, given their remaining tokens, until they finish."""
        if remaining_tokens is None:
            return self.tokens_held(context_lengths) <= self.capacity_tokens
        return self.peak_tokens_held(context_lengths, remaining_tokens) <= self.capacity_tokens


@dataclass(frozen=True)
class PerfModel:
    """Everything a policy needs to know about one worker configuration."""

    prefill: PrefillModel
    decode: DecodeModel
    kv: KVModel
    max_num_seqs: int
    max_batched_tokens: int
    # Engine time each request costs the iteration that admits it (adding it to the batch, and
    # later releasing it), beyond its prefill work: every running request waits for it. It is
    # part of a lone prompt's c_p, so it comes out of the front-end time (docs/perfmodel.md,
    # "Admission cost"); 0 when not measured.
    admit_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_batched_tokens must be >= 1")
        if not (math.isfinite(self.admit_s) and self.admit_s >= 0.0):
            raise ValueError(f"admit_s must be >= 0 seconds, got {self.admit_s}")

    @property
    def frontend_s(self) -> float:
        """Time a new request spends before the engine can schedule it (HTTP, tokenization):
        the part of a lone prompt's fixed TTFT cost ``c_p`` beyond one forward pass and its
        admission, max(c_p - c_d - admit_s, 0). It delays that request only, never the GPU
        (docs/perfmodel.md, "Mixed iterations")."""
        return max(self.prefill.c - self.decode.c - self.admit_s, 0.0)

    @property
    def prefill_pass_s(self) -> float:
        """Fixed cost of a forward pass that only prefills: c_p - frontend_s = min(c_p, c_d)."""
        return min(self.prefill.c, self.decode.c)

    def iteration_time(
        self,
        decode_batch_size: int,
        decode_context_tokens: float,
        prefill_new_tokens: ArrayLike = (),
        prefill_computed_tokens: ArrayLike = 0,
        admitted: int = 0,
    ) -> float:
        """Time of one (possibly mixed) iteration under chunked prefill.

        The decode part, the variable part of every prefill chunk and ``admit_s`` per request
        this iteration admits add up; the fixed cost is paid once per forward pass: c_d with
        decodes in it, else ``prefill_pass_s``. ``prefill_new_tokens``/``prefill_computed_tokens``
        list the chunks in this iteration.
        """
        new = np.asarray(prefill_new_tokens, dtype=float).ravel()
        computed = np.broadcast_to(np.asarray(prefill_computed_tokens, dtype=float).ravel(), new.shape)
        has_prefill = bool((new > 0).any())
        has_decode = decode_batch_size > 0
        if not (has_prefill or has_decode):
            return 0.0
        prefill_work = float(np.sum(self.prefill.chunk_work(new, computed))) + admitted * self.admit_s
        if not has_decode:
            return prefill_work + self.prefill_pass_s
        decode_work = self.decode.a * decode_batch_size + self.decode.b * decode_context_tokens
        return float(decode_work + prefill_work + self.decode.c)

    def ttft_alone(self, prompt_tokens: ArrayLike) -> float | np.ndarray:
        """Element-wise TTFT of prompts alone on an idle worker: the front-end time, the
        admission, then chunks of ``max_batched_tokens``, each one prefill-only pass. Equals
        ``prefill.time_single`` for a prompt within one chunk."""
        n = np.asarray(prompt_tokens, dtype=float)
        chunks = np.maximum(np.ceil(n / self.max_batched_tokens), 1.0)
        fixed = self.frontend_s + self.admit_s
        return _scalar_or_array(fixed + self.prefill.chunk_work(n, 0) + chunks * self.prefill_pass_s)
