"""Predicting an unmeasured GPU from a profile measured on another ("transfer").

Every fitted law (`profiler/fit.py`) splits an op's time into a fixed part (launch and latency), a
compute part (FLOPs at the fitted rate) and a memory part (bytes at the fitted rate). The transfer
keeps the fixed part and rescales the other two by the ratio of datasheet peaks, source over
target: compute by bf16 FLOP/s, memory by HBM bandwidth. So a compute-bound GEMM slows by the
FLOP/s ratio, a bandwidth-bound norm or decode by the bandwidth ratio, and an op near the ridge by
what its roofline says; the measured residual (tile and wave effects) is kept. This assumes the
target reaches the same fractions of its peaks as the source; the all-reduce and the CPU overhead
come from the target's own hardware config (measured NCCL table). Labels say "predicted by
transfer", never "measured".
"""
from __future__ import annotations

from pathlib import Path

from .all_reduce import AllReduceModel
from .fit import Law
from .cost_model import scale_note
from .fitted import FittedCostModel
from .hardware import HardwareSpec


class TransferCostModel(FittedCostModel):
    name = "transfer"

    @property
    def source(self) -> HardwareSpec:
        """The hardware the profile was measured for (its config is kept in the profile)."""
        return HardwareSpec.from_config(self.fit.metadata["hardware"])

    def _check_hardware(self) -> None:
        """Any target: the rescaling is what makes another GPU's numbers."""

    def _scales(self) -> tuple[float, float]:
        """(compute, memory) time multipliers, source over target peaks."""
        source = self.source
        return (source.peak_flops / self.hardware.peak_flops,
                source.mem_bandwidth / self.hardware.mem_bandwidth)

    def _rescaled_laws(self) -> dict[str, Law]:
        compute, memory = self._scales()
        return {group: law.scaled(compute, memory) for group, law in self.fit.laws.items()}

    def _all_reduce_model(self, data_dir: Path | None) -> AllReduceModel:
        return AllReduceModel.for_workers(self.hardware.all_reduce, self.tp, data_dir)

    def _describe(self, at_measured_shape: int, with_residual: int) -> str:
        m, source = self.fit.metadata, self.source
        compute, memory = self._scales()
        all_reduce = self._all_reduce.source if self._all_reduce else "no all-reduce"
        return (f"predicted by transfer from profile {self.fit.directory} (measured on {m['device']} "
                f"{m['date']}, {source.name}) to {self.hardware.name}: compute time x {compute:.3g} "
                f"(bf16 {source.peak_bf16_tflops:g} -> {self.hardware.peak_bf16_tflops:g} TFLOP/s), "
                f"memory time x {memory:.3g} (HBM {source.mem_bandwidth_gbps:g} -> "
                f"{self.hardware.mem_bandwidth_gbps:g} GB/s), fixed times kept; {self.model.name}, "
                f"TP={self.tp}; {all_reduce}" + scale_note(self.time_scale))
