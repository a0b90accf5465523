"""Real-mode runs: the same run configs as the simulator, executed on the GPU (or CPU, tiny).

`run_real_all` serves each run's workload with its scheduler through one executor per scheduler
(the weights are loaded once per scheduler, since each sizes its KV cache for its largest batch)
and writes the same run directory as a simulation, with `mode: real` and what ran it.
"""
from __future__ import annotations

import platform
from datetime import date
from typing import Any, Mapping

import torch

from profiler.all_reduce import AllReduceModel
from profiler.hardware import HardwareSpec
from simulator.core.metrics import check_conservation
from simulator.core.model_spec import ModelSpec
from simulator.core.schedulers import SchedulerConfig, make_scheduler
from simulator.core.workload import workload_from_config
from simulator.outputs import write_run
from simulator.run import make_requests, shared_data_dir

from .collectives import EMULATION_MODES
from .engine import serve
from .runner import RunnerConfig
from .tp import build_executor


def runner_config(run_cfg: Mapping[str, Any], real: Mapping[str, Any]) -> RunnerConfig:
    model = ModelSpec.from_config(run_cfg["model"])
    tp = int(run_cfg["parallel"]["tp"])
    gpus = torch.cuda.device_count()
    emulation = real.get("emulation")
    if emulation is not None and emulation not in EMULATION_MODES:
        raise ValueError(f"real.emulation={emulation!r}: use one of {EMULATION_MODES} or null")
    if tp > 1 and max(gpus, 1) < tp and emulation is None:
        raise ValueError(f"parallel.tp={tp} needs {tp} GPUs but {gpus} are visible; set "
                         "real.emulation=modelled (or omit) to run one rank's shard on one GPU")
    return RunnerConfig(model, tp=tp, num_layers=real.get("num_layers"),
                        block_size=int(run_cfg["scheduler"]["block_size"]),
                        device=real.get("device", "auto"), num_blocks=real.get("num_blocks"),
                        gpu_memory_utilization=float(run_cfg["engine"]["gpu_memory_utilization"]),
                        emulation=emulation if tp > max(gpus, 1) else None)


def _scheduler(run_cfg: Mapping[str, Any]) -> tuple[str, SchedulerConfig]:
    sched = dict(run_cfg["scheduler"])
    name = sched.pop("name")
    return name, SchedulerConfig.from_config(sched)


def run_real_all(configs: list[dict[str, Any]], config: Mapping[str, Any], log=print) -> list[dict[str, Any]]:
    real = config["real"]
    summaries: list[dict[str, Any] | None] = [None] * len(configs)
    by_scheduler: dict[str, list[int]] = {}
    for i, run_cfg in enumerate(configs):
        by_scheduler.setdefault(run_cfg["scheduler"]["name"], []).append(i)
    for name, indices in by_scheduler.items():
        first = configs[indices[0]]
        runner_cfg = runner_config(first, real)
        hardware = HardwareSpec.from_config(first["hardware"])
        all_reduce = (AllReduceModel.for_workers(hardware.all_reduce, runner_cfg.tp, shared_data_dir(first))
                      if runner_cfg.emulation == "modelled" else None)
        # One KV cache sized for the largest max_model_len among this scheduler's runs.
        _, sched_cfg = max((_scheduler(configs[i]) for i in indices), key=lambda s: s[1].max_model_len)
        executor = build_executor(runner_cfg, name, sched_cfg, all_reduce)
        try:
            for i in indices:
                summaries[i] = _serve_one(configs[i], executor, runner_cfg, real, log)
        finally:
            executor.shutdown()
    return summaries  # type: ignore[return-value]


def _serve_one(run_cfg: Mapping[str, Any], executor, runner_cfg: RunnerConfig, real: Mapping[str, Any],
               log) -> dict[str, Any]:
    name, sched_cfg = _scheduler(run_cfg)
    scheduler = make_scheduler(name, sched_cfg, executor.num_blocks)
    workload = workload_from_config(run_cfg["workload"], shared_data_dir(run_cfg))
    requests = make_requests(workload)
    recorder = serve(requests, scheduler, executor, warmup_rounds=int(real.get("warmup_rounds", 1)), log=log)
    tables = recorder.finalize()
    resolved = runner_cfg.resolved()
    on_gpu = resolved.device.startswith("cuda")
    meta = {
        "mode": "real",
        "scheduler": name,
        "scheduler_config": vars(sched_cfg),
        "model": resolved.model.name + (f" ({resolved.model.num_layers} of {runner_cfg.model.num_layers} "
                                         "layers)" if real.get("num_layers") else ""),
        "tp": runner_cfg.tp,
        "hardware": run_cfg["hardware"]["name"],
        "device": torch.cuda.get_device_name() if on_gpu else f"CPU ({platform.processor() or 'unknown'})",
        "executor": executor.label,
        "dtype": resolved.dtype,
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()},
        "date": date.today().isoformat(),
        "cost_model": "none (measured)",
        "workload": workload.description,
        "kv_cache_blocks": executor.num_blocks,
        "kv_cache_note": executor.kv_note,
        "timing": ("batches.parquet: gpu_time = forward and sampling on the device, from when it starts "
                   "them (a spin lead covers the launches); cpu_time = scheduling, input preparation and "
                   "launches; end - start = wall time with launches" if on_gpu else
                   "batches.parquet: gpu_time = the forward on the CPU (time.perf_counter); cpu_time = "
                   "scheduling and input preparation"),
        "gpu_spin": executor.spin_calibration,  # the spin's rate, measured after a GPU warm-up (None on the CPU)
    }
    summary = write_run(run_cfg["output_dir"], tables, meta)
    check_conservation(tables.conservation)
    return summary
