"""The shape of a decoder-only transformer, and what it costs in memory per GPU.

Every layer of the project reads the model through this one description: the KV capacity
(`kv_capacity.py`), the cost models (`profiler/`) and the GPU model runner (`backend/`).
Sizes follow Megatron tensor parallelism: attention heads, KV heads, the MLP width and the
vocabulary are split across `tp` ranks; norms are replicated.

The defaults describe the Llama architecture. Models that differ in ways that change cost say so
(`mlp`, `norm`, `qkv_bias`, `parallel_block`, `rotary_dim`): Phi-2, for one, has a plain GELU MLP,
LayerNorm, QKV biases, attention and MLP side by side from one norm, and rotary embeddings on 32 of
its 80 head dimensions. The cost models price each of these; the GPU backend runs Llama only and
refuses the rest (`is_llama`).
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
    mlp: str = "gated_silu"       # gated_silu: gate and up fused (2 x intermediate), SiLU-and-multiply; gelu: up, GELU
    norm: str = "rmsnorm"         # rmsnorm | layernorm (same traffic; named so reports say what ran)
    qkv_bias: bool = False        # biases on the QKV projection (Qwen, Phi-2)
    parallel_block: bool = False  # attention and MLP from one norm, one all-reduce per layer (Phi-2, GPT-J)
    # Head dimensions that get rotary embeddings (null: all). Costs do not change with it: the
    # public measurements of Phi-2 rotate whole heads (Vidur's profiler passes rotary_dim=head_dim).
    rotary_dim: int | None = None

    MLPS = ("gated_silu", "gelu")
    NORMS = ("rmsnorm", "layernorm")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "ModelSpec":
        spec = from_mapping(cls, cfg, "model", positive=(
            "num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
            "intermediate_size", "vocab_size", "dtype_bytes"))
        if spec.num_heads % spec.num_kv_heads:
            raise ValueError(f"model.num_heads={spec.num_heads} is not a multiple of "
                             f"model.num_kv_heads={spec.num_kv_heads}")
        if spec.mlp not in cls.MLPS:
            raise ValueError(f"model.mlp={spec.mlp!r} is not a known MLP; use one of {list(cls.MLPS)}")
        if spec.norm not in cls.NORMS:
            raise ValueError(f"model.norm={spec.norm!r} is not a known norm; use one of {list(cls.NORMS)}")
        if spec.rotary_dim is not None and not 0 < spec.rotary_dim <= spec.head_dim:
            raise ValueError(f"model.rotary_dim={spec.rotary_dim} must be in 1..head_dim={spec.head_dim} "
                             "(or null for all of it)")
        return spec

    @property
    def gated_mlp(self) -> bool:
        return self.mlp == "gated_silu"

    @property
    def is_llama(self) -> bool:
        """The architecture the GPU backend implements (`backend/model.py`)."""
        return (self.mlp, self.norm, self.qkv_bias, self.parallel_block) == ("gated_silu", "rmsnorm", False, False) \
            and self.rotary_dim in (None, self.head_dim)

    def architecture(self) -> str:
        """How this model differs from Llama, in words ("Llama" if it does not)."""
        parts = [f"{self.mlp} MLP" if not self.gated_mlp else "", "LayerNorm" if self.norm == "layernorm" else "",
                 "QKV bias" if self.qkv_bias else "", "parallel attention+MLP" if self.parallel_block else "",
                 f"rotary on {self.rotary_dim}/{self.head_dim} dims" if self.rotary_dim not in (None, self.head_dim)
                 else ""]
        parts = [p for p in parts if p]
        return "Llama" if not parts else "Llama-like with " + ", ".join(parts)

    @property
    def norms_per_layer(self) -> int:
        return 1 if self.parallel_block else 2

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
        qkv_width = (self.num_heads + 2 * self.num_kv_heads) * d // tp
        qkv = h * qkv_width + (qkv_width if self.qkv_bias else 0)
        out = self.num_heads * d * h // tp
        matrices = 3 if self.gated_mlp else 2  # gate, up and down projections; or up and down
        mlp = matrices * h * self.intermediate_size // tp
        norms = self.norms_per_layer * h * (2 if self.norm == "layernorm" else 1)  # LayerNorm has a bias
        return qkv + out + mlp + norms

    def params_per_rank(self, tp: int) -> int:
        embed_and_head = 2 * self.vocab_size * self.hidden_size // tp  # untied, vocab-parallel
        return self.num_layers * self.layer_params_per_rank(tp) + embed_and_head + self.hidden_size

    def weight_bytes_per_rank(self, tp: int) -> int:
        return self.params_per_rank(tp) * self.dtype_bytes

    def kv_bytes_per_token_per_rank(self, tp: int) -> int:
        """K and V of one token, all layers, on one rank."""
        return 2 * self.num_layers * self.kv_heads_per_rank(tp) * self.head_dim * self.dtype_bytes
