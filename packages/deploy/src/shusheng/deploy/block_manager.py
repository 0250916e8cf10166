"""Paged KV blocks: allocation with reference counts, prefix caching over a hash chain, copy-on-write on fork.

A sequence's `block_table` lists the physical blocks holding its tokens' K/V, `block_size` tokens each. A block
that is full of computed tokens gets a hash chained over the whole prefix (`hash(parent_hash, tokens)`), and is
findable by it: a new request whose prompt starts with the same full blocks maps them into its table instead of
recomputing them. Freed blocks keep their hash while they wait in the free pool (least recently freed are reused
first), so a later request can still hit them. Forked sequences (n > 1) share blocks by reference count; the first
write into a shared, partially filled block copies it (the copies are handed to the model runner).

After each allocation a sequence's `slots_end` says up to which position its table holds slots of its own (the end
of its last block, which is private then): the scheduler writes below it without asking again, so a decode step
calls `allocate` only when it crosses into a new block. A fork makes the tail shared: both ends drop to 0.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict

from .sequence import Sequence, Status


class Block:
    __slots__ = ("id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int):
        self.id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] = ()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # LRU order: front goes first
        self.cached: dict[int, int] = {}  # prefix hash -> block id
        self.hashes: dict[int, list[int]] = {}  # seq_id -> hashes of its leading full, computed blocks
        self.pending_copies: list[tuple[int, int]] = []  # (src, dst) block copies for the runner (copy-on-write)
        self.hits = 0  # prompt tokens served from the prefix cache
        self.queries = 0  # prompt tokens looked up

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    # ---- prefix cache ----

    def _chain(self, token_ids: list[int], upto: int, start: int = 0, prev: int | None = None) -> list[int]:
        bs, out = self.block_size, []
        for i in range(start, upto):
            prev = hash((prev, tuple(token_ids[i * bs : (i + 1) * bs])))
            out.append(prev)
        return out

    def cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached prefix of `seq` (full blocks, leaving at least one token to compute)."""
        if not self.enable_prefix_caching:
            return []
        bs = self.block_size
        result = []
        for i, h in enumerate(self._chain(seq.token_ids, (seq.num_tokens - 1) // bs)):
            bid = self.cached.get(h)
            if bid is None or self.blocks[bid].token_ids != tuple(seq.token_ids[i * bs : (i + 1) * bs]):
                break
            result.append(bid)
        self.queries += seq.num_prompt_tokens
        self.hits += len(result) * bs
        return result

    def commit(self, seqs: list[Sequence]) -> None:
        """Register the blocks of the running `seqs` that became full of computed tokens, so later requests can hit
        them."""
        if not self.enable_prefix_caching:
            return
        bs, known, running = self.block_size, self.hashes.get, Status.RUNNING
        for seq in seqs:
            if seq.status is not running:
                continue
            hashes = known(seq.seq_id)
            if hashes is None or seq.num_computed // bs > len(hashes):  # else no block filled since (most decodes)
                self._commit(seq)

    def _commit(self, seq: Sequence) -> None:
        """Hash and register one sequence's newly full blocks."""
        full = seq.num_computed // self.block_size
        hashes = self.hashes.setdefault(seq.seq_id, [])
        new = self._chain(seq.token_ids, full, len(hashes), hashes[-1] if hashes else None)
        for i, h in enumerate(new, len(hashes)):
            block = self.blocks[seq.block_table[i]]
            if block.hash is None and h not in self.cached:
                block.hash = h
                block.token_ids = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
                self.cached[h] = block.id
        hashes.extend(new)

    # ---- allocation ----

    def allocate(self, seq: Sequence, num_new_tokens: int, cached: list[int] = ()) -> bool:
        """Give `seq` blocks for `num_new_tokens` more tokens (after mapping `cached` prefix blocks, on first use).

        Returns False, changing nothing, when the free pool is too small.
        """
        table = seq.block_table
        if not cached and num_new_tokens == 1 and seq.num_computed < len(table) * self.block_size \
                and self.blocks[table[seq.num_computed // self.block_size]].ref_count == 1:
            seq.slots_end = len(table) * self.block_size
            return True  # a decode step into its own block's free slot (the common case, checked first)
        start = len(cached) * self.block_size if cached else seq.num_computed
        table_len = len(seq.block_table) + len(cached)
        new_blocks = max(0, self.blocks_needed(start + num_new_tokens) - table_len)
        # the write into a partially filled block that others share must go to a private copy
        cow = bool(seq.block_table) and start % self.block_size != 0 and start < table_len * self.block_size
        cow = cow and self.blocks[seq.block_table[start // self.block_size]].ref_count > 1
        revived = sum(1 for b in cached if self.blocks[b].ref_count == 0)  # cached blocks now in the free pool
        if new_blocks + cow + revived > len(self.free):
            return False
        for b in cached:
            block = self.blocks[b]
            if block.ref_count == 0:
                del self.free[b]
            block.ref_count += 1
            seq.block_table.append(b)
        if cow:
            i = start // self.block_size
            src = seq.block_table[i]
            self.blocks[src].ref_count -= 1
            seq.block_table[i] = self._take()
            self.pending_copies.append((src, seq.block_table[i]))
        seq.block_table.extend(self._take() for _ in range(new_blocks))
        seq.slots_end = len(seq.block_table) * self.block_size
        return True

    def _take(self) -> int:
        bid, _ = self.free.popitem(last=False)
        block = self.blocks[bid]
        if block.hash is not None:  # evict it from the prefix cache
            if self.cached.get(block.hash) == bid:
                del self.cached[block.hash]
            block.hash, block.token_ids = None, ()
        block.ref_count = 1
        return bid

    def free_seq(self, seq: Sequence) -> None:
        """Release the sequence's blocks; the tail goes to the pool first, so prefix blocks are evicted last."""
        for bid in reversed(seq.block_table):
            block = self.blocks[bid]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[bid] = None
        seq.block_table = array("i")
        seq.slots_end = 0
        self.hashes.pop(seq.seq_id, None)

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """`child` shares all of `parent`'s blocks (copy-on-write happens on the first write to a shared block)."""
        child.block_table = array("i", parent.block_table)
        parent.slots_end = child.slots_end = 0  # the last block is shared now: the next write asks `allocate`
        for bid in child.block_table:
            self.blocks[bid].ref_count += 1
        if parent.seq_id in self.hashes:
            self.hashes[child.seq_id] = list(self.hashes[parent.seq_id])

    def take_copies(self) -> list[tuple[int, int]]:
        copies, self.pending_copies = self.pending_copies, []
        return copies
