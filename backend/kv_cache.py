"""One rank's paged KV cache: fixed-size blocks of token slots, for every layer.

The scheduler owns placement: it hands each request a list of block ids, and the backend
only reads and writes the slots those ids name. A slot is `block_id * block_size + offset`.
Keys and values of all layers live in a single allocation so that the cache is carved out
of GPU memory once, at start-up, and never fragments.
"""
from __future__ import annotations

import torch


class PagedKVCache:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device | str):
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        # Zero-filled rather than empty: the attention kernels never read a slot that was not
        # written, but zeros keep a stray read from turning into NaN while debugging.
        storage = torch.zeros((2, num_layers, num_blocks, block_size, num_kv_heads, head_dim),
                              dtype=dtype, device=device)
        # k[layer] and v[layer] are contiguous [num_blocks, block_size, num_kv_heads, head_dim].
        self.k = storage[0]
        self.v = storage[1]

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                        dtype: torch.dtype) -> int:
        """Memory one block id costs across all layers, keys and values together."""
        return 2 * num_layers * block_size * num_kv_heads * head_dim * dtype.itemsize
