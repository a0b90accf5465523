"""Keeping a GPU busy for a given time: the spin behind emulated all-reduces and timer leads.

`torch.cuda._sleep(cycles)` spins for a number of GPU clock cycles. Its rate (cycles per second)
is measured once per device, after at least `WARMUP_S` of GPU work (bf16 GEMMs): right after CUDA
starts, or after idling, the GPU runs at low clocks, and a rate measured then is too low, so that
every spin afterwards (at working clocks) would be shorter than asked. The calibration (rate and
warm-up) goes into the outputs of every run that spins.
"""
from __future__ import annotations

import functools
import statistics
from dataclasses import asdict, dataclass

import torch

WARMUP_S = 0.1                # GPU time of the work before the rate is measured
CALIBRATION_CYCLES = 10_000_000
CALIBRATION_RUNS = 5          # the rate is their median
_GEMM_SIZE = 4096             # one warm-up GEMM: ~0.1-0.2 ms on Hopper, ~0.5 ms on A100


@dataclass(frozen=True)
class SpinCalibration:
    cycles_per_second: float  # of torch.cuda._sleep, median of CALIBRATION_RUNS spins
    warmup_s: float           # GPU seconds of work just before the measurement
    spread: float             # (max - min) / median of the runs' rates

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _gpu_seconds(work) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    work()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e-3


def _gemms(device: torch.device):
    a = torch.randn(_GEMM_SIZE, _GEMM_SIZE, dtype=torch.bfloat16, device=device)

    def work():
        for _ in range(8):
            a @ a
    return work


@functools.cache
def calibration(device_index: int) -> SpinCalibration:
    """The spin rate of GPU `device_index`, measured once, after `WARMUP_S` of GPU work."""
    device = torch.device("cuda", device_index)
    with torch.cuda.device(device):
        work, warm = _gemms(device), 0.0
        while warm < WARMUP_S:
            warm += _gpu_seconds(work)
        rates = [CALIBRATION_CYCLES / _gpu_seconds(lambda: torch.cuda._sleep(CALIBRATION_CYCLES))
                 for _ in range(CALIBRATION_RUNS)]
    median = statistics.median(rates)
    return SpinCalibration(median, warm, (max(rates) - min(rates)) / median)


def spin(device: torch.device, seconds: float) -> None:
    """Enqueue `seconds` of spinning on `device`'s current stream (returns at once)."""
    rate = calibration(device.index if device.index is not None else torch.cuda.current_device())
    torch.cuda._sleep(int(seconds * rate.cycles_per_second))
