"""A Llama-architecture decoder, one tensor-parallel rank's shard of it (Megatron sharding).

Per layer: RMSNorm -> fused QKV projection (column-parallel: this rank's query and KV heads) ->
RoPE -> KV written into the paged cache -> paged attention -> output projection (row-parallel,
all-reduce) -> RMSNorm -> fused gate/up projection (column-parallel) -> SiLU(gate)*up -> down
projection (row-parallel, all-reduce). The embedding and the LM head are vocab-parallel; logits
are computed only at the positions that sample and gathered across ranks.

Each parameter of the shard is described by its `Part`s: the full-model matrices it is cut from
and the dimension they are split along. `weights.py` fills them; the layout is what makes a
sharded model equal to slicing the full one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from simulator.core.model_spec import ModelSpec

from .attention import AttentionMetadata, paged_attention, write_kv
from .kv_cache import PagedKVCache

RMS_EPS = 1e-6  # Yi/Llama-2 config value


@dataclass(frozen=True)
class Part:
    """A full-model matrix, split along `shard_dim` across ranks (None: replicated)."""
    full_shape: tuple[int, ...]
    shard_dim: int | None
    init: str  # "linear" (fan-in scaled), "norm" (around 1) or "embed" (unit normal)

    def shard_shape(self, tp: int) -> tuple[int, ...]:
        shape = list(self.full_shape)
        if self.shard_dim is not None:
            shape[self.shard_dim] //= tp
        return tuple(shape)


class ShardedModule(nn.Module):
    """A module whose parameters are built from Parts (concatenated along dim 0)."""

    def __init__(self, tp: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.tp, self.dtype, self.device = tp, dtype, device
        self.layout: dict[str, tuple[Part, ...]] = {}

    def param(self, name: str, *parts: Part) -> None:
        shapes = [p.shard_shape(self.tp) for p in parts]
        shape = (sum(s[0] for s in shapes),) + shapes[0][1:]
        self.register_parameter(name, nn.Parameter(
            torch.empty(shape, dtype=self.dtype, device=self.device), requires_grad=False))
        self.layout[name] = parts


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos and sin of the rotary angles, [tokens, head_dim] each (HF Llama convention)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device,
                                            dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [tokens, heads, head_dim]; rotates the two halves of each head."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


class DecoderLayer(ShardedModule):
    def __init__(self, spec: ModelSpec, tp: int, dtype: torch.dtype, device: torch.device):
        super().__init__(tp, dtype, device)
        h, d, inter = spec.hidden_size, spec.head_dim, spec.intermediate_size
        self.num_heads, self.num_kv_heads = spec.heads_per_rank(tp), spec.kv_heads_per_rank(tp)
        self.head_dim = d
        self.param("input_norm", Part((h,), None, "norm"))
        self.param("qkv", Part((spec.num_heads * d, h), 0, "linear"),
                   Part((spec.num_kv_heads * d, h), 0, "linear"),
                   Part((spec.num_kv_heads * d, h), 0, "linear"))
        self.param("o_proj", Part((h, spec.num_heads * d), 1, "linear"))
        self.param("post_norm", Part((h,), None, "norm"))
        self.param("gate_up", Part((inter, h), 0, "linear"), Part((inter, h), 0, "linear"))
        self.param("down", Part((h, inter), 1, "linear"))

    def forward(self, x, cos, sin, k_cache, v_cache, meta: AttentionMetadata, comm) -> torch.Tensor:
        tokens, d = x.shape[0], self.head_dim
        q_size, kv_size = self.num_heads * d, self.num_kv_heads * d
        h = F.rms_norm(x, x.shape[-1:], self.input_norm, RMS_EPS)
        qk, v = F.linear(h, self.qkv).split((q_size + kv_size, kv_size), dim=-1)
        qk = apply_rope(qk.view(tokens, self.num_heads + self.num_kv_heads, d), cos, sin)  # q, k at once
        q, k = qk[:, :self.num_heads], qk[:, self.num_heads:]
        write_kv(k, v.view(tokens, self.num_kv_heads, d), k_cache, v_cache, meta.slot_mapping)
        attn = paged_attention(q, k_cache, v_cache, meta, d ** -0.5)
        x = x + comm.all_reduce(F.linear(attn.reshape(tokens, q_size), self.o_proj))
        h = F.rms_norm(x, x.shape[-1:], self.post_norm, RMS_EPS)
        gate, up = F.linear(h, self.gate_up).chunk(2, dim=-1)
        return x + comm.all_reduce(F.linear(F.silu(gate) * up, self.down))


class LlamaShard(ShardedModule):
    """Rank `rank` of a `tp`-way sharded model; `comm` provides the collectives."""

    def __init__(self, spec: ModelSpec, tp: int, rank: int, comm, dtype: torch.dtype,
                 device: torch.device):
        super().__init__(tp, dtype, device)
        spec.check_tp(tp)
        self.spec, self.rank, self.comm = spec, rank, comm
        h, v = spec.hidden_size, spec.vocab_size
        self.vocab_start = rank * v // tp
        self.vocab_end = self.vocab_start + v // tp
        self.param("embed", Part((v, h), 0, "embed"))
        self.layers = nn.ModuleList(DecoderLayer(spec, tp, dtype, device)
                                    for _ in range(spec.num_layers))
        self.param("final_norm", Part((h,), None, "norm"))
        self.param("lm_head", Part((v, h), 0, "linear"))

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        if self.tp == 1:
            return F.embedding(token_ids, self.embed)
        local = token_ids - self.vocab_start
        mine = (token_ids >= self.vocab_start) & (token_ids < self.vocab_end)
        x = F.embedding(local.clamp(0, self.embed.shape[0] - 1), self.embed)
        return self.comm.all_reduce(x * mine[:, None].to(x.dtype))

    @torch.inference_mode()
    def forward(self, token_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv: PagedKVCache, sample_idx: torch.Tensor) -> torch.Tensor:
        """Logits (fp32, full vocabulary after the gather) at the `sample_idx` token positions."""
        x = self.embed_tokens(token_ids)
        cos, sin = rope_cos_sin(positions, self.spec.head_dim, self.spec.rope_theta, self.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, kv.k[i], kv.v[i], meta, self.comm)
        x = F.rms_norm(x[sample_idx], x.shape[-1:], self.final_norm, RMS_EPS)
        return self.comm.all_gather(F.linear(x, self.lm_head).float())
