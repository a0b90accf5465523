"""The shape of a Llama-architecture decoder, and what it costs in memory per GPU.

Every layer of the project reads the model through this one description: the KV capacity
(`kv_capacity.py`), the cost models (`profiler/`) and the GPU model runner (`backend/`).
Sizes follow Megatron tensor parallelism: attention heads, KV heads, the MLP width and the
vocabulary are split across `tp` ranks; norms are replicated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .config_fields import from_mapping


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float = 10000.0
    max_position: int = 4096
    dtype_bytes: int = 2

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "ModelSpec":
        spec = from_mapping(cls, cfg, "model", positive=(
            "num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
            "intermediate_size", "vocab_size", "dtype_bytes"))
        if spec.num_heads % spec.num_kv_heads:
            raise ValueError(f"model.num_heads={spec.num_heads} is not a multiple of "
                             f"model.num_kv_heads={spec.num_kv_heads}")
        return spec

    def check_tp(self, tp: int) -> None:
        """Megatron sharding needs every split dimension to divide evenly by `tp`."""
        if tp < 1:
            raise ValueError(f"parallel.tp={tp} must be >= 1")
        for name in ("num_heads", "num_kv_heads", "intermediate_size", "vocab_size"):
            if getattr(self, name) % tp:
                raise ValueError(f"model.{name}={getattr(self, name)} is not divisible by "
                                 f"parallel.tp={tp}; choose a tensor-parallel degree that divides it")

    # ---- per-GPU shard sizes -------------------------------------------------------------
    def heads_per_rank(self, tp: int) -> int:
        return self.num_heads // tp

    def kv_heads_per_rank(self, tp: int) -> int:
        return self.num_kv_heads // tp

    def layer_params_per_rank(self, tp: int) -> int:
        h, d = self.hidden_size, self.head_dim
        qkv = h * (self.num_heads + 2 * self.num_kv_heads) * d // tp
        out = self.num_heads * d * h // tp
        mlp = 3 * h * self.intermediate_size // tp  # gate, up and down projections
        norms = 2 * h
        return qkv + out + mlp + norms

    def params_per_rank(self, tp: int) -> int:
        embed_and_head = 2 * self.vocab_size * self.hidden_size // tp  # untied, vocab-parallel
        return self.num_layers * self.layer_params_per_rank(tp) + embed_and_head + self.hidden_size

    def weight_bytes_per_rank(self, tp: int) -> int:
        return self.params_per_rank(tp) * self.dtype_bytes

    def kv_bytes_per_token_per_rank(self, tp: int) -> int:
        """K and V of one token, all layers, on one rank."""
        return 2 * self.num_layers * self.kv_heads_per_rank(tp) * self.head_dim * self.dtype_bytes
