"""Micro benchmark: microseconds per `CostModel.batch_time` call (target <= 0.5 us in CPython).

Run from the repository root: `python -m bench.cost_model_speed`. Prices a mix of decode-only,
prefill-only and mixed batches, as `BatchShape`s and as `Batch`es (whose decode count is a
property), on Yi-34B, TP=2, A100.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

from omegaconf import OmegaConf

from profiler.cost_model import build_cost_model
from profiler.hardware import HardwareSpec
from simulator.core.batch import Batch, BatchShape
from simulator.core.model_spec import ModelSpec

CONF = Path(__file__).resolve().parents[1] / "conf"


def random_shapes(count: int, rng: random.Random) -> list[BatchShape]:
    shapes = []
    for _ in range(count):
        decodes = rng.choice([0, rng.randint(1, 256)])
        chunk, start = rng.choice([(0, 0), (rng.randint(1, 2048), rng.randint(0, 4096))])
        prefills = 1 if chunk else 0
        shapes.append(BatchShape(chunk, decodes, prefills, decodes * rng.randint(1, 4096), start + chunk,
                                 chunk * start + chunk * (chunk + 1) // 2))
    return [s for s in shapes if s.num_prefill_tokens + s.num_decode_tokens]


def as_batch(shape: BatchShape) -> Batch:
    return Batch(decodes=[None] * shape.num_decode_tokens, prefills=[None] * shape.num_prefills,
                 num_prefill_tokens=shape.num_prefill_tokens, decode_kv_tokens=shape.decode_kv_tokens,
                 prefill_kv_tokens=shape.prefill_kv_tokens, prefill_attn_pairs=shape.prefill_attn_pairs)


def us_per_call(batch_time, batches, repeats: int = 20) -> float:
    best = float("inf")
    for _ in range(repeats):  # best of several rounds: the least disturbed by other processes
        start = time.perf_counter()
        for b in batches:
            batch_time(b)
        best = min(best, time.perf_counter() - start)
    return best / len(batches) * 1e6


def main() -> None:
    model = ModelSpec.from_config(OmegaConf.load(CONF / "model" / "yi_34b.yaml"))
    hardware = HardwareSpec.from_config(OmegaConf.load(CONF / "hardware" / "a100_80gb_pcie_nvlink.yaml"))
    shapes = random_shapes(10_000, random.Random(0))
    batches = [as_batch(s) for s in shapes]
    for name in ("analytical", "public"):  # the public model prices through the same tables
        cost_model = build_cost_model(model, hardware, tp=2, name=name)
        print(cost_model.label)
        print(f"  {name:<10} batch_time(BatchShape): {us_per_call(cost_model.batch_time, shapes):.2f} us/call")
        print(f"  {name:<10} batch_time(Batch):      {us_per_call(cost_model.batch_time, batches):.2f} us/call")


if __name__ == "__main__":
    main()
