"""The cost model fitted to a measured profile: the backend's ops, priced by their fitted laws.

One iteration of one TP rank runs what `backend/model.py` runs: per layer two residual-add +
RMSNorm, the QKV projection, RoPE, the KV-cache write, paged attention, the output projection, the
gate-up projection, SiLU-and-multiply and the down projection; per iteration the embedding and the
RoPE tables; per sampled token (one per decode and one per prompt chunk) the final norm, the LM
head and greedy sampling. With TP, two all-reduces per layer plus one for the vocab-parallel
embedding, and the all-gather of the logits. Each op's time comes from `profiler/fit.py` at this
model's shard shapes: the fitted law, times the op's measured residual where the shape is the one
the profile measured. All-reduces come from the profile when it measured them, else from the
measured NCCL table (`profiler/all_reduce.py`); the per-iteration CPU overhead from the profile if
it measured one, else from the hardware config.

Speed: everything that depends only on the token count is tabulated at construction (as in the
analytical model), so `batch_time` is two list lookups plus the attention law in plain floats.
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
from .fit import (ATTENTION, AttentionUnits, Law, all_reduces_per_iteration, gathered_logits_bytes, law_group,
                  linear_shapes, load_fit, stream_widths)
from .hardware import HardwareSpec

# How often each op runs per decoder layer (the residual add is timed with its RMSNorm).
LAYER_OPS = {"rmsnorm": 2, "qkv_proj": 1, "rope": 1, "kv_cache_write": 1, "o_proj": 1,
             "gate_up_proj": 1, "silu_mul": 1, "down_proj": 1}
ITERATION_OPS = ("embedding", "rope_cos_sin")      # once per iteration, over all tokens
SAMPLE_OPS = ("final_norm", "lm_head", "sampling")  # once per iteration, over the sampled tokens


class FittedCostModel(CostModel):
    name = "fitted"

    def __init__(self, model: ModelSpec, hardware: HardwareSpec, tp: int, profile_dir: str | Path | None = None,
                 data_dir: Path | None = None, max_tokens: int = 16384, cache_dir: str | Path | None = None,
                 engine: EngineModel | None = None, time_scale: float = 1.0):
        """`profile_dir`: a directory written by `python -m profiler`; `data_dir` holds the measured
        all-reduce tables (default ../shared/data); `cache_dir` the fitted laws (default .cache/fits);
        `engine` and `time_scale` as for `AnalyticalCostModel`."""
        if profile_dir is None:
            raise ValueError(f"cost_model={self.name} needs a profile: set `profile:` in the hardware "
                             "config to a measured profile dir (docs/profiler.md), or use cost_model=analytical")
        model.check_tp(tp)
        if not model.is_llama:
            raise ValueError(f"cost_model={self.name} prices the GPU backend's Llama operations, and model "
                             f"{model.name} is {model.architecture()}; use cost_model=public or analytical")
        self.model, self.hardware, self.tp = model, hardware, tp
        self.engine = engine or EngineModel.flat(hardware)
        self.time_scale = check_time_scale(time_scale)
        self.fit = load_fit(profile_dir, cache_dir)
        self._check_hardware()
        self._laws = self._rescaled_laws()
        self._all_reduce = None if tp == 1 else self._all_reduce_model(data_dir)

        shapes = {**linear_shapes(model, tp), **{op: (w,) for op, w in stream_widths(model, tp).items()}}
        self._shape_cols = {op: ({"k_in": s[0], "k_out": s[1]} if len(s) == 2 else {"width": s[0]})
                            for op, s in shapes.items()}
        measured_shape = [op for op, r in self.fit.residuals.items() if op in shapes and r.shape == shapes[op]]
        self.label = self._describe(len(measured_shape), len(self.fit.residuals))

        # Attention, per iteration (all layers), in seconds per unit, as plain floats for batch_time.
        # Scaled by time_scale here, since batch_time adds attention to the (scaled) tables.
        law, units, layers = self._laws[ATTENTION], AttentionUnits.of(model, tp), self.time_scale * model.num_layers
        prefill, decode = law.terms["prefill"], law.terms["decode"]
        self._att_fixed = layers * law.fixed_s
        self._att_per_seq = layers * law.per_seq_s
        self._att_per_pair = layers * prefill.s_per_flop * units.flops_per_pair
        self._att_prefill_per_kv = layers * prefill.s_per_byte * units.bytes_per_kv_token
        self._att_prefill_per_query = layers * prefill.s_per_byte * units.bytes_per_query
        self._att_p = prefill.p
        # The decode term has no FLOPs, so its p-norm is its memory time.
        self._att_decode_per_kv = layers * decode.s_per_byte * units.bytes_per_kv_token
        self._att_decode_per_query = layers * decode.s_per_byte * units.bytes_per_query

        self._token_ops: dict[str, np.ndarray] = {}
        self._sample_ops: dict[str, np.ndarray] = {}
        self._token_time: list[float] = []   # by token count: all but attention and the sampled-token ops
        self._sample_time: list[float] = []  # by sampled-token count
        self._grow(max_tokens)
        origin = f"{self.name} profile {self.fit.directory}"
        self.op_sources = {op: origin for op in [*self._token_ops, "attn_prefill", "attn_decode", *self._sample_ops,
                                                 "engine_decodes"]}
        all_reduce = self._all_reduce.source if self._all_reduce else "no all-reduce"
        self.op_sources.update(all_reduce=all_reduce, logits_all_gather=all_reduce, **engine_sources(self.engine))

    # ---- where the numbers come from (the transfer model overrides these) ------------------------
    def _check_hardware(self) -> None:
        measured_for = self.fit.metadata["hardware"]["name"]
        if measured_for != self.hardware.name:
            raise ValueError(f"profile {self.fit.directory} was measured for hardware {measured_for!r}, "
                             f"not {self.hardware.name!r}; use cost_model=transfer to predict it from "
                             "this profile, or a profile measured on that hardware")

    def _rescaled_laws(self) -> dict[str, Law]:
        return dict(self.fit.laws)

    def _all_reduce_model(self, data_dir: Path | None) -> AllReduceModel:
        curve = self.fit.all_reduce.get(str(self.tp))
        if curve is not None:
            return AllReduceModel(f"all-reduce measured in the profile ({self.tp} GPUs)",
                                  np.array(curve["nbytes"]), np.array(curve["seconds"]))
        return AllReduceModel.for_workers(self.hardware.all_reduce, self.tp, data_dir)

    def _describe(self, at_measured_shape: int, with_residual: int) -> str:
        m = self.fit.metadata
        shapes = (f"{at_measured_shape} of {with_residual} ops with measured residuals at their measured shape"
                  if with_residual else "laws only")
        all_reduce = self._all_reduce.source if self._all_reduce else "no all-reduce"
        return (f"fitted to profile {self.fit.directory} measured on {m['device']} ({m['device_kind']}) "
                f"{m['date']}; {self.model.name}, TP={self.tp}, {self.hardware.name}; {shapes}; "
                f"{all_reduce}" + scale_note(self.time_scale))

    # ---- the interface ---------------------------------------------------------------------------
    def batch_time(self, batch: Any) -> float:
        decodes = batch.num_decode_tokens
        prefills = batch.num_prefills
        tokens = batch.num_prefill_tokens + decodes
        if tokens >= len(self._token_time):
            self._grow(tokens)
        if not tokens:
            return 0.0
        t = (self._token_time[tokens] + self._sample_time[decodes + prefills] + self._decode_time[decodes]
             + self._att_fixed)
        if prefills:
            p = self._att_p
            compute = batch.prefill_attn_pairs * self._att_per_pair
            memory = (batch.prefill_kv_tokens * self._att_prefill_per_kv
                      + batch.num_prefill_tokens * self._att_prefill_per_query)
            t += prefills * self._att_per_seq + (compute ** p + memory ** p) ** (1.0 / p)
        if decodes:
            t += (decodes * (self._att_per_seq + self._att_decode_per_query)
                  + batch.decode_kv_tokens * self._att_decode_per_kv)
        return t

    def breakdown(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        c = {k: np.asarray(columns[k], dtype=float) for k in BatchShape.FIELDS}
        prefill, decode, chunks = c["num_prefill_tokens"], c["num_decode_tokens"], c["num_prefills"]
        tokens = (prefill + decode).astype(int)
        sampled = (decode + chunks).astype(int)
        if len(tokens) and tokens.max() >= len(self._token_time):
            self._grow(int(tokens.max()))
        ops = {name: self.time_scale * table[tokens] for name, table in self._token_ops.items()}
        ops.update({name: self.time_scale * table[sampled] for name, table in self._sample_ops.items()})
        ops["engine_decodes"] = self.time_scale * self._decode_table[decode.astype(int)]
        p = self._att_p
        compute = c["prefill_attn_pairs"] * self._att_per_pair
        memory = c["prefill_kv_tokens"] * self._att_prefill_per_kv + prefill * self._att_prefill_per_query
        # The call's fixed time goes to the prompt part when there is one, else to the decodes.
        ops["attn_prefill"] = np.where(chunks > 0, self._att_fixed + chunks * self._att_per_seq
                                       + (compute ** p + memory ** p) ** (1.0 / p), 0.0)
        ops["attn_decode"] = np.where(decode > 0, np.where(chunks > 0, 0.0, self._att_fixed)
                                      + decode * (self._att_per_seq + self._att_decode_per_query)
                                      + c["decode_kv_tokens"] * self._att_decode_per_kv, 0.0)
        return ops

    # ---- tables ----------------------------------------------------------------------------------
    def _op(self, op: str, n: np.ndarray) -> np.ndarray:
        """Seconds of one call of `op` over `n` tokens at this model's shard shape."""
        cols = {"tokens": n, **self._shape_cols[op]}
        return self.fit.seconds(op, cols, self.model, self.tp, self._laws[law_group(op)])

    def _grow(self, tokens: int) -> None:
        """Tabulate the token-count-only operations for 0 .. at least `tokens`."""
        n = np.arange(max(tokens + 1, 2 * len(self._token_time)), dtype=float)
        m, layers = self.model, self.model.num_layers
        ops = {op: layers * count * self._op(op, n) for op, count in LAYER_OPS.items()}
        ops.update({op: self._op(op, n) for op in ITERATION_OPS})
        if self._all_reduce is not None:
            ops["all_reduce"] = all_reduces_per_iteration(m) * self._all_reduce.seconds(n * m.hidden_size * m.dtype_bytes)
        ops["engine_iteration"] = self.engine.iteration_seconds(n)
        self._token_ops = {k: np.where(n > 0, v, 0.0) for k, v in ops.items()}

        sample = {op: self._op(op, n) for op in SAMPLE_OPS}
        if self._all_reduce is not None:  # as the analytical model and backend/collectives.py charge it
            sample["logits_all_gather"] = self._all_reduce.all_gather_seconds(gathered_logits_bytes(m, n))
        sample["engine_requests"] = self.engine.request_seconds(n)  # n sampled tokens: one per request
        self._sample_ops = {k: np.where(n > 0, v, 0.0) for k, v in sample.items()}
        self._token_time = (self.time_scale * sum(self._token_ops.values())).tolist()
        self._sample_time = (self.time_scale * sum(self._sample_ops.values())).tolist()
        self._decode_table = self.engine.decode_seconds(n)  # by decode count: the engine's decode steps
        self._decode_time = (self.time_scale * self._decode_table).tolist()
