"""How many KV blocks fit on one GPU (reference-semantics §6), without running the model.

blocks = floor((device memory × gpu_memory_utilization − weights − activation peak) / block bytes)

The reference measures the activation peak with a dummy forward pass; here it is estimated from
the largest forward the scheduler can issue (`max_batch_tokens`): every token holds its hidden
state a few times over, its QKV and its share of the MLP's gate/up activations, all in the model's
dtype. The GPU backend replaces the estimate with the memory it actually finds free.
"""
from __future__ import annotations

from dataclasses import dataclass

from .model_spec import ModelSpec

GIB = 1024 ** 3


@dataclass(frozen=True)
class KVCapacity:
    num_blocks: int
    block_bytes: int
    weight_bytes: int
    activation_bytes: int
    usable_bytes: int

    def describe(self, block_size: int) -> str:
        return (f"KV cache: {self.num_blocks} blocks of {block_size} tokens "
                f"({self.num_blocks * block_size:,} tokens) per GPU; weights "
                f"{self.weight_bytes / GIB:.1f} GiB, activations {self.activation_bytes / GIB:.1f} GiB, "
                f"usable {self.usable_bytes / GIB:.1f} GiB")


def activation_bytes(model: ModelSpec, tp: int, max_batch_tokens: int) -> int:
    per_token = (4 * model.hidden_size
                 + (model.num_heads + 2 * model.num_kv_heads) * model.head_dim // tp
                 + 2 * model.intermediate_size // tp)
    return max_batch_tokens * per_token * model.dtype_bytes


def kv_capacity(model: ModelSpec, tp: int, memory_bytes: int, gpu_memory_utilization: float,
                max_batch_tokens: int, block_size: int = 16) -> KVCapacity:
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ValueError(f"engine.gpu_memory_utilization={gpu_memory_utilization} must be in (0, 1]")
    model.check_tp(tp)
    block_bytes = block_size * model.kv_bytes_per_token_per_rank(tp)
    weights = model.weight_bytes_per_rank(tp)
    activations = activation_bytes(model, tp, max_batch_tokens)
    usable = int(memory_bytes * gpu_memory_utilization) - weights - activations
    num_blocks = max(0, usable // block_bytes)
    if num_blocks == 0:
        raise ValueError(
            f"no memory left for the KV cache: {memory_bytes / GIB:.1f} GiB × {gpu_memory_utilization} "
            f"holds {weights / GIB:.1f} GiB of weights ({model.name}, tp={tp}) and "
            f"{activations / GIB:.1f} GiB of activations; raise engine.gpu_memory_utilization or "
            "parallel.tp, or use a GPU with more memory")
    return KVCapacity(num_blocks, block_bytes, weights, activations, usable)
