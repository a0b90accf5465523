"""Attention for a mixed batch of prompt chunks and decode tokens over a paged KV cache.

A batch is a flat list of query tokens, grouped by sequence. Sequence `s` contributes
`num_query` consecutive tokens (a prompt chunk under chunked prefill, or 1 for a decode) that
sit at the end of its `context_len` cached tokens: query `j` is at absolute position
`context_len - num_query + j` and attends causally to keys `0 ..` that position. The keys and
values of this step's tokens are written to the cache (`write_kv`) before attention runs.

`paged_attention` runs a Triton kernel on CUDA tensors. On CPU it falls back to
`reference_attention`, the plain-PyTorch oracle, unless `TRITON_INTERPRET=1` was set before
this module was imported, in which case the same Triton kernel runs under Triton's
interpreter (that is how the kernel is tested without a GPU).

Kernel layout. Grouped-query attention lets every query head of one KV head share the K/V
tiles: one program owns one KV head and a tile of `BLOCK_Q` query tokens, and its
`BLOCK_M = BLOCK_Q * GROUP_PAD` rows are (token, query head of the group) pairs. Decodes
(1 token) then still fill tensor-core rows with the group's heads, and prompt chunks read each
K/V tile once per KV head instead of once per query head. Programs walk the sequence's KV in
`BLOCK_N`-key tiles through the block table with an online (streaming) softmax in fp32. When a
batch has too few programs to fill the GPU (small decode batches), the KV range is split
across programs and a second kernel combines the partial softmax states.

Compiles. Triton compiles one binary per set of compile-time values and specialises integer
arguments by value (1, multiples of 16, other). Every integer that changes from batch to batch
(sequence, tile, token and split counts, the block table's width) is therefore excluded from
specialisation (`do_not_specialize`); the remaining variants are the tile size `BLOCK_Q` (and its
warps and stages), partials on or off, and the combine kernel's `SPLITS_PAD`.
`warm_up_kernels` launches each of them once, so no compile lands in a timed run.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


@dataclass
class AttentionMetadata:
    query_start: torch.Tensor  # int32 [S+1]: offsets of each sequence's query tokens in the batch
    context_lens: torch.Tensor  # int32 [S]: KV length after this step's tokens are written
    block_tables: torch.Tensor  # int32 [S, max_blocks_per_seq]: block ids, padded with 0
    slot_mapping: torch.Tensor  # int64 [T]: cache slot each new token's K/V is written to
    max_query_len: int
    max_context_len: int

    @classmethod
    def build(cls, seqs: list[tuple[int, int, list[int]]], block_size: int,
              device: torch.device | str) -> "AttentionMetadata":
        """`seqs` holds `(start, num_query_tokens, block_table)` per sequence, where `start`
        tokens are already cached; a decode is `(context_len - 1, 1, blocks)`."""
        query_start = [0]
        context_lens = []
        slot_mapping = []
        for start, num_query, blocks in seqs:
            if num_query < 1:
                raise ValueError(f"every sequence needs at least one query token, got {num_query}")
            context_len = start + num_query
            if len(blocks) * block_size < context_len:
                raise ValueError(f"{len(blocks)} blocks of {block_size} slots cannot hold "
                                 f"{context_len} tokens")
            query_start.append(query_start[-1] + num_query)
            context_lens.append(context_len)
            slot_mapping.extend(blocks[pos // block_size] * block_size + pos % block_size
                                for pos in range(start, context_len))
        width = max((len(blocks) for _, _, blocks in seqs), default=0)
        block_tables = [blocks + [0] * (width - len(blocks)) for _, _, blocks in seqs]
        return cls(
            query_start=torch.tensor(query_start, dtype=torch.int32, device=device),
            context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
            block_tables=torch.tensor(block_tables, dtype=torch.int32,
                                      device=device).reshape(len(seqs), width),
            slot_mapping=torch.tensor(slot_mapping, dtype=torch.int64, device=device),
            max_query_len=max((n for _, n, _ in seqs), default=0),
            max_context_len=max(context_lens, default=0),
        )


def write_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
             v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store this step's keys/values `[T, Hkv, D]` into their cache slots."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value)


def reference_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Gather each sequence's KV from its blocks and run dense causal-offset attention in fp32.

    Slow (one SDPA call and a host sync per sequence) but obviously right: the oracle for the
    kernel and the CPU path of `paged_attention`."""
    out = torch.empty_like(query)
    block_size = k_cache.shape[1]
    group = query.shape[1] // k_cache.shape[2]
    query_start = meta.query_start.tolist()
    for seq, context_len in enumerate(meta.context_lens.tolist()):
        q_begin, q_end = query_start[seq], query_start[seq + 1]
        num_query = q_end - q_begin
        blocks = meta.block_tables[seq, :math.ceil(context_len / block_size)].long()
        keys = k_cache[blocks].flatten(0, 1)[:context_len]
        values = v_cache[blocks].flatten(0, 1)[:context_len]
        # Query head h reads KV head h // group.
        keys = keys.repeat_interleave(group, dim=1)
        values = values.repeat_interleave(group, dim=1)
        positions = torch.arange(context_len - num_query, context_len, device=query.device)
        visible = torch.arange(context_len, device=query.device)[None, :] <= positions[:, None]
        # SDPA wants [heads, tokens, head_dim].
        seq_out = F.scaled_dot_product_attention(
            query[q_begin:q_end].float().transpose(0, 1), keys.float().transpose(0, 1),
            values.float().transpose(0, 1), attn_mask=visible, scale=scale)
        out[q_begin:q_end] = seq_out.transpose(0, 1).to(query.dtype)
    return out


@triton.jit
def _attend_kv_tile(q, acc, m_i, l_i, kv_start, kv_hi, row_pos, offs_n, offs_d,
                    k_head_ptr, v_head_ptr, table_row_ptr, stride_kb, stride_ks, qk_scale,
                    KV_BLOCK_SIZE: tl.constexpr, MASKED: tl.constexpr):
    """Fold keys [kv_start, kv_start + BLOCK_N) into the online-softmax state of every row.

    MASKED tiles may reach past `kv_hi` (this program's last key) or past some row's causal
    limit; unmasked tiles are known to be fully visible to all rows, so they skip both checks."""
    keys = kv_start + offs_n
    if MASKED:
        in_range = keys < kv_hi
        block_ids = tl.load(table_row_ptr + keys // KV_BLOCK_SIZE, mask=in_range, other=0)
    else:
        block_ids = tl.load(table_row_ptr + keys // KV_BLOCK_SIZE)
    # int64: block_id * block stride overflows int32 on large caches.
    slot_offsets = block_ids.to(tl.int64) * stride_kb + (keys % KV_BLOCK_SIZE) * stride_ks
    kv_offsets = slot_offsets[:, None] + offs_d[None, :]
    if MASKED:
        k = tl.load(k_head_ptr + kv_offsets, mask=in_range[:, None], other=0.0)
        v = tl.load(v_head_ptr + kv_offsets, mask=in_range[:, None], other=0.0)
    else:
        k = tl.load(k_head_ptr + kv_offsets)
        v = tl.load(v_head_ptr + kv_offsets)

    scores = tl.dot(q, tl.trans(k)) * qk_scale  # log2 domain: exp2 below is the softmax exp
    if MASKED:
        visible = in_range[None, :] & (keys[None, :] <= row_pos[:, None])
        scores = tl.where(visible, scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    # m_i starts at a finite floor, so rows that see no key here keep alpha = 1 and p = 0.
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(scores - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


# The per-batch integers; everything else the kernels take is fixed by the model and the cache.
_PER_BATCH_ARGS = ["num_seqs", "num_tiles", "num_tokens", "num_splits", "stride_bt"]
_COMBINE_PER_BATCH_ARGS = ["num_tokens", "num_splits"]


@triton.jit(do_not_specialize=_PER_BATCH_ARGS)
def _paged_attention_kernel(
        q_ptr, k_cache_ptr, v_cache_ptr, out_ptr,
        part_acc_ptr, part_m_ptr, part_l_ptr,
        query_start_ptr, context_lens_ptr, block_tables_ptr,
        num_seqs, num_tiles, num_tokens, num_splits, qk_scale,
        stride_qt, stride_qh, stride_ot, stride_oh,
        stride_kb, stride_ks, stride_kh, stride_bt,
        NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
        BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
        KV_BLOCK_SIZE: tl.constexpr, WRITE_PARTIALS: tl.constexpr):
    BLOCK_M: tl.constexpr = BLOCK_Q * GROUP_PAD
    ROW_FLOOR: tl.constexpr = -1.0e30  # finite "max so far" so exp2 never sees -inf - -inf

    # Tiles run in reverse order: a sequence's last query tiles see the most keys, so the
    # heaviest programs start first instead of forming a tail.
    pid = tl.program_id(0)
    kv_head = pid % NUM_KV_HEADS
    tile_id = num_tiles - 1 - pid // NUM_KV_HEADS
    split = tl.program_id(1)

    # Sequence s owns tiles [first(s), first(s+1)) with first(s) = (query_start[s] - s) // BLOCK_Q
    # + s: at least ceil(num_query / BLOCK_Q) tiles each, with no host-side prefix sum. Binary
    # search for the last sequence whose first tile is <= tile_id.
    lo = 0
    hi = num_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        first_mid = (tl.load(query_start_ptr + mid) - mid) // BLOCK_Q + mid
        lo = tl.where(first_mid <= tile_id, mid, lo)
        hi = tl.where(first_mid <= tile_id, hi, mid - 1)
    seq = lo
    q_begin = tl.load(query_start_ptr + seq)
    num_query = tl.load(query_start_ptr + seq + 1) - q_begin
    q_tile_start = (tile_id - ((q_begin - seq) // BLOCK_Q + seq)) * BLOCK_Q
    if q_tile_start >= num_query:
        return  # spare tile of a sequence whose tokens the previous tiles already cover
    context_len = tl.load(context_lens_ptr + seq)
    num_cached = context_len - num_query

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    token = q_tile_start + offs_m // GROUP_PAD
    head_in_group = offs_m % GROUP_PAD
    row_valid = (token < num_query) & (head_in_group < GROUP)
    q_head = kv_head * GROUP + head_in_group
    row_pos = num_cached + token
    q_rows = (q_begin + token).to(tl.int64)
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + q_head[:, None] * stride_qh + offs_d[None, :],
                mask=row_valid[:, None], other=0.0)

    # Keys [kv_lo, kv_hi) belong to this split of the tile's causal KV range. Split boundaries
    # are BLOCK_N-aligned so tiles never straddle two splits.
    kv_end = num_cached + tl.minimum(q_tile_start + BLOCK_Q, num_query)
    split_len = tl.cdiv(tl.cdiv(kv_end, num_splits), BLOCK_N) * BLOCK_N
    kv_lo = split * split_len
    kv_hi = tl.minimum(kv_lo + split_len, kv_end)
    # Every row sees keys up to the tile's first position, so whole tiles below it need no mask.
    num_unmasked = tl.maximum(num_cached + q_tile_start + 1 - kv_lo, 0) // BLOCK_N
    unmasked_hi = kv_lo + tl.minimum(num_unmasked, split_len // BLOCK_N) * BLOCK_N

    k_head_ptr = k_cache_ptr + kv_head * stride_kh
    v_head_ptr = v_cache_ptr + kv_head * stride_kh
    table_row_ptr = block_tables_ptr + seq * stride_bt
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], ROW_FLOOR, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for kv_start in range(kv_lo, unmasked_hi, BLOCK_N):
        acc, m_i, l_i = _attend_kv_tile(q, acc, m_i, l_i, kv_start, kv_hi, row_pos, offs_n, offs_d,
                                        k_head_ptr, v_head_ptr, table_row_ptr, stride_kb, stride_ks,
                                        qk_scale, KV_BLOCK_SIZE, False)
    for kv_start in range(unmasked_hi, kv_hi, BLOCK_N):
        acc, m_i, l_i = _attend_kv_tile(q, acc, m_i, l_i, kv_start, kv_hi, row_pos, offs_n, offs_d,
                                        k_head_ptr, v_head_ptr, table_row_ptr, stride_kb, stride_ks,
                                        qk_scale, KV_BLOCK_SIZE, True)

    if WRITE_PARTIALS:
        # Partial state per (split, token, query head), combined by _combine_splits_kernel.
        part_rows = (split * num_tokens + q_rows) * (NUM_KV_HEADS * GROUP) + q_head
        tl.store(part_m_ptr + part_rows, m_i, mask=row_valid)
        tl.store(part_l_ptr + part_rows, l_i, mask=row_valid)
        tl.store(part_acc_ptr + part_rows[:, None] * HEAD_DIM + offs_d[None, :], acc,
                 mask=row_valid[:, None])
    else:
        # Padding rows may have l_i = 0; they are not stored, the guard only avoids 0/0.
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        out_offsets = q_rows[:, None] * stride_ot + q_head[:, None] * stride_oh + offs_d[None, :]
        tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None])


@triton.jit(do_not_specialize=_COMBINE_PER_BATCH_ARGS)
def _combine_splits_kernel(part_acc_ptr, part_m_ptr, part_l_ptr, out_ptr, num_tokens, num_splits,
                           stride_ot, stride_oh, NUM_Q_HEADS: tl.constexpr,
                           HEAD_DIM: tl.constexpr, SPLITS_PAD: tl.constexpr):
    """Merge the per-split softmax states of one (token, query head) into the final output."""
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    split_valid = offs_s < num_splits
    rows = (offs_s * num_tokens + token) * NUM_Q_HEADS + head
    m = tl.load(part_m_ptr + rows, mask=split_valid, other=float("-inf"))
    l = tl.load(part_l_ptr + rows, mask=split_valid, other=0.0)
    acc = tl.load(part_acc_ptr + rows[:, None] * HEAD_DIM + offs_d[None, :],
                  mask=split_valid[:, None], other=0.0)
    # Split 0 always holds key 0, so the max is finite and empty splits get weight 0.
    weight = tl.exp2(m - tl.max(m, 0))
    out = tl.sum(acc * weight[:, None], 0) / tl.sum(l * weight, 0)
    tl.store(out_ptr + token * stride_ot + head * stride_oh + offs_d,
             out.to(out_ptr.dtype.element_ty))


# Whether the kernels above were defined for Triton's interpreter (TRITON_INTERPRET=1 at import).
KERNELS_INTERPRETED = not isinstance(_paged_attention_kernel, triton.runtime.JITFunction)

# Launch shape. Prompt chunks use 128-row tiles (tensor-core friendly, 8 warps); pure decode
# batches use the smallest tile tl.dot accepts (16 rows) since each sequence has one token.
_PREFILL_ROWS = 128
_DECODE_ROWS = 16
_BLOCK_N = 64
# KV splitting: aim for a few resident programs per SM, but keep each split long enough that
# streaming it outweighs the combine step.
_PROGRAMS_PER_SM = 4
_MIN_KEYS_PER_SPLIT = 256
_MAX_SPLITS = 16


# Multiply-adds compile to fused FMAs, as Triton has always done by default; said explicitly since
# Triton 3.9 warns that its default will change.
FUSED_FP = {"enable_fp_fusion": True}


def kernel_config(num_q_heads: int, num_kv_heads: int, head_dim: int, block_size: int,
                  max_query_len: int) -> dict:
    """Compile-time parameters and launch options of `_paged_attention_kernel` for a batch."""
    group = num_q_heads // num_kv_heads
    group_pad = triton.next_power_of_2(group)
    min_tokens = max(1, _DECODE_ROWS // group_pad)
    if max_query_len == 1:
        block_q = min_tokens
    else:
        block_q = min(max(triton.next_power_of_2(max_query_len), min_tokens),
                      max(1, _PREFILL_ROWS // group_pad))
    large_tile = block_q * group_pad >= _PREFILL_ROWS
    return dict(NUM_KV_HEADS=num_kv_heads, GROUP=group, GROUP_PAD=group_pad, BLOCK_Q=block_q,
                BLOCK_N=_BLOCK_N, HEAD_DIM=head_dim, KV_BLOCK_SIZE=block_size,
                num_warps=8 if large_tile else 4, num_stages=2 if large_tile else 3, **FUSED_FP)


def block_q_values(num_q_heads: int, num_kv_heads: int) -> list[int]:
    """Every `BLOCK_Q` that `kernel_config` can choose for these heads, smallest first."""
    group_pad = triton.next_power_of_2(num_q_heads // num_kv_heads)
    smallest, largest = max(1, _DECODE_ROWS // group_pad), max(1, _PREFILL_ROWS // group_pad)
    return [1 << i for i in range(smallest.bit_length() - 1, largest.bit_length())]


@functools.cache
def multiprocessor_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def auto_num_kv_splits(num_programs: int, max_context_len: int, num_sms: int | None) -> int:
    """How many programs share one KV range: enough to give `num_sms` SMs a few programs each
    (1 where there is no GPU to fill: `num_sms` None)."""
    if num_sms is None:
        return 1
    target = _PROGRAMS_PER_SM * num_sms
    if num_programs >= target:
        return 1
    return max(1, min(triton.cdiv(target, num_programs), max_context_len // _MIN_KEYS_PER_SPLIT,
                      _MAX_SPLITS))


def triton_paged_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           meta: AttentionMetadata, scale: float, *,
                           out: torch.Tensor | None = None,
                           num_kv_splits: int | None = None,
                           num_sms: int | None = None) -> torch.Tensor:
    """The Triton path of `paged_attention`. `out` (default: new tensor) receives the result;
    `num_kv_splits` overrides the automatic choice of how many programs share one KV range, and
    `num_sms` the SM count that choice targets (default: the GPU's; no splits off a GPU)."""
    if not (query.is_cuda or KERNELS_INTERPRETED):
        raise ValueError("the Triton kernel needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                         "backend.attention is imported")
    num_tokens, num_q_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads} query heads is not a multiple of {num_kv_heads} KV heads")
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim={head_dim}: the kernel needs a power of two >= 16")
    if out is None:
        out = torch.empty_like(query)
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1:
        raise ValueError("K and V caches must share one layout with contiguous head_dim")
    if query.stride(-1) != 1 or out.stride(-1) != 1:
        raise ValueError("query and out need contiguous head_dim")
    num_seqs = meta.context_lens.shape[0]
    if num_tokens == 0:
        return out

    config = kernel_config(num_q_heads, num_kv_heads, head_dim, block_size, meta.max_query_len)
    # Each sequence gets one spare tile at most; see the tile search in the kernel.
    num_tiles = (num_tokens - num_seqs) // config["BLOCK_Q"] + num_seqs
    num_programs = num_tiles * num_kv_heads
    if num_sms is None and query.is_cuda:
        num_sms = multiprocessor_count(query.device.index or 0)
    num_splits = num_kv_splits or auto_num_kv_splits(num_programs, meta.max_context_len, num_sms)

    if num_splits > 1:
        part_acc = torch.empty((num_splits, num_tokens, num_q_heads, head_dim),
                               dtype=torch.float32, device=query.device)
        part_m = torch.empty((num_splits, num_tokens, num_q_heads), dtype=torch.float32,
                             device=query.device)
        part_l = torch.empty_like(part_m)
    else:  # unused by the kernel; any tensor satisfies the pointer arguments
        part_acc = part_m = part_l = out

    _paged_attention_kernel[(num_programs, num_splits)](
        query, k_cache, v_cache, out, part_acc, part_m, part_l,
        meta.query_start, meta.context_lens, meta.block_tables,
        num_seqs, num_tiles, num_tokens, num_splits, scale * math.log2(math.e),
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), meta.block_tables.stride(0),
        WRITE_PARTIALS=num_splits > 1, **config)
    if num_splits > 1:
        _combine_splits_kernel[(num_tokens, num_q_heads)](
            part_acc, part_m, part_l, out, num_tokens, num_splits, out.stride(0), out.stride(1),
            NUM_Q_HEADS=num_q_heads, HEAD_DIM=head_dim,
            SPLITS_PAD=triton.next_power_of_2(num_splits), num_warps=4, **FUSED_FP)
    return out


def paged_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Attention of a flat batch `query [T, Hq, D]` over the paged cache -> `[T, Hq, D]`."""
    if query.is_cuda or KERNELS_INTERPRETED:
        return triton_paged_attention(query, k_cache, v_cache, meta, scale)
    return reference_attention(query, k_cache, v_cache, meta, scale)


def warm_up_kernels(k_cache: torch.Tensor, v_cache: torch.Tensor, num_q_heads: int,
                    scale: float) -> int:
    """Launch every kernel variant a batch can reach on this cache (each `BLOCK_Q`, with and
    without partials, every `SPLITS_PAD` up to the most splits), so that Triton compiles them now
    and no compile happens in a timed run. Reads the cache, writes nothing to it; returns the
    number of launches."""
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    device = k_cache.device
    block_qs = block_q_values(num_q_heads, num_kv_heads)
    # (query tokens, splits): a batch of `block_q` tokens gets tile `block_q`; 1 split writes the
    # output, 2 write partials (and the combine's SPLITS_PAD 2); 4, 8, ... the other paddings.
    launches = [(block_q, splits) for block_q in block_qs for splits in (1, 2)]
    launches += [(block_qs[0], 1 << i) for i in range(2, (_MAX_SPLITS - 1).bit_length() + 1)]
    for num_query, num_splits in launches:
        table = [b % num_blocks for b in range(-(-num_query // block_size))]
        meta = AttentionMetadata.build([(0, num_query, table)], block_size, device)
        query = torch.zeros((num_query, num_q_heads, head_dim), dtype=k_cache.dtype, device=device)
        triton_paged_attention(query, k_cache, v_cache, meta, scale, num_kv_splits=num_splits)
    return len(launches)
