"""Tensor-parallel collectives as one pluggable object, so the model never asks how it is sharded.

- `SingleGPU`: tp=1, nothing to communicate.
- `Distributed`: one process per rank in a torch.distributed group (NCCL on GPUs, gloo on CPU).
- `Emulated`: one rank's shard runs alone (fewer GPUs than tp). The collectives are either
  omitted, or replaced by a modelled delay: the GPU (`spin.py`, calibrated after a warm-up) or
  CPU spins for the time an all-reduce of that many bytes takes on the target hardware
  (`profiler.all_reduce.AllReduceModel`). Outputs
  are then those of one shard, not of the model, and `label` says so.

Every collective returns its result; `all_reduce` sums a row-parallel output across ranks and
`all_gather` concatenates vocab-parallel logits along the last dimension.
"""
from __future__ import annotations

import functools
import time

import torch
import torch.distributed as dist

from .spin import spin

EMULATION_MODES = ("omit", "modelled")


def _where(device: torch.device) -> str:
    return "GPU" if device.type == "cuda" else "CPU"


class SingleGPU:
    def __init__(self, device: torch.device):
        self.label = f"tp=1 on 1 {_where(device)}"

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Distributed:
    def __init__(self, tp: int, device: torch.device):
        if not dist.is_initialized() or dist.get_world_size() != tp:
            raise RuntimeError(f"tp={tp} needs an initialised torch.distributed group of {tp} ranks")
        self.tp = tp
        self.label = f"tp={tp} on {tp} {_where(device)}s ({dist.get_backend()})"

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(x)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(self.tp)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=-1)


class Emulated:
    """One shard of a tp-way model on one device, with collectives omitted or modelled.

    In modelled mode, `times` (a `profiler.all_reduce.AllReduceModel`) prices each collective
    exactly as the cost models do: `seconds(nbytes)` for an all-reduce, `all_gather_seconds`
    for the logits all-gather.
    """

    def __init__(self, tp: int, device: torch.device, mode: str, times=None):
        if mode not in EMULATION_MODES:
            raise ValueError(f"real.emulation={mode!r} must be one of {EMULATION_MODES}")
        if mode == "modelled" and times is None:
            raise ValueError("real.emulation=modelled needs an all-reduce time model "
                             "(hardware.all_reduce); use real.emulation=omit without one")
        self.tp = tp
        self._times = times if mode == "modelled" else None
        what = "all-reduce omitted" if mode == "omit" else f"all-reduce modelled ({times.source})"
        self.label = f"tp={tp} emulated on 1 {_where(device)}: {what}"
        self._spin = functools.partial(spin, device) if device.type == "cuda" else _cpu_spin

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self._times is not None:
            self._spin(float(self._times.seconds(x.numel() * x.element_size())))
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        if self._times is not None:
            self._spin(float(self._times.all_gather_seconds(self.tp * x.numel() * x.element_size())))
        return x  # this shard's logits only: sampled tokens are those of the shard


def _cpu_spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
