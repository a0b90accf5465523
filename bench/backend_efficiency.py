"""How close the backend's forward pass comes to the GPU's limits (GPU only).

    python -m bench.backend_efficiency --out results.json [--num-layers 60]
    python -m bench.backend_efficiency --out dry.json --device cpu --model tiny.yaml ...  # a dry run

Runs one rank's shard of Yi-34B at TP 2 (all-reduces omitted: one shard on one GPU; random bf16
weights, ≈34 GB with all 60 layers) and compares
- a decode iteration (batch 32, 64, 128; every sequence at KV length 2,048) with its memory floor:
  (weight bytes + KV bytes read) / copy bandwidth;
- a 1,536-token prompt chunk (from position 0) with its compute floor: linear-layer FLOPs /
  matmul rate (attention FLOPs are not in the floor: the chunk's own attention counts against it).
Copy bandwidth = (bytes read + bytes written) / time of a device-to-device copy of a large tensor;
matmul rate = 2·n³ / time of an n×n×n bf16 GEMM. Each time is the median of `--iters` iterations
after warm-up: the runner's GPU time (CUDA events, after a spin lead that covers the launches,
so launch gaps are not counted) and, separately, the wall time with launches.
Targets: decode ≤ 1.3× floor, chunk ≤ 1.25× floor. Without a GPU it says so and exits 0;
`--device cpu` runs the same steps on the CPU (fp32, perf_counter), for dry runs with a tiny model.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from backend.runner import RunnerConfig, Step, StepTimes
from backend.tp import LocalExecutor
from simulator.core.model_spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
DECODE_TARGET, CHUNK_TARGET = 1.3, 1.25


def device_seconds(fn, iters: int, device: str, warmup: int = 3) -> float:
    """Median seconds of `fn()`: CUDA events around each call on a GPU, perf_counter on the CPU."""
    times = []
    for i in range(warmup + iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end) * 1e-3
        else:
            t0 = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - t0
        if i >= warmup:
            times.append(elapsed)
    return statistics.median(times)


def copy_bandwidth(iters: int, nbytes: int, device: str, dtype: torch.dtype) -> float:
    src = torch.empty(nbytes // dtype.itemsize, dtype=dtype, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = device_seconds(lambda: dst.copy_(src), iters, device)
    del src, dst
    return 2 * nbytes / seconds


def matmul_rate(iters: int, n: int, device: str, dtype: torch.dtype) -> float:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    seconds = device_seconds(lambda: a @ b, iters, device)
    del a, b
    return 2 * n ** 3 / seconds


def runner_seconds(runner, step: Step, iters: int, warmup: int = 3) -> dict:
    """Medians of the runner's step times (backend/runner.py `StepTimes`: GPU time from when the
    GPU starts the forward, prep, launch and lead) and of the wall time, launches included."""
    times, wall = [], []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        _, step_times = runner.execute(step)
        if i >= warmup:
            times.append(step_times)
            wall.append(time.perf_counter() - t0)
    medians = {f"{field}_s": statistics.median(getattr(t, field) for t in times) for field in StepTimes._fields}
    return {**medians, "wall_s": statistics.median(wall)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--model", type=Path, default=ROOT / "conf" / "model" / "yi_34b.yaml")
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--num-layers", type=int, default=None, help="default: all of the model's")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--kv-len", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=1536)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: a dry run of the same steps (fp32), meaningful only as a test")
    parser.add_argument("--copy-bytes", type=int, default=4 << 30, help="size of the copy-bandwidth probe")
    parser.add_argument("--matmul-size", type=int, default=8192, help="n of the n×n×n matmul-rate probe")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("backend_efficiency: no CUDA GPU visible; this benchmark measures GPU kernels, "
              "nothing was measured (--device cpu runs it on the CPU as a dry run)")
        return 0
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32

    copy_bw = copy_bandwidth(args.iters, args.copy_bytes, args.device, dtype)
    mm_rate = matmul_rate(args.iters, args.matmul_size, args.device, dtype)
    print(f"copy bandwidth {copy_bw / 1e12:.3f} TB/s (read + write); {dtype} matmul "
          f"{mm_rate / 1e12:.3f} TFLOP/s")

    spec = ModelSpec.from_config(yaml.safe_load(args.model.read_text()))
    blocks_per_seq = -(-args.kv_len // args.block_size)
    cfg = RunnerConfig(spec, tp=args.tp, num_layers=args.num_layers, block_size=args.block_size,
                       device=args.device, dtype=str(dtype).removeprefix("torch."), weights="per_rank",
                       num_blocks=max(args.batches) * blocks_per_seq,
                       emulation=None if args.tp == 1 else "omit").resolved()
    spec = cfg.model
    t0 = time.perf_counter()
    executor = LocalExecutor(cfg, profile=[])
    executor.warm_up_kernels()  # no Triton compile inside the timed calls
    runner, model = executor.runner, executor.runner.model
    print(f"{executor.label}; {spec.name}, {spec.num_layers} layers, built in "
          f"{time.perf_counter() - t0:.1f} s")

    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    weight_bytes = param_bytes - model.embed.numel() * model.embed.element_size()  # rows gathered, not read
    linear_params = sum(layer.qkv.numel() + layer.o_proj.numel() + layer.gate_up.numel()
                        + layer.down.numel() for layer in model.layers)
    kv_token_bytes = spec.kv_bytes_per_token_per_rank(cfg.tp)

    decode = []
    for batch in args.batches:
        step = Step([(args.kv_len - 1, 1, list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)))
                     for i in range(batch)], [1] * batch)
        measured = runner_seconds(runner, step, args.iters)
        kv_bytes = batch * args.kv_len * kv_token_bytes
        floor = (weight_bytes + kv_bytes) / copy_bw
        decode.append({"batch": batch, "kv_len": args.kv_len, "weight_bytes": weight_bytes,
                       "kv_bytes": kv_bytes, "floor_s": floor, **measured,
                       "ratio": measured["gpu_s"] / floor, "target": DECODE_TARGET})
        print(f"decode batch {batch:4d}: {measured['gpu_s'] * 1e3:7.2f} ms, floor "
              f"{floor * 1e3:7.2f} ms, ratio {measured['gpu_s'] / floor:.2f} (target ≤ {DECODE_TARGET}); "
              f"prep {measured['prep_s'] * 1e3:.2f} ms, launch {measured['launch_s'] * 1e3:.2f} ms, "
              f"wall {measured['wall_s'] * 1e3:.2f} ms")

    step = Step.dummy([args.chunk], args.block_size)
    measured = runner_seconds(runner, step, args.iters)
    flops = 2 * args.chunk * linear_params + 2 * model.lm_head.numel()  # LM head: one position
    floor = flops / mm_rate
    chunk = {"tokens": args.chunk, "start": 0, "matmul_flops": flops, "floor_s": floor, **measured,
             "ratio": measured["gpu_s"] / floor, "target": CHUNK_TARGET}
    print(f"chunk {args.chunk} tokens: {measured['gpu_s'] * 1e3:7.2f} ms, floor {floor * 1e3:7.2f} ms, "
          f"ratio {chunk['ratio']:.2f} (target ≤ {CHUNK_TARGET}); launch {measured['launch_s'] * 1e3:.2f} ms, "
          f"wall {measured['wall_s'] * 1e3:.2f} ms")

    results = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({platform.machine()})",
        "torch": torch.__version__,
        "triton": _version("triton"), "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "setup": executor.label, "model": dataclasses.asdict(spec), "block_size": args.block_size,
        "gpu_spin": executor.spin_calibration,
        "timing": "gpu_s from a spin lead that covers the launches (backend/runner.py); wall_s with launches",
        "iters": args.iters, "copy_bandwidth_Bps": copy_bw, "matmul_flops_per_s": mm_rate,
        "decode": decode, "chunk": chunk,
        "pass": all(d["ratio"] <= DECODE_TARGET for d in decode) and chunk["ratio"] <= CHUNK_TARGET,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
