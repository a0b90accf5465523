"""An analytical roofline cost model for one tensor-parallel rank of a Llama-architecture model.

Every GPU operation of an iteration is priced as a kernel that is either compute- or
bandwidth-bound: time = max(FLOPs / (peak * efficiency), bytes / (bandwidth * efficiency),
launch floor). The floor is a `max`, not a sum: launches are asynchronous, so their cost only
shows when a kernel is shorter than a launch. Shard sizes follow Megatron sharding (`ModelSpec`).

Per layer: fused add+RMSNorm (x2), QKV projection, RoPE, KV-cache write, prefill and decode
attention, output projection, gate-up projection, SiLU-and-multiply, down projection, and two
all-reduces of tokens x hidden activations. Per iteration: embedding (vocab-parallel, so it needs
one more all-reduce), final norm, LM head and sampling for the tokens that sample (one per decode
and one per prefill chunk), and a fixed CPU overhead (hardware config `cpu_overhead_ms`).

Speed: everything that depends only on the token count is tabulated at construction, so
`batch_time` is two list lookups plus the two attention terms in plain Python floats.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np

from simulator.core.batch import BatchShape
from simulator.core.model_spec import ModelSpec

from .all_reduce import AllReduceModel
from .cost_model import CostModel
from .hardware import HardwareSpec

# Sampling works on fp32 logits over the full vocabulary (gathered to the driver rank): a cast,
# softmax, log-softmax, a top-p/top-k sort and the draw make roughly 8 passes of 4 bytes per
# logit, in about 10 kernels. A rough assumption: sampling is a small share of any iteration.
SAMPLING_BYTES_PER_LOGIT = 32
SAMPLING_KERNELS = 10


class AnalyticalCostModel(CostModel):
    name = "analytical"

    def __init__(self, model: ModelSpec, hardware: HardwareSpec, tp: int,
                 data_dir: Path | None = None, max_tokens: int = 16384):
        """`data_dir` holds the measured all-reduce table (default ../shared/data); `max_tokens`
        sizes the per-token-count tables, which grow on demand for larger batches."""
        model.check_tp(tp)
        self.model, self.hardware, self.tp = model, hardware, tp
        eff = hardware.efficiency
        self._matmul_flops = hardware.peak_flops * eff.matmul
        self._bandwidth = hardware.mem_bandwidth * eff.memory
        self._floor = hardware.kernel_launch_floor_us * 1e-6
        self._cpu_overhead = hardware.cpu_overhead_ms * 1e-3
        self._all_reduce = None if tp == 1 else AllReduceModel.for_workers(hardware.all_reduce, tp, data_dir)

        h, d, b = model.hidden_size, model.head_dim, model.dtype_bytes
        heads, kv_heads = model.heads_per_rank(tp), model.kv_heads_per_rank(tp)
        inter = model.intermediate_size // tp
        # (input width, output width) of each linear layer's shard on this rank.
        self._linears = {
            "qkv_proj": (h, (heads + 2 * kv_heads) * d),
            "o_proj": (heads * d, h),
            "gate_up_proj": (h, 2 * inter),
            "down_proj": (inter, h),
        }
        # Attention, per layer, in seconds per unit: per (query, key) pair of compute (QK^T and PV,
        # 2 FLOPs per multiply-add each), per KV token read (K and V of this rank's KV heads), per
        # query token (read the query, write the output).
        self._s_per_pair = 4 * d * heads / (hardware.peak_flops * eff.attention)
        self._s_per_kv_token = 2 * kv_heads * d * b / self._bandwidth
        self._s_per_query = 2 * heads * d * b / self._bandwidth

        all_reduce = self._all_reduce.source if self._all_reduce else "no all-reduce"
        self.label = (f"analytical roofline model, {hardware.name}, TP={tp} (datasheet peaks × "
                      f"efficiency: matmul {eff.matmul:g}, attention {eff.attention:g}, memory "
                      f"{eff.memory:g}), {all_reduce}, CPU overhead {hardware.cpu_overhead_ms:g} ms/iteration")

        self._token_time: list[float] = []   # by token count: all but attention, LM head, sampling
        self._sample_time: list[float] = []  # by sampled-token count: LM head and sampling
        self._grow(max_tokens)

    # ---- the interface -----------------------------------------------------------------------
    def batch_time(self, batch: Any) -> float:
        decodes = batch.num_decode_tokens
        prefills = batch.num_prefills
        tokens = batch.num_prefill_tokens + decodes
        if tokens >= len(self._token_time):
            self._grow(tokens)
        t = self._token_time[tokens] + self._sample_time[decodes + prefills]
        if decodes:
            kv = batch.decode_kv_tokens
            t += self._attention(decodes, kv, kv, max)
        if prefills:
            t += self._attention(batch.num_prefill_tokens, batch.prefill_kv_tokens,
                                 batch.prefill_attn_pairs, max)
        return t

    def breakdown(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        c = {k: np.asarray(columns[k], dtype=float) for k in BatchShape.FIELDS}
        prefill, decode, chunks = c["num_prefill_tokens"], c["num_decode_tokens"], c["num_prefills"]
        ops = self._token_ops(prefill + decode)
        ops["attn_prefill"] = np.where(chunks > 0, self._attention(
            prefill, c["prefill_kv_tokens"], c["prefill_attn_pairs"], np.maximum), 0.0)
        kv = c["decode_kv_tokens"]
        ops["attn_decode"] = np.where(decode > 0, self._attention(decode, kv, kv, np.maximum), 0.0)
        ops.update(self._sample_ops(decode + chunks))
        return ops

    # ---- operations --------------------------------------------------------------------------
    def _kernel(self, flops: Any, nbytes: Any) -> np.ndarray:
        """Roofline time of one kernel, FLOPs at matmul efficiency (flops=0: bandwidth-bound)."""
        return np.maximum(np.maximum(flops / self._matmul_flops, nbytes / self._bandwidth), self._floor)

    def _token_ops(self, n: np.ndarray) -> dict[str, np.ndarray]:
        """Seconds per operation, whole iteration, for `n` tokens (prefill + decode)."""
        m, layers = self.model, self.model.num_layers
        h, b = m.hidden_size, m.dtype_bytes
        heads, kv_heads = m.heads_per_rank(self.tp), m.kv_heads_per_rank(self.tp)
        act = n * b  # bytes of one activation element, over all the batch's tokens
        ops = {
            "cpu_overhead": np.full_like(n, self._cpu_overhead),
            "embedding": self._kernel(0, 2 * act * h),  # gather rows, write activations
            # fused residual-add + RMSNorm reads x and the residual and writes both; two per layer
            "rmsnorm": 2 * layers * self._kernel(0, 4 * act * h + h * b),
        }
        ops["qkv_proj"] = self._linear("qkv_proj", n)
        ops["rope"] = layers * self._kernel(0, 2 * act * (heads + kv_heads) * m.head_dim)  # q, k in place
        ops["kv_cache_write"] = layers * self._kernel(0, 2 * act * 2 * kv_heads * m.head_dim)
        ops["o_proj"] = self._linear("o_proj", n)
        ops["gate_up_proj"] = self._linear("gate_up_proj", n)
        inter = m.intermediate_size // self.tp
        ops["silu_mul"] = layers * self._kernel(0, 3 * act * inter)  # read gate and up, write one
        ops["down_proj"] = self._linear("down_proj", n)
        # two per layer (after attention, after the MLP) and one for the vocab-parallel embedding
        ops["all_reduce"] = (np.zeros_like(n) if self._all_reduce is None
                             else (2 * layers + 1) * self._all_reduce.seconds(act * h))
        ops["final_norm"] = self._kernel(0, 4 * act * h + h * b)
        return {k: np.where(n > 0, v, 0.0) for k, v in ops.items()}

    def _linear(self, name: str, n: np.ndarray) -> np.ndarray:
        """A per-layer linear layer: weights read once per iteration, activations in and out."""
        k_in, k_out = self._linears[name]
        params = k_in * k_out
        nbytes = self.model.dtype_bytes * (params + n * (k_in + k_out))
        return self.model.num_layers * self._kernel(2 * n * params, nbytes)

    def _sample_ops(self, s: np.ndarray) -> dict[str, np.ndarray]:
        """Seconds for the LM head and sampling of `s` sampled tokens."""
        m = self.model
        vocab_shard = m.vocab_size // self.tp
        params = vocab_shard * m.hidden_size
        lm_head = self._kernel(2 * s * params, m.dtype_bytes * (params + s * (m.hidden_size + vocab_shard)))
        sampling = np.maximum(s * m.vocab_size * SAMPLING_BYTES_PER_LOGIT / self._bandwidth,
                              SAMPLING_KERNELS * self._floor)
        return {"lm_head": np.where(s > 0, lm_head, 0.0), "sampling": np.where(s > 0, sampling, 0.0)}

    def _attention(self, queries: Any, kv_tokens: Any, pairs: Any, maximum: Callable) -> Any:
        """Prefill or decode attention (a decode query attends to each of its KV tokens once, so
        pairs == kv_tokens). It serves both `batch_time` (Python numbers, `maximum=max`) and
        `breakdown` (arrays, `maximum=np.maximum`), so the two paths share one formula."""
        compute = pairs * self._s_per_pair
        memory = kv_tokens * self._s_per_kv_token + queries * self._s_per_query
        return self.model.num_layers * maximum(maximum(compute, memory), self._floor)

    def _grow(self, tokens: int) -> None:
        """Tabulate the token-count-only operations for 0 .. at least `tokens`."""
        n = np.arange(max(tokens + 1, 2 * len(self._token_time)), dtype=float)
        self._token_time = sum(self._token_ops(n).values()).tolist()
        self._sample_time = sum(self._sample_ops(n).values()).tolist()
