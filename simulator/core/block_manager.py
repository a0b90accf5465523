"""The paged KV cache's bookkeeping: which fixed-size blocks are free, and who holds the rest.

The block ids handed out here are the physical pages the GPU backend writes to, so real and
simulated runs place KV identically. Semantics follow vLLM v0 (reference-semantics §2.3):
admission reserves blocks for the whole current prompt and keeps a 1% watermark free; a decode
takes one more block only when its context crosses a block boundary.
"""
from __future__ import annotations


class KVCacheTooSmallError(ValueError):
    pass


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int = 16, watermark: float = 0.01):
        if num_blocks < 1:
            raise KVCacheTooSmallError(
                f"the KV cache has {num_blocks} blocks: it cannot hold a single token; set "
                "engine.num_blocks >= 1, or leave it null to size the cache from the GPU's memory")
        if block_size < 1:
            raise ValueError(f"scheduler.block_size={block_size} must be >= 1")
        if not 0.0 <= watermark < 1.0:
            raise ValueError(f"scheduler.watermark={watermark} must be in [0, 1)")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.watermark_blocks = int(watermark * num_blocks)
        # Popping from the end hands out low ids first; freed blocks are reused most-recent-first.
        self._free = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_allocate(self, num_blocks: int) -> bool:
        """Room for `num_blocks` at admission while keeping the watermark free for running decodes."""
        return len(self._free) - num_blocks >= self.watermark_blocks

    def allocate(self, num_blocks: int) -> list[int]:
        free = self._free
        if num_blocks > len(free):
            raise RuntimeError(f"allocate({num_blocks}) with only {len(free)} free blocks")
        taken = free[len(free) - num_blocks:]
        del free[len(free) - num_blocks:]
        return taken

    def free(self, blocks: list[int]) -> None:
        self._free.extend(blocks)
