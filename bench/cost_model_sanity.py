"""Sanity numbers of the analytical cost model: Yi-34B, TP=2, on A100 and H100.

Run from the repository root: `python -m bench.cost_model_sanity`. Prints, per GPU, the time of
three reference batches and their per-operation breakdown in milliseconds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from profiler.cost_model import build_cost_model
from profiler.hardware import HardwareSpec
from simulator.core.batch import BatchShape
from simulator.core.model_spec import ModelSpec

CONF = Path(__file__).resolve().parents[1] / "conf"


def prefill(chunk: int, start: int = 0) -> BatchShape:
    return BatchShape(chunk, 0, 1, 0, start + chunk, chunk * start + chunk * (chunk + 1) // 2)


BATCHES = {
    "decode 32 x KV 2048": BatchShape(0, 32, 0, 32 * 2048, 0, 0),
    "prefill 1536 (no context)": prefill(1536),
    "prefill 16384": prefill(16384),
}


def main() -> None:
    model = ModelSpec.from_config(OmegaConf.load(CONF / "model" / "yi_34b.yaml"))
    print(f"{model.name}: {model.weight_bytes_per_rank(2) / 1e9:.1f} GB of weights per rank at TP=2")
    columns = {f: np.array([getattr(b, f) for b in BATCHES.values()]) for f in BatchShape.FIELDS}
    for hw_name in ("a100_80gb_pcie_nvlink", "h100_80gb_hbm3"):
        hardware = HardwareSpec.from_config(OmegaConf.load(CONF / "hardware" / f"{hw_name}.yaml"))
        cost_model = build_cost_model(model, hardware, tp=2)
        ops = cost_model.breakdown(columns)
        print(f"\n{cost_model.label}")
        print(f"{'ms':>18}" + "".join(f"{name:>28}" for name in BATCHES))
        print(f"{'batch_time':>18}" + "".join(f"{cost_model.batch_time(b) * 1e3:>28.2f}"
                                               for b in BATCHES.values()))
        for op, seconds in ops.items():
            print(f"{op:>18}" + "".join(f"{s * 1e3:>28.3f}" for s in seconds))


if __name__ == "__main__":
    main()
