"""What the profiler measures: every operation of one TP rank's forward pass, at the rank's shard shapes.

`profiler/grid.py` lists the points (op, shape) of a grid. `ShardOps` builds the callables that
time them, from the backend's own
modules and functions: a `backend.model.LlamaShard` with one decoder layer (random weights from
`backend.weights`), `backend.attention.paged_attention` / `write_kv` over a
`backend.kv_cache.PagedKVCache`, `backend.model.apply_rope` / `rope_cos_sin`, and
`LlamaShard.embed_tokens`. Where `DecoderLayer.forward` calls torch directly, the same torch call is
timed on the layer's own parameters (`TORCH_CALLS` says which); whole layers are also timed, to
check that the ops add up to what the backend runs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from backend.attention import AttentionMetadata, paged_attention, write_kv
from backend.collectives import Emulated, SingleGPU
from backend.kv_cache import PagedKVCache
from backend.model import RMS_EPS, LlamaShard, apply_rope, rope_cos_sin
from backend.weights import init_random_weights
from simulator.core.model_spec import ModelSpec

from .fit import ATTENTION, DECODER_LAYER, LINEAR_OPS, LINEAR_PROBE, STREAM_OPS, linear_shapes
from .grid import Point

# Ops that backend/model.py (or runner.py) runs as inline torch calls: timed as the identical call.
TORCH_CALLS = {
    "qkv_proj": "F.linear(h, layer.qkv)",
    "o_proj": "F.linear(attn, layer.o_proj)",
    "gate_up_proj": "F.linear(h, layer.gate_up)",
    "down_proj": "F.linear(silu(gate) * up, layer.down)",
    "lm_head": "F.linear(x, shard.lm_head).float()",
    "linear_probe": "F.linear(x, w) at extra shapes (not a backend op: calibrates the GEMM law)",
    "rmsnorm": "x + residual, then F.rms_norm(x, (hidden,), layer.post_norm, RMS_EPS)",
    "silu_mul": "F.silu(gate) * up on the chunks of the gate-up output",
    "final_norm": "F.rms_norm(x[sample_idx], (hidden,), shard.final_norm, RMS_EPS)",
    "sampling": "logits.argmax(dim=-1) on the gathered fp32 logits (backend/runner.py, greedy)",
}
class ShardOps:
    """The callables that run each point on one rank's shard (rank 0) on `device`.

    Inputs are allocated once for the largest point and sliced, so that timing never allocates
    them; the KV cache holds `max_kv_tokens` tokens of one layer, filled with random values."""

    def __init__(self, model: ModelSpec, tp: int, grid: Mapping[str, Any], device: Any,
                 block_size: int, seed: int):
        if model.dtype_bytes != 2:
            raise ValueError(f"model.dtype_bytes={model.dtype_bytes}: the backend runs bf16 (2 bytes); set it to 2")
        self.model, self.tp, self.device, self.block_size = model, tp, torch.device(device), block_size
        self.dtype = torch.bfloat16
        self.comm = SingleGPU(self.device) if tp == 1 else Emulated(tp, self.device, "omit")
        # One decoder layer is all the profile needs: every layer runs the same kernels.
        self.shard = LlamaShard(dataclasses.replace(model, num_layers=1), tp, 0, self.comm, self.dtype, self.device)
        init_random_weights(self.shard, seed, "per_rank")
        self.layer = layer = self.shard.layers[0]
        ran = {"qkv_proj": layer.qkv, "o_proj": layer.o_proj, "gate_up_proj": layer.gate_up,
               "down_proj": layer.down, "lm_head": self.shard.lm_head}
        self.weights = {}
        for op, (k_in, k_out) in linear_shapes(model, tp).items():
            if tuple(ran[op].shape) != (k_out, k_in):
                raise RuntimeError(f"backend {op} weight is {tuple(ran[op].shape)}, profiler.fit.linear_shapes "
                                   f"says {(k_out, k_in)}: align profiler/fit.py with backend/model.py")
            self.weights[op] = ran[op]

        self._gen = gen = torch.Generator(device=self.device).manual_seed(seed)
        randn = self._randn
        tokens, sampled = grid["max_tokens"], grid["max_sampled"]
        h, d = model.hidden_size, model.head_dim
        self.heads, self.kv_heads = model.heads_per_rank(tp), model.kv_heads_per_rank(tp)
        inter = model.intermediate_size // tp
        self.x, self.residual = randn(tokens, h), randn(tokens, h)
        self.qkv_out = randn(tokens, (self.heads + 2 * self.kv_heads) * d)
        self.k_roped = randn(tokens, self.kv_heads, d)
        self.attn_out = randn(tokens, self.heads * d)
        self.gate_up_out = randn(tokens, 2 * inter)
        self.mlp_out = randn(tokens, inter)
        self.logits = randn(sampled, model.vocab_size, dtype=torch.float32)
        self.token_ids = torch.randint(0, model.vocab_size, (tokens,), generator=gen, device=self.device)
        self.positions = torch.randint(0, model.max_position, (tokens,), generator=gen, device=self.device)
        self.cos, self.sin = rope_cos_sin(self.positions, d, model.rope_theta, self.dtype)
        self.sample_idx = torch.randperm(tokens, generator=gen, device=self.device)[:sampled]
        longest_batch = max(grid["decode_batches"]) + 4
        self.cache = PagedKVCache(1, grid["max_kv_tokens"] // block_size + longest_batch + 1, block_size,
                                  self.kv_heads, d, self.dtype, self.device)
        self.cache.k.normal_(generator=gen)
        self.cache.v.normal_(generator=gen)
        self.slots = torch.randperm(self.cache.num_blocks * block_size, generator=gen, device=self.device)[:tokens]
        self.rng = np.random.default_rng(seed)

    def _randn(self, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Random inputs (never zeros: kernels can run faster on them than on real data)."""
        return torch.randn(*shape, generator=self._gen, dtype=dtype or self.dtype, device=self.device)

    def runner(self, point: Point) -> Callable[[], Any]:
        """A no-argument callable that runs `point` once (inputs prepared here, not timed)."""
        m, n = self.model, point.shape["tokens"]
        d, h = m.head_dim, m.hidden_size
        q_size, kv_size = self.heads * d, self.kv_heads * d
        if point.op == LINEAR_PROBE:
            k_in, k_out = point.shape["k_in"], point.shape["k_out"]
            w, x = self._randn(k_out, k_in), self._randn(n, k_in)
            return lambda: F.linear(x, w)
        if point.op in LINEAR_OPS:
            w = self.weights[point.op]
            source = {"qkv_proj": self.x, "o_proj": self.attn_out, "gate_up_proj": self.x,
                      "down_proj": self.mlp_out, "lm_head": self.x}[point.op][:n]
            if point.op == "lm_head":
                return lambda: F.linear(source, w).float()
            return lambda: F.linear(source, w)
        if point.op == "rmsnorm":
            x, r, weight = self.x[:n], self.residual[:n], self.layer.post_norm
            return lambda: F.rms_norm(x + r, (h,), weight, RMS_EPS)
        if point.op == "silu_mul":
            gate, up = self.gate_up_out[:n].chunk(2, dim=-1)
            return lambda: F.silu(gate) * up
        if point.op == "rope":
            q, k, _ = self.qkv_out[:n].split((q_size, kv_size, kv_size), dim=-1)
            q, k, cos, sin = q.view(n, self.heads, d), k.view(n, self.kv_heads, d), self.cos[:n], self.sin[:n]
            return lambda: (apply_rope(q, cos, sin), apply_rope(k, cos, sin))
        if point.op == "kv_cache_write":
            v = self.qkv_out[:n].split((q_size, kv_size, kv_size), dim=-1)[2].reshape(n, self.kv_heads, d)
            k, slots = self.k_roped[:n], self.slots[:n]
            return lambda: write_kv(k, v, self.cache.k[0], self.cache.v[0], slots)
        if point.op == "embedding":
            ids = self.token_ids[:n]
            return lambda: self.shard.embed_tokens(ids)
        if point.op == "rope_cos_sin":
            positions = self.positions[:n]
            return lambda: rope_cos_sin(positions, d, m.rope_theta, self.dtype)
        if point.op == "final_norm":
            idx, weight = self.sample_idx[:n], self.shard.final_norm
            return lambda: F.rms_norm(self.x[idx], (h,), weight, RMS_EPS)
        if point.op == "sampling":
            logits = self.logits[:n]
            return lambda: logits.argmax(dim=-1)
        if point.op in (ATTENTION, DECODER_LAYER):
            return self._batch_runner(point)
        raise ValueError(f"op={point.op!r} cannot be measured; known: {list(LINEAR_OPS + STREAM_OPS)}, "
                         f"{LINEAR_PROBE!r}, {ATTENTION!r}, {DECODER_LAYER!r}")

    def _batch_runner(self, point: Point) -> Callable[[], Any]:
        """Attention (or a whole layer) over `point.seqs`, on blocks scattered through the cache
        like a long-running server's."""
        bs = self.block_size
        needed = [-(-(start + n) // bs) for start, n in point.seqs]
        blocks = self.rng.permutation(self.cache.num_blocks)[:sum(needed)].tolist()
        seqs, at = [], 0
        for (start, n), count in zip(point.seqs, needed):
            seqs.append((start, n, blocks[at:at + count]))
            at += count
        meta = AttentionMetadata.build(seqs, bs, self.device)
        k_cache, v_cache = self.cache.k[0], self.cache.v[0]
        d, tokens = self.model.head_dim, point.shape["tokens"]
        if point.op == ATTENTION:
            q = self._randn(tokens, self.heads, d)
            return lambda: paged_attention(q, k_cache, v_cache, meta, d ** -0.5)
        positions = torch.tensor([start + j for start, n in point.seqs for j in range(n)], device=self.device)
        cos, sin = rope_cos_sin(positions, d, self.model.rope_theta, self.dtype)
        x = self._randn(tokens, self.model.hidden_size)
        return lambda: self.layer(x, cos, sin, k_cache, v_cache, meta, self.comm)
