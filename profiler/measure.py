"""The timing harness: how long one call of an operation takes, as a median and a spread.

On a GPU every sample is one call between two CUDA events. Before each sample the L2 cache is
flushed (a model's layers stream far more weights than L2 holds, so an op never finds its inputs
cached in a real forward) and the GPU is kept busy by a spin kernel long enough for the CPU to
enqueue the whole call: the events then time GPU work, not launch gaps. That is what a forward
pass that is GPU-bound (a CPU that runs ahead) sees. On the CPU, `time.perf_counter` brackets
each call (torch's CPU ops are synchronous).

The all-reduce is timed across processes through torch.distributed (NCCL on GPUs, gloo on the CPU).
"""
from __future__ import annotations

import json
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def summarize(samples_ms: np.ndarray) -> dict[str, float]:
    """The profile's timing columns of one point."""
    p10, median, p90 = np.percentile(samples_ms, [10, 50, 90])
    return {"n_repeats": len(samples_ms), "median_ms": float(median), "p10_ms": float(p10), "p90_ms": float(p90)}


class CpuTimer:
    method = "time.perf_counter around each call (CPU, synchronous)"

    def __call__(self, fn: Callable[[], Any], warmup: int, repeats: int) -> np.ndarray:
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return np.array(samples)


class CudaTimer:
    # The spin before each sample: twice the CPU time the call takes to enqueue (a whole decoder
    # layer enqueues ~30 kernels), within these bounds.
    MIN_LEAD_S = 100e-6
    MAX_LEAD_S = 5e-3

    def __init__(self, device: Any):
        import torch

        from backend import spin  # the backend's own spin, calibrated after a GPU warm-up

        self.torch = torch
        self.device = torch.device(device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._spin = spin.spin
        l2 = torch.cuda.get_device_properties(self.device).L2_cache_size
        self._flush = torch.empty(2 * l2, dtype=torch.int8, device=self.device)
        rate = spin.calibration(self.device.index)
        self.method = (f"CUDA events around each call, after flushing L2 ({2 * l2 >> 20} MiB written) and a "
                       "spin kernel that lets the CPU enqueue the whole call first (spin rate "
                       f"{rate.cycles_per_second / 1e9:.3f} GHz, calibrated after {rate.warmup_s * 1e3:.0f} ms "
                       "of GPU work)")

    def __call__(self, fn: Callable[[], Any], warmup: int, repeats: int) -> np.ndarray:
        torch = self.torch
        for _ in range(warmup):  # the first call also compiles any Triton kernel
            fn()
        # One more untimed call on an idle GPU: its host time is what enqueueing the call costs.
        torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        fn()
        enqueue_s = time.perf_counter() - start
        torch.cuda.synchronize(self.device)
        lead_s = min(max(self.MIN_LEAD_S, 2 * enqueue_s), self.MAX_LEAD_S)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeats)]
        for start, end in events:
            self._flush.zero_()
            self._spin(self.device, lead_s)
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(self.device)
        return np.array([start.elapsed_time(end) for start, end in events])


def measure_all_reduce(num_workers: int, message_bytes: list[int], backend: str, warmup: int,
                       repeats: int) -> list[dict[str, Any]]:
    """Rows (nbytes, num_workers, timing columns) of an all-reduce over `num_workers` processes,
    one per GPU with NCCL, or on the CPU with gloo. Rank 0's view of each call is recorded."""
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "all_reduce.json"
        mp.spawn(_all_reduce_worker, args=(num_workers, port, backend, message_bytes, warmup, repeats, str(out)),
                 nprocs=num_workers, join=True)
        return json.loads(out.read_text())


def _all_reduce_worker(rank: int, num_workers: int, port: int, backend: str, message_bytes: list[int],
                       warmup: int, repeats: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=num_workers)
    on_gpu = backend == "nccl"
    device = torch.device("cuda", rank) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    dtype = torch.bfloat16 if on_gpu else torch.float32  # gloo reduces fp32; the bytes are what count
    rows = []
    try:
        for nbytes in message_bytes:
            x = torch.randn(max(1, nbytes // dtype.itemsize), dtype=dtype, device=device)
            samples = []
            for i in range(warmup + repeats):
                dist.barrier()
                if on_gpu:
                    torch.cuda.synchronize(device)
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    dist.all_reduce(x)
                    end.record()
                    end.synchronize()
                    elapsed_ms = start.elapsed_time(end)
                else:
                    t0 = time.perf_counter()
                    dist.all_reduce(x)
                    elapsed_ms = (time.perf_counter() - t0) * 1e3
                if i >= warmup:
                    samples.append(elapsed_ms)
            rows.append({"nbytes": x.numel() * x.element_size(), "num_workers": num_workers,
                         **summarize(np.array(samples))})
    finally:
        dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(rows))
