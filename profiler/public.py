"""The cost model calibrated on public GPU measurements: measured op laws where the public data has
the op, the analytical model where it has not.

`PublicFitCostModel` composes an iteration exactly as `AnalyticalCostModel` does and replaces the
ops the public profiles measured (`profiler/public_profiles.py`: the four linear layers, the norms
with their residual adds, the MLP activation, RoPE, the embedding) by this GPU's cross-model laws
(`profiler/cross_model.py`), read from the committed `profiler/calibration/public_<gpu>.json`.
Attention, the KV-cache write, the RoPE tables, the final norm, the LM head, the logits all-gather
and sampling have no public measurement and stay analytical; the all-reduce comes from the
measured NCCL table. `op_sources` says, op by op, which is which.

For a GPU with no public measurement, `source=` names a hardware whose calibration to carry over
("transfer"): each law's compute time is scaled by the ratio of bf16 peaks, its memory time by
the ratio of HBM bandwidths, its fixed time and floor kept. The learned correction (tile and wave
steps of the source GPU) is kept or dropped as `profiler/calibration/transfer.json` measured it,
across the public GPUs.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from simulator.core.model_spec import ModelSpec

from .analytical import AnalyticalCostModel
from .cost_model import scale_note
from .calibrate import CALIBRATION_DIR, GEMM_GROUP, calibration_path, group_of, law_seconds, shape_features
from .cross_model import Roofline, ShapeLaw
from .fit import default_cache_dir, linear_shapes, stream_widths
from .hardware import HardwareSpec
from .public_profiles import PUBLIC_GPUS

TRANSFER_FILE = "transfer.json"
MEASURED_OPS = (*GEMM_GROUP, "rmsnorm", "silu_mul", "rope", "embedding")  # the breakdown's names


def load_calibration(gpu: str, directory: Path | None = None) -> dict[str, Any]:
    path = calibration_path(gpu, directory or CALIBRATION_DIR)
    if not path.is_file():
        raise FileNotFoundError(f"hardware.public_fit={gpu!r}: {path} not found; make it with "
                                f"`python -m profiler.calibrate gpu={gpu}` or set public_fit: null")
    return json.loads(path.read_text())


def transfer_keeps_correction(directory: Path | None = None) -> bool:
    """Whether a transferred law keeps its source GPU's learned correction, as measured."""
    path = Path(directory or CALIBRATION_DIR) / TRANSFER_FILE
    return bool(json.loads(path.read_text())["keep_correction"]) if path.is_file() else False


def scaled_law(law: ShapeLaw, compute: float, memory: float, keep_correction: bool) -> ShapeLaw:
    r = law.roofline
    return ShapeLaw(Roofline(r.fixed_s, r.s_per_flop * compute, r.s_per_byte * memory, r.p, r.floor_s),
                    law.correction if keep_correction else None, law.num_sms)


class PublicFitCostModel(AnalyticalCostModel):
    name = "public"

    def __init__(self, model: ModelSpec, hardware: HardwareSpec, tp: int, data_dir: Path | None = None,
                 max_tokens: int = 16384, calibration_dir: Path | None = None, source: HardwareSpec | None = None,
                 **options: Any):
        """`source`: carry the public fit of that hardware over to `hardware` (transfer);
        `options` (engine, time_scale) as for `AnalyticalCostModel`."""
        measured_on = source or hardware
        if measured_on.public_fit is None:
            raise ValueError(f"cost_model=public needs hardware.public_fit ({hardware.name} has none); "
                             "use cost_model=transfer or analytical")
        self.calibration = load_calibration(measured_on.public_fit, calibration_dir)
        laws = {group: ShapeLaw.from_json(d) for group, d in self.calibration["laws"].items()}
        if source is not None:
            compute, memory = source.peak_flops / hardware.peak_flops, source.mem_bandwidth / hardware.mem_bandwidth
            keep = transfer_keeps_correction(calibration_dir)
            laws = {group: scaled_law(law, compute, memory, keep) for group, law in laws.items()}
        self._laws = laws
        self._gpu = PUBLIC_GPUS[measured_on.public_fit]  # whose SMs and residency RoPE's law counts waves by
        # What the laws' numbers depend on, for the table cache: the calibration file and the rescaling.
        self._laws_key = hashlib.sha256(calibration_path(measured_on.public_fit, calibration_dir or CALIBRATION_DIR)
                                        .read_bytes()).hexdigest() + (f"{compute!r},{memory!r},{keep}" if source else "")
        self._act_law = "silu_mul" if model.gated_mlp else "gelu"
        self._norm_law = model.norm  # rmsnorm | layernorm: other kernels, own laws
        for op in (self._act_law, self._norm_law):
            if group_of(op) not in laws:
                raise ValueError(f"profiler/calibration/public_{measured_on.public_fit}.json has no law for {op} "
                                 f"({model.name} is {model.architecture()}); use cost_model=analytical")
        super().__init__(model, hardware, tp, data_dir, max_tokens, **options)
        c = self.calibration
        how = (f"public per-op measurements of {c['name']}" if source is None else
               f"transfer from the public fit of {c['name']} ({source.name}) by datasheet ratios: compute x "
               f"{compute:.3g}, memory x {memory:.3g}, learned correction {'kept' if keep else 'dropped'}")
        origin = ("public fit " if source is None else "transfer of public fit ") + c["name"]
        self.op_sources.update({op: origin for op in MEASURED_OPS})
        all_reduce = self._all_reduce.source if self._all_reduce else "no all-reduce"
        self.label = (f"calibrated: {how} ({len(c['models'])} models, {c['source'].split(',')[0]}) for "
                      f"{', '.join(MEASURED_OPS)}; analytical for attention, KV write, LM head and sampling; "
                      f"{model.name} TP={tp} on {hardware.name}; {all_reduce}" + scale_note(self.time_scale))

    def _law_seconds(self, op: str, law_op: str, n: np.ndarray) -> np.ndarray:
        """One call of `op` at this model's shard shape over `n` tokens, by `law_op`'s law. The
        learned correction costs ~0.1-0.5 s per op over a 16k-token table, so whole tables
        (0..N tokens, as `_grow` asks) are cached on disk by the law's content and the shape."""
        k_in, k_out = linear_shapes(self.model, self.tp).get(op, (0, 0))
        width = stream_widths(self.model, self.tp).get(op, 0)
        law = self._laws[group_of(law_op)]

        def compute() -> np.ndarray:
            return law_seconds(law, shape_features(law_op, np.maximum(n, 1.0), k_in, k_out, width,
                                                   self.model.dtype_bytes, self.model.head_dim, self.tp,
                                                   self.model.heads_per_rank(self.tp), self._gpu))

        if len(n) < 1024 or n[0] != 0 or n[-1] != len(n) - 1:
            return compute()
        key = hashlib.sha256(json.dumps([self._laws_key, law_op, k_in, k_out, width, self.model.dtype_bytes,
                                         self.model.head_dim, self.model.heads_per_rank(self.tp), self.tp,
                                         self._gpu.key, len(n)]).encode()).hexdigest()[:24]
        path = default_cache_dir().parent / "public_tables" / f"{key}.npy"
        if path.is_file():
            return np.load(path)
        table = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")  # atomic: parallel runs may fill it at once
        np.save(tmp, table)
        tmp.replace(path)
        return table

    def _token_ops(self, n: np.ndarray) -> dict[str, np.ndarray]:
        ops = super()._token_ops(n)
        m, layers = self.model, self.model.num_layers
        measured = {op: layers * self._law_seconds(op, op, n) for op in GEMM_GROUP}
        measured["rmsnorm"] = m.norms_per_layer * layers * self._law_seconds("rmsnorm", self._norm_law, n)
        measured["silu_mul"] = layers * self._law_seconds("silu_mul", self._act_law, n)
        measured["rope"] = layers * self._law_seconds("rope", "rope", n)
        measured["embedding"] = self._law_seconds("embedding", "embedding", n)
        ops.update({op: np.where(n > 0, t, 0.0) for op, t in measured.items()})
        return ops
