"""Paged-attention kernel against the PyTorch reference on one Yi-34B TP-2 shard (GPU only).

    python -m bench.attention_bench

Shard: 28 query heads, 4 KV heads, head_dim 128, bf16, 16-token blocks scattered over the cache.
Batches: decodes (batch 32, 64, 128, every sequence at KV length 2,048), a 1,536-token prompt
chunk from position 0 and from position 1,024, and 64 decodes mixed with the resumed chunk.
Each time is the median over repeated calls (triton.testing.do_bench). Reported rates use the
bytes a perfect kernel must move (K/V of every sequence once, plus queries and outputs) and
the causal attention FLOPs (4 * head_dim per visible query-key pair and query head).
Without a GPU it says so and exits 0.
"""
from __future__ import annotations

import math
import sys

import torch

from backend.attention import AttentionMetadata, reference_attention, triton_paged_attention
from backend.kv_cache import PagedKVCache

NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 28, 4, 128, 16
DTYPE = torch.bfloat16
KV_LEN, CHUNK = 2048, 1536

BATCHES = {
    "decode x32 @2048": [(KV_LEN - 1, 1)] * 32,
    "decode x64 @2048": [(KV_LEN - 1, 1)] * 64,
    "decode x128 @2048": [(KV_LEN - 1, 1)] * 128,
    "chunk 1536 @0": [(0, CHUNK)],
    "chunk 1536 @1024": [(1024, CHUNK)],
    "64 decodes + chunk @1024": [(KV_LEN - 1, 1)] * 64 + [(1024, CHUNK)],
}


def make_batch(seqs: list[tuple[int, int]]):
    """Random query and cache contents for `(start, num_query)` sequences on shuffled blocks."""
    blocks_needed = [math.ceil((start + n) / BLOCK_SIZE) for start, n in seqs]
    ids = torch.randperm(sum(blocks_needed)).tolist()
    tables = []
    for count in blocks_needed:
        tables.append(ids[:count])
        ids = ids[count:]
    cache = PagedKVCache(1, sum(blocks_needed), BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, DTYPE, "cuda")
    cache.k[0].normal_()
    cache.v[0].normal_()
    meta = AttentionMetadata.build([(start, n, table) for (start, n), table in zip(seqs, tables)],
                                   BLOCK_SIZE, "cuda")
    num_tokens = sum(n for _, n in seqs)
    query = torch.randn(num_tokens, NUM_Q_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    return query, cache.k[0], cache.v[0], meta


def ideal_bytes(seqs: list[tuple[int, int]]) -> int:
    kv = sum(start + n for start, n in seqs) * NUM_KV_HEADS * HEAD_DIM * 2
    q_and_out = sum(n for _, n in seqs) * NUM_Q_HEADS * HEAD_DIM * 2
    return (kv + q_and_out) * DTYPE.itemsize


def attention_flops(seqs: list[tuple[int, int]]) -> int:
    # Query j of a sequence sees start + j + 1 keys.
    pairs = sum(n * start + n * (n + 1) // 2 for start, n in seqs)
    return 4 * HEAD_DIM * NUM_Q_HEADS * pairs


def main() -> int:
    if not torch.cuda.is_available():
        print("attention_bench: no CUDA device; the Triton kernel benchmark needs a GPU. Skipped.")
        return 0
    from triton.testing import do_bench

    torch.manual_seed(0)
    scale = HEAD_DIM ** -0.5
    print(f"{torch.cuda.get_device_name()}: {NUM_Q_HEADS} q heads, {NUM_KV_HEADS} kv heads, "
          f"head_dim {HEAD_DIM}, {DTYPE}, block {BLOCK_SIZE}")
    print(f"{'batch':<26}{'kernel ms':>10}{'GB/s':>9}{'TFLOP/s':>9}{'reference ms':>14}"
          f"{'speed-up':>10}{'rel err':>10}")
    for name, seqs in BATCHES.items():
        query, k_cache, v_cache, meta = make_batch(seqs)
        kernel_ms = do_bench(lambda: triton_paged_attention(query, k_cache, v_cache, meta, scale),
                             return_mode="median")
        reference_ms = do_bench(lambda: reference_attention(query, k_cache, v_cache, meta, scale),
                                warmup=5, rep=50, return_mode="median")
        out = triton_paged_attention(query, k_cache, v_cache, meta, scale).float()
        expected = reference_attention(query, k_cache, v_cache, meta, scale).float()
        rel_err = ((out - expected).abs().max() / expected.abs().max()).item()
        gbps = ideal_bytes(seqs) / kernel_ms / 1e6
        tflops = attention_flops(seqs) / kernel_ms / 1e9
        print(f"{name:<26}{kernel_ms:>10.3f}{gbps:>9.0f}{tflops:>9.1f}{reference_ms:>14.3f}"
              f"{reference_ms / kernel_ms:>9.1f}x{rel_err:>10.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
