"""An analytical roofline cost model for one tensor-parallel rank of a decoder-only transformer.

Every GPU operation of an iteration is priced as a kernel that is either compute- or
bandwidth-bound: time = max(FLOPs / (peak * efficiency), bytes / (bandwidth * efficiency),
launch floor). The floor is a `max`, not a sum: launches are asynchronous, so their cost only
shows when a kernel is shorter than a launch. Shard sizes follow Megatron sharding (`ModelSpec`).

Per layer: fused add+RMSNorm (x2), QKV projection, RoPE, KV-cache write, prefill and decode
attention, output projection, gate-up projection, SiLU-and-multiply, down projection, and two
all-reduces of tokens x hidden activations. Per iteration: embedding (vocab-parallel, so it needs
one more all-reduce) and the engine term (`profiler/engine_model.py`, by tokens). Per sampled
token (one per decode and one per prefill chunk), as `backend/model.py` runs them on the sampled
rows only: the final norm (row gather, RMSNorm), the vocab-parallel LM head and its fp32 cast,
the all-gather of the logits across TP ranks (priced as `profiler/fitted.py` and
`backend.collectives.Emulated` charge it), and greedy sampling (`backend/runner.py`: one argmax
over the gathered fp32 logits), and the engine term's per-request part. The per-rank shapes and
attention units are `profiler/fit.py`'s, shared with the fitted model. Architectures other than
Llama (`ModelSpec.mlp`, `parallel_block`, `rotary_dim`) change the op shapes and counts here.

Speed: everything that depends only on the token count is tabulated at construction, so
`batch_time` is two list lookups plus the two attention terms in plain Python floats.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from simulator.core.batch import BatchShape
from simulator.core.model_spec import ModelSpec

from .all_reduce import AllReduceModel
from .cost_model import CostModel, check_time_scale, engine_sources, scale_note
from .engine_model import EngineModel
from .fit import (LOGIT_BYTES, AttentionUnits, all_reduces_per_iteration, gathered_logits_bytes, gemm_flops_bytes,
                  linear_shapes, stream_widths)
from .hardware import HardwareSpec


class AnalyticalCostModel(CostModel):
    name = "analytical"

    def __init__(self, model: ModelSpec, hardware: HardwareSpec, tp: int,
                 data_dir: Path | None = None, max_tokens: int = 16384, engine: EngineModel | None = None,
                 time_scale: float = 1.0):
        """`data_dir` holds the measured all-reduce table (default ../shared/data); `max_tokens`
        sizes the per-token-count tables, which grow on demand for larger batches; `engine` is the
        engine term (default: the hardware config's flat CPU overhead); `time_scale` multiplies
        every modelled time (a sensitivity knob: how much does a conclusion depend on calibration?)."""
        model.check_tp(tp)
        self.model, self.hardware, self.tp = model, hardware, tp
        self.engine = engine or EngineModel.flat(hardware)
        self.time_scale = check_time_scale(time_scale)
        eff = hardware.efficiency
        self._matmul_flops = hardware.peak_flops * eff.matmul
        self._bandwidth = hardware.mem_bandwidth * eff.memory
        self._floor = hardware.kernel_launch_floor_us * 1e-6
        self._all_reduce = None if tp == 1 else AllReduceModel.for_workers(hardware.all_reduce, tp, data_dir)

        self._linears = linear_shapes(model, tp)  # (input width, output width) of each shard
        self._widths = stream_widths(model, tp)   # elements per token of each bandwidth-bound op
        # Attention, per layer, in seconds per unit: per (query, key) pair of compute, per KV token
        # read, per query token (read the query, write the output).
        # Scaled by time_scale here, since batch_time adds attention to the (scaled) tables.
        # Kept per iteration (all layers) as plain floats: batch_time inlines the formula.
        units, scale = AttentionUnits.of(model, tp), self.time_scale * model.num_layers
        self._s_per_pair = scale * units.flops_per_pair / (hardware.peak_flops * eff.attention)
        self._s_per_kv_token = scale * units.bytes_per_kv_token / self._bandwidth
        self._s_per_query = scale * units.bytes_per_query / self._bandwidth
        self._attention_floor = scale * self._floor

        all_reduce = self._all_reduce.source if self._all_reduce else "no all-reduce"
        self.label = (f"analytical roofline model, {hardware.name}, TP={tp} (datasheet peaks × "
                      f"efficiency: matmul {eff.matmul:g}, attention {eff.attention:g}, memory "
                      f"{eff.memory:g}), {all_reduce}" + scale_note(self.time_scale))

        self._token_time: list[float] = []   # by token count: all but attention and the sampled-token ops
        self._sample_time: list[float] = []  # by sampled-token count: final norm, LM head, gather, sampling
        self._grow(max_tokens)
        self.op_sources = {op: "analytical" for op in self._op_names}
        self.op_sources.update(all_reduce=all_reduce, logits_all_gather=all_reduce,
                               **engine_sources(self.engine))

    # ---- the interface -----------------------------------------------------------------------
    def batch_time(self, batch: Any) -> float:
        decodes = batch.num_decode_tokens
        prefills = batch.num_prefills
        tokens = batch.num_prefill_tokens + decodes
        if tokens >= len(self._token_time):
            self._grow(tokens)
        t = self._token_time[tokens] + self._sample_time[decodes + prefills] + self._decode_time[decodes]
        # `_attention` inlined (comparisons, no calls): this runs once per simulated iteration.
        if decodes:
            kv = batch.decode_kv_tokens
            compute = kv * self._s_per_pair
            memory = kv * self._s_per_kv_token + decodes * self._s_per_query
            if memory > compute:
                compute = memory
            t += compute if compute > self._attention_floor else self._attention_floor
        if prefills:
            compute = batch.prefill_attn_pairs * self._s_per_pair
            memory = batch.prefill_kv_tokens * self._s_per_kv_token + batch.num_prefill_tokens * self._s_per_query
            if memory > compute:
                compute = memory
            t += compute if compute > self._attention_floor else self._attention_floor
        return t

    def breakdown(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        c = {k: np.asarray(columns[k], dtype=float) for k in BatchShape.FIELDS}
        prefill, decode, chunks = c["num_prefill_tokens"], c["num_decode_tokens"], c["num_prefills"]
        tokens, sampled = (prefill + decode).astype(int), (decode + chunks).astype(int)
        if len(tokens) and tokens.max() >= len(self._token_time):
            self._grow(int(tokens.max()))
        # From the tables batch_time reads (a calibrated op's law is too slow to evaluate per batch).
        ops = {k: self.time_scale * table[tokens] for k, table in self._token_tables.items()}
        ops["attn_prefill"] = np.where(chunks > 0, self._attention(
            prefill, c["prefill_kv_tokens"], c["prefill_attn_pairs"]), 0.0)
        kv = c["decode_kv_tokens"]
        ops["attn_decode"] = np.where(decode > 0, self._attention(decode, kv, kv), 0.0)
        ops.update({k: self.time_scale * table[sampled] for k, table in self._sample_tables.items()})
        ops["engine_decodes"] = self.time_scale * self._decode_table[decode.astype(int)]
        return ops

    # ---- operations --------------------------------------------------------------------------
    def _kernel(self, flops: Any, nbytes: Any) -> np.ndarray:
        """Roofline time of one kernel, FLOPs at matmul efficiency (flops=0: bandwidth-bound)."""
        return np.maximum(np.maximum(flops / self._matmul_flops, nbytes / self._bandwidth), self._floor)

    def _token_ops(self, n: np.ndarray) -> dict[str, np.ndarray]:
        """Seconds per operation, whole iteration, for `n` tokens (prefill + decode)."""
        m, layers, w = self.model, self.model.num_layers, self._widths
        h, b = m.hidden_size, m.dtype_bytes
        act = n * b  # bytes of one activation element, over all the batch's tokens
        ops = {
            "engine_iteration": self.engine.iteration_seconds(n),
            "embedding": self._kernel(0, 2 * act * w["embedding"]),  # gather rows, write activations
            # fused residual-add + norm reads x and the residual and writes both; two per layer
            # (one where attention and MLP run side by side from one norm)
            "rmsnorm": m.norms_per_layer * layers * self._kernel(0, 4 * act * w["rmsnorm"] + h * b),
        }
        ops["qkv_proj"] = self._linear("qkv_proj", n)
        ops["rope"] = layers * self._kernel(0, 2 * act * w["rope"])  # q and k, in place
        ops["kv_cache_write"] = layers * self._kernel(0, 2 * act * w["kv_cache_write"])
        ops["o_proj"] = self._linear("o_proj", n)
        ops["gate_up_proj"] = self._linear("gate_up_proj", n)
        # SiLU-and-multiply reads gate and up and writes one; a plain GELU reads one and writes one
        ops["silu_mul"] = layers * self._kernel(0, (3 if m.gated_mlp else 2) * act * w["silu_mul"])
        ops["down_proj"] = self._linear("down_proj", n)
        ops["all_reduce"] = (np.zeros_like(n) if self._all_reduce is None
                             else all_reduces_per_iteration(m) * self._all_reduce.seconds(act * h))
        return {k: np.where(n > 0, v, 0.0) for k, v in ops.items()}

    def _gemm(self, name: str, n: np.ndarray) -> np.ndarray:
        """One call of a linear layer's shard over `n` tokens."""
        k_in, k_out = self._linears[name]
        return self._kernel(*gemm_flops_bytes(n, k_in, k_out, self.model.dtype_bytes))

    def _linear(self, name: str, n: np.ndarray) -> np.ndarray:
        """A per-layer linear layer, in every layer."""
        return self.model.num_layers * self._gemm(name, n)

    def _sample_ops(self, s: np.ndarray) -> dict[str, np.ndarray]:
        """Seconds of the ops that run on the `s` sampled rows only (`LlamaShard.forward`, then
        the runner's argmax)."""
        m, b = self.model, self.model.dtype_bytes
        rows = s * m.hidden_size * b
        vocab_shard = self._linears["lm_head"][1]
        logits = gathered_logits_bytes(m, s)
        ops = {
            # x[sample_idx] (read, write the rows), then RMSNorm (read, write, and its weight)
            "final_norm": self._kernel(0, 2 * rows) + self._kernel(0, 2 * rows + m.hidden_size * b),
            # the vocab-parallel GEMM, then .float() (read the bf16 logits, write fp32 ones)
            "lm_head": self._gemm("lm_head", s) + self._kernel(0, s * vocab_shard * (b + LOGIT_BYTES)),
            "logits_all_gather": (np.zeros_like(s) if self._all_reduce is None
                                  else self._all_reduce.all_gather_seconds(logits)),
            "sampling": self._kernel(0, logits),  # greedy: one argmax reads the gathered logits
            "engine_requests": self.engine.request_seconds(s),  # s sampled tokens: one per request
        }
        return {k: np.where(s > 0, v, 0.0) for k, v in ops.items()}

    def _attention(self, queries: np.ndarray, kv_tokens: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """Prefill or decode attention over all layers (a decode query attends to each of its KV
        tokens once, so pairs == kv_tokens); `batch_time` inlines the same formula."""
        compute = pairs * self._s_per_pair
        memory = kv_tokens * self._s_per_kv_token + queries * self._s_per_query
        return np.maximum(np.maximum(compute, memory), self._attention_floor)

    def _grow(self, tokens: int) -> None:
        """Tabulate the token-count-only operations for 0 .. at least `tokens`."""
        n = np.arange(max(tokens + 1, 2 * len(self._token_time)), dtype=float)
        token_ops, sample_ops = self._token_ops(n), self._sample_ops(n)
        self._token_tables, self._sample_tables = token_ops, sample_ops  # per op, by token / sampled count
        self._decode_table = self.engine.decode_seconds(n)  # by decode count: the engine's decode steps
        self._op_names = [*token_ops, "attn_prefill", "attn_decode", *sample_ops, "engine_decodes"]  # `breakdown`'s
        self._token_time = (self.time_scale * sum(token_ops.values())).tolist()
        self._sample_time = (self.time_scale * sum(sample_ops.values())).tolist()
        self._decode_time = (self.time_scale * self._decode_table).tolist()
