"""`python -m profiler model=yi_34b parallel.tp=2`: measure the backend's ops on this machine's GPU.

Writes `<profiler.output_root>/<device>_<model>_tp<k>/profile.csv` (one row per op and shape: the
shape columns, n_repeats, median_ms, p10_ms, p90_ms) and `metadata.json` (device, software
versions, date, exact command, model shard, hardware config, git commit, timing method). Without
CUDA it times the CPU and labels the profile so (device "cpu"): that is for testing the pipeline
with a tiny model and `profiler.grid=quick`, never for pricing a GPU.
"""
from __future__ import annotations

import datetime
import json
import platform
import re
import subprocess
import sys
import time
from itertools import groupby
from pathlib import Path
from typing import Any, Sequence

import torch
import triton
from omegaconf import DictConfig

from backend.gpus import hardware_chosen, matching_hardware
from simulator.cli import command, run_command, to_dict
from simulator.core.model_spec import ModelSpec

from .fit import ALL_REDUCE, COLUMNS, PROFILE_METADATA, PROFILE_TABLE, REPO_ROOT
from .hardware import HardwareSpec
from .measure import CpuTimer, CudaTimer, measure_all_reduce, summarize
from .grid import plan, token_counts
from .ops import TORCH_CALLS, ShardOps

ALL_REDUCE_MODES = ("auto", "measure", "table")


def slug(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3'; 'Yi-34B' -> 'yi-34b'."""
    text = re.sub(r"^nvidia\s+", "", text.strip(), flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None  # not a checkout (an installed package): the metadata says so


def profile(config: dict[str, Any], log=print, argv: Sequence[str] = ()) -> Path:
    """Measure every point of the configured grid; returns the profile directory. On a GPU the
    hardware config is that GPU's (`backend.gpus`: one chosen in `argv` for another GPU is refused)."""
    model = ModelSpec.from_config(config["model"])
    tp = int(config["parallel"]["tp"])
    model.check_tp(tp)
    settings = config["profiler"]
    grid_name = settings["grid"]
    if grid_name not in settings["grids"]:
        raise ValueError(f"profiler.grid={grid_name!r} is unknown; use one of {sorted(settings['grids'])}")
    grid = settings["grids"][grid_name]
    if settings["all_reduce"] not in ALL_REDUCE_MODES:
        raise ValueError(f"profiler.all_reduce={settings['all_reduce']!r} must be one of {ALL_REDUCE_MODES}")

    device = settings["device"] if settings["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cuda", "cpu") or (device == "cuda" and not torch.cuda.is_available()):
        raise ValueError(f"profiler.device={settings['device']!r}: use auto, cpu, or cuda on a machine with a CUDA GPU")
    on_gpu = device == "cuda"
    device_name = torch.cuda.get_device_name(0) if on_gpu else f"cpu ({platform.processor() or platform.machine()})"
    hardware = matching_hardware(device_name, config["hardware"], hardware_chosen(argv)) if on_gpu else config["hardware"]
    HardwareSpec.from_config(hardware)  # checked now: the profile keeps it (transfer reads its peaks)
    out_dir = Path(settings["output_root"]) / f"{slug(device_name) if on_gpu else 'cpu'}_{slug(model.name)}_tp{tp}"
    started = time.perf_counter()

    points = plan(model, tp, grid, settings["seed"])
    ops = ShardOps(model, tp, grid, device, settings["block_size"], settings["seed"])
    timer = CudaTimer(device) if on_gpu else CpuTimer()
    log(f"profiling {model.name} TP={tp} (rank 0's shard) on {device_name}: {len(points)} points, grid {grid_name}")
    rows = []
    for op, op_points in groupby(points, key=lambda p: p.op):
        op_started = time.perf_counter()
        count = 0
        for point in op_points:
            samples = timer(ops.runner(point), grid["warmup"], grid["repeats"])
            rows.append({"op": op, "kind": point.kind, **point.shape, **summarize(samples)})
            count += 1
        log(f"  {op:<16} {count:5d} points  {time.perf_counter() - op_started:6.1f} s")
    del ops
    if on_gpu:
        torch.cuda.empty_cache()

    all_reduce_note = _all_reduce(settings["all_reduce"], tp, on_gpu, grid, model, rows, log)
    duration = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_table(out_dir / PROFILE_TABLE, rows)
    commit, status = settings["git_commit"] or _git("rev-parse", "HEAD"), _git("status", "--porcelain")
    metadata = {
        "device": device_name,
        "device_kind": device,
        "label": (f"measured on {device_name}" if on_gpu else
                  "CPU profile: CPU times of a pipeline test, not a GPU measurement"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m profiler", *sys.argv[1:]]),
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "model": config["model"],
        "tp": tp,
        "shard": f"rank 0 of {tp}: one decoder layer, the embedding and LM head shards, bfloat16",
        "hardware": hardware,
        "grid": grid_name,
        "grid_config": grid,
        "block_size": settings["block_size"],
        "seed": settings["seed"],
        "timing": timer.method + f"; {grid['warmup']} warm-up call(s), {grid['repeats']} timed",
        "torch_calls": TORCH_CALLS,
        "all_reduce": all_reduce_note,
        # Scheduling and input preparation are CPU work outside the ops: real-mode runs measure
        # them (backend/runner.py `prep`); until a profile records them, cost models use the
        # hardware config's cpu_overhead_ms.
        "cpu_overhead_ms": None,
        "duration_s": round(duration, 1),
        "rows": len(rows),
    }
    (out_dir / PROFILE_METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    log(f"wrote {out_dir} ({len(rows)} rows) in {duration:.0f} s")
    return out_dir


def _all_reduce(mode: str, tp: int, on_gpu: bool, grid: dict[str, Any], model: ModelSpec,
                rows: list[dict[str, Any]], log) -> str:
    """Measure the all-reduce when asked or possible (appending its rows); say where it comes from."""
    gpus = torch.cuda.device_count() if on_gpu else 0
    if tp == 1:
        return "none: tp=1"
    if mode == "table" or (mode == "auto" and gpus < tp):
        return (f"not measured ({gpus} GPU(s) for tp={tp}): cost models take it from the measured table "
                "(profiler/all_reduce.py)")
    if on_gpu and gpus < tp:
        raise ValueError(f"profiler.all_reduce=measure needs tp={tp} GPUs, {gpus} visible; use auto or table")
    counts = token_counts(1, grid["max_tokens"], grid["all_reduce_tokens"])
    sizes = [n * model.hidden_size * model.dtype_bytes for n in counts]
    backend = "nccl" if on_gpu else "gloo"
    started = time.perf_counter()
    measured = measure_all_reduce(tp, sizes, backend, grid["warmup"], grid["repeats"])
    rows += [{"op": ALL_REDUCE, "kind": backend, "tokens": 0, **r} for r in measured]
    log(f"  {ALL_REDUCE:<16} {len(measured):5d} points  {time.perf_counter() - started:6.1f} s ({backend})")
    return f"measured with {backend} over {tp} {'GPUs' if on_gpu else 'CPU processes'}"


def _write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    table = pd.DataFrame(rows).reindex(columns=list(COLUMNS))
    shape_columns = [c for c in COLUMNS if c not in ("op", "kind", "median_ms", "p10_ms", "p90_ms")]
    table[shape_columns] = table[shape_columns].fillna(0).astype(int)  # a shape column an op lacks is 0
    table["kind"] = table["kind"].fillna("")
    table.to_csv(path, index=False, float_format="%.6g")


@command("profiler")
def main(cfg: DictConfig) -> None:
    profile(to_dict(cfg), argv=sys.argv[1:])


if __name__ == "__main__":
    run_command(main)
