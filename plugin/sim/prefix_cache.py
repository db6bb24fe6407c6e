"""One simulated worker's KV blocks as vLLM's prefix cache keeps them (``enable_prefix_caching``).

A full block is known by a key: for a prompt block, a hash chained over the prompt's token
ids up to and including that block (so two prompts share the keys of their common full-block
prefix, as vLLM's block hashes do); for any other full block (one holding generated tokens,
or any block of a prompt whose ids the workload does not carry), the pair (request, block
index), which only the same request can find again, after a preemption. A prompt block's key
is registered as soon as a chunk fills it (another request admitted meanwhile may share it);
other keys only when their request is preempted, as nobody else can find them (a finished
request's own blocks keep only their place in the eviction order).

The free blocks are vLLM's free queue: blocks that hold nothing reusable come first (taken
first), then freed cached blocks, least recently freed first (evicted first); a request frees
its blocks last block first. Taking free blocks is lazy: the simulator only counts blocks in
use, and ``settle`` evicts what those counts took before the cache is next read or grown.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Hashable


def prompt_block_keys(token_ids: Sequence[int] | None, prompt_tokens: int, block_size: int) -> tuple[int, ...]:
    """The keys of a prompt's full blocks (none without token ids)."""
    if not token_ids:
        return ()
    ids = tuple(token_ids[:prompt_tokens])
    keys, parent = [], 0
    for start in range(0, len(ids) - block_size + 1, block_size):
        parent = hash((parent, ids[start : start + block_size]))
        keys.append(parent)
    return tuple(keys)


class _Block:
    __slots__ = ("key", "ref")

    def __init__(self, key: Hashable, ref: int):
        self.key = key
        self.ref = ref


class _Run:
    """Free cached blocks nobody can find: a finished request's own blocks, only LRU order to keep."""

    __slots__ = ("count",)

    def __init__(self, count: int):
        self.count = count


class PrefixCache:
    """The cached blocks of one worker, in use or free, and the order free ones are reused in.

    As in vLLM, identical blocks are not merged: a block computed while another with the same
    key is cached is cached too, and a lookup finds the one cached first.
    """

    def __init__(self, num_blocks: int):
        self.anonymous = num_blocks  # free blocks that hold nothing reusable
        self.lru: OrderedDict[_Block | _Run, None] = OrderedDict()  # free cached blocks, evicted first first
        self.lru_blocks = 0  # the blocks in ``lru``
        self.blocks: dict[Hashable, list[_Block]] = {}  # every cached block by key, in use or free
        self.prompt_blocks: dict[int, list[_Block]] = {}  # request -> the prompt blocks it holds, in order

    def settle(self, free: int) -> None:
        """Evict what allocations took since the last call: ``free`` blocks are free now."""
        excess = self.anonymous + self.lru_blocks - free
        if excess <= 0:
            return
        taken = min(excess, self.anonymous)
        self.anonymous -= taken
        excess -= taken
        self.lru_blocks -= excess
        while excess:
            entry = next(iter(self.lru))
            if isinstance(entry, _Run) and entry.count > excess:
                entry.count -= excess
                return
            del self.lru[entry]
            if isinstance(entry, _Run):
                excess -= entry.count
            else:
                self._forget(entry)
                excess -= 1

    def hits(self, request: int, keys: tuple[int, ...], tokens: int, block_size: int, free: int) -> list[_Block]:
        """The cached blocks a request of ``tokens`` tokens would start from: the longest run of
        its leading full blocks found, leaving at least its last token to compute."""
        self.settle(free)
        found = []
        for j in range((tokens - 1) // block_size):
            cached = self.blocks.get(keys[j] if j < len(keys) else (request, j))
            if cached is None:
                break
            found.append(cached[0])
        return found

    def touch(self, request: int, hits: list[_Block], keys: tuple[int, ...]) -> int:
        """The request starts from ``hits``; returns how many of them were free (now in use)."""
        taken = 0
        held = self.prompt_blocks.setdefault(request, [])
        for j, block in enumerate(hits):
            if block.ref == 0:
                del self.lru[block]
                taken += 1
            if j < len(keys):
                block.ref += 1
                held.append(block)
            else:  # its own block: in use again, cached again when freed
                self._forget(block)
        self.lru_blocks -= taken
        return taken

    def computed(self, request: int, keys: tuple[int, ...], start: int, end: int, block_size: int, free: int) -> None:
        """A chunk computed tokens ``start`` to ``end`` (its blocks taken: ``free`` are left):
        cache the prompt blocks it filled."""
        self.settle(free)
        held = self.prompt_blocks.setdefault(request, [])
        for j in range(start // block_size, min(end // block_size, len(keys))):
            block = _Block(keys[j], 1)
            self.blocks.setdefault(keys[j], []).append(block)
            held.append(block)

    def release(self, request: int, kv_tokens: int, cached_tokens: int, block_size: int, free: int,
                findable: bool) -> int:
        """The request frees its blocks, last first (``kv_tokens`` tokens of KV, the full blocks
        of the first ``cached_tokens`` cached; ``findable``: it may come back for its own, as a
        preempted request does); returns how many blocks are free now that were not (shared
        prompt blocks may stay in use)."""
        self.settle(free)
        held = self.prompt_blocks.pop(request, [])
        full = cached_tokens // block_size
        uncached = -(-kv_tokens // block_size) - max(full, len(held))
        self.anonymous += uncached
        own = max(0, full - len(held))  # its cached blocks past its prompt blocks
        if own and findable:
            for j in reversed(range(len(held), full)):
                block = _Block((request, j), 0)
                self.blocks[block.key] = [block]
                self.lru[block] = None
        elif own:
            self.lru[_Run(own)] = None
        freed = uncached + own
        for block in reversed(held):
            block.ref -= 1
            if not block.ref:
                self.lru[block] = None
                freed += 1
        self.lru_blocks += freed - uncached
        return freed

    def _forget(self, block: _Block) -> None:
        cached = self.blocks[block.key]
        cached.remove(block)
        if not cached:
            del self.blocks[block.key]
