"""One simulation from a composed config: build the pieces, run, write the run directory.

Everything a config can get wrong is checked here, before the clock starts, and raised as a
ValueError (or FileNotFoundError) whose message is the one line the command line prints.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm import tqdm

from profiler.cost_model import CostModel, cost_model_for
from profiler.engine_model import engine_model_for
from profiler.hardware import HardwareSpec

from .core.kv_capacity import kv_capacity
from .core.paths import DEFAULT_SHARED_DATA_DIR
from .core.metrics import check_conservation
from .core.model_spec import ModelSpec
from .core.request import Request
from .core.schedulers import SCHEDULERS, SchedulerConfig, make_scheduler
from .core.schedulers.base import check_compat
from .core.workload import Workload, workload_from_config
from .core.workload.config import parse_workload_config
from .engine import simulate
from .router import Router
from .memory import check_memory
from .outputs import write_run
from .run_dir import check_output_dir, check_writable

PROGRESS_MIN_REQUESTS = 20_000  # shorter runs finish in a few seconds
_REQUIRED_KEYS = {"model", "hardware", "scheduler", "workload", "parallel", "engine"}
_TOP_KEYS = {*_REQUIRED_KEYS, "overwrite", "cost_model", "engine_model",
             "cluster", "outputs", "shared_data_dir", "output_dir", "compat"}
CLUSTER_DEFAULTS = {"num_replicas": 1, "router": "round_robin", "seed": 0}
OUTPUTS_DEFAULTS = {"tokens": True, "batches": True, "chrome_trace": False}


@dataclass
class Setup:
    """The validated pieces of a run, before anything has run."""
    model: ModelSpec
    hardware: HardwareSpec
    tp: int
    scheduler_name: str
    scheduler_config: SchedulerConfig
    num_blocks: int
    capacity_line: str
    workload: Workload
    cost_model: CostModel
    cluster: dict[str, Any]  # num_replicas, router, seed (conf/simulator.yaml `cluster:`)
    outputs: dict[str, bool]  # optional files (conf/simulator.yaml `outputs:`)

    def make_router(self) -> Router:
        return Router.make(self.cluster["router"], self.cluster["num_replicas"], self.cluster["seed"])


def shared_data_dir(cfg: Mapping[str, Any]) -> Path:
    configured = cfg.get("shared_data_dir")
    return Path(configured) if configured else DEFAULT_SHARED_DATA_DIR


def prepare(cfg: Mapping[str, Any]) -> Setup:
    unknown = sorted(set(cfg) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"unknown top-level config keys {unknown}; known: {sorted(_TOP_KEYS)}")
    missing = sorted(_REQUIRED_KEYS - set(cfg))
    if missing:
        raise ValueError(f"the config lacks the section {missing[0]}; do not remove it (~{missing[0]})")
    # The workload first: scheduler.max_model_len defaults to workload.max_tokens, and a bad value
    # there should be blamed on the key the user set.
    check_memory(parse_workload_config(cfg["workload"]).num_requests)
    model = ModelSpec.from_config(cfg["model"])
    hardware = HardwareSpec.from_config(cfg["hardware"])
    tp = cfg["parallel"]["tp"]
    if not isinstance(tp, int) or isinstance(tp, bool):
        raise ValueError(f"parallel.tp={tp!r} must be an integer (the tensor-parallel degree)")
    model.check_tp(tp)
    sched = dict(cfg["scheduler"])
    name = sched.pop("name", None)
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)} (scheduler=<name>)")
    # `compat` sets the scheduler's decisions and the metrics together (reference or corrected).
    compat = check_compat(cfg.get("compat", "corrected"), "compat")
    if sched.setdefault("compat", compat) != compat:
        raise ValueError(f"scheduler.compat={sched['compat']!r} contradicts compat={compat!r}; "
                         "set only the top-level compat")
    sched_config = SchedulerConfig.from_config(sched)
    engine = dict(cfg["engine"])
    if engine.get("num_blocks") is not None:
        num_blocks = engine["num_blocks"]
        if not isinstance(num_blocks, int) or isinstance(num_blocks, bool):
            raise ValueError(f"engine.num_blocks={num_blocks!r} must be an integer or null")
        capacity_line = f"KV cache: {num_blocks} blocks of {sched_config.block_size} tokens (engine.num_blocks)"
    else:
        peak_tokens = sum(SCHEDULERS[name].profile_prompt_lengths(sched_config))
        capacity = kv_capacity(model, tp, hardware.memory_bytes, float(engine["gpu_memory_utilization"]),
                               peak_tokens, sched_config.block_size)
        num_blocks = capacity.num_blocks
        capacity_line = capacity.describe(sched_config.block_size)
    outputs = {**OUTPUTS_DEFAULTS, **(cfg.get("outputs") or {})}
    for key, value in outputs.items():
        if key not in OUTPUTS_DEFAULTS:
            raise ValueError(f"unknown outputs key {key!r}; known: {sorted(OUTPUTS_DEFAULTS)}")
        if not isinstance(value, bool):
            raise ValueError(f"outputs.{key}={value!r} must be true or false")
    if outputs["chrome_trace"] and not outputs["batches"]:
        raise ValueError("outputs.chrome_trace=true draws the batch table: set outputs.batches=true too")
    data_dir = shared_data_dir(cfg)
    workload = workload_from_config(cfg["workload"], data_dir)
    # without the token table (outputs.tokens=false) memory does not grow with the output tokens
    check_memory(len(workload), int(workload.decode.sum()) if outputs["tokens"] else 0)
    engine_model = engine_model_for(cfg.get("engine_model", "hardware"), hardware)
    cost_model = cost_model_for(model, cfg["hardware"], tp, cfg.get("cost_model", "auto"), data_dir=data_dir,
                                engine=engine_model)
    cluster = {**CLUSTER_DEFAULTS, **(cfg.get("cluster") or {})}
    if cluster["seed"] is None:
        cluster["seed"] = CLUSTER_DEFAULTS["seed"]
    unknown = sorted(set(cluster) - set(CLUSTER_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown cluster keys {unknown}; known: {sorted(CLUSTER_DEFAULTS)}")
    Router.make(cluster["router"], cluster["num_replicas"], cluster["seed"])  # validates both keys
    if compat == "reference" and cluster["num_replicas"] != 1:
        raise ValueError(f"compat=reference writes the artifact's single-replica files; set "
                         f"cluster.num_replicas=1 (not {cluster['num_replicas']}) or compat=corrected")
    return Setup(model, hardware, tp, name, sched_config, num_blocks, capacity_line, workload, cost_model,
                 cluster, outputs)


def make_requests(workload: Workload) -> list[Request]:
    return [Request(i, float(a), int(p), int(d))
            for i, (a, p, d) in enumerate(zip(workload.arrival, workload.prefill, workload.decode))]


def run_simulation(cfg: Mapping[str, Any], out_dir: str | Path, log=print, progress: bool = False) -> dict[str, Any]:
    """Run one simulation and write its directory; returns the summary. `progress` shows a bar of
    finished requests (on a terminal, for runs long enough to want one)."""
    overwrite = cfg.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite={overwrite!r} must be true or false")
    check_writable(out_dir, "output_dir")
    setup = prepare(cfg)
    check_output_dir(out_dir, overwrite)  # after every config check: overwrite=true removes old outputs
    log(setup.capacity_line)
    num_replicas = setup.cluster["num_replicas"]
    schedulers = [make_scheduler(setup.scheduler_name, setup.scheduler_config, setup.num_blocks)
                  for _ in range(num_replicas)]
    router = setup.make_router()
    requests = make_requests(setup.workload)
    wall = time.perf_counter()
    show = progress and len(requests) >= PROGRESS_MIN_REQUESTS
    # disable=None: tqdm draws only on a terminal, so logs and pipes stay clean
    with tqdm(total=len(requests), desc="requests finished", unit="req", mininterval=0.5,
              disable=None if show else True) as bar:
        recorder = simulate(requests, schedulers, setup.cost_model.batch_time, router, on_progress=bar.update,
                            keep_tokens=setup.outputs["tokens"], keep_batches=setup.outputs["batches"])
    tables = recorder.finalize()
    if num_replicas > 1:
        tables.requests["replica"] = np.asarray(router.assigned, dtype=np.int64)
        tables.batches["replica"] = tables.batches["replica"].astype(np.int64)
    if setup.outputs["batches"]:
        breakdown = setup.cost_model.breakdown(tables.batches)
        tables.batches.update({f"cost_{op}_s": seconds for op, seconds in breakdown.items()})
    meta = {
        "mode": "sim",
        "scheduler": setup.scheduler_name,
        "scheduler_config": vars(setup.scheduler_config),
        "model": setup.model.name,
        "tp": setup.tp,
        "hardware": setup.hardware.name,
        "cost_model": setup.cost_model.label,
        "cost_sources": setup.cost_model.op_sources,
        "workload": setup.workload.description,
        "kv_cache_blocks": setup.num_blocks,
        "compat": setup.scheduler_config.compat,
    }
    if setup.scheduler_config.compat == "reference":  # the artifact's config files restate it
        meta["workload_config"] = dict(cfg["workload"])
    if num_replicas > 1:
        meta["cluster"] = {"num_replicas": num_replicas, "router": setup.cluster["router"]}
    summary = write_run(out_dir, tables, meta, chrome_trace=setup.outputs["chrome_trace"],
                        batches=setup.outputs["batches"])
    log(f"simulated {len(requests)} requests, {summary['num_batches']} batches in "
        f"{time.perf_counter() - wall:.2f} s wall -> {out_dir}")
    check_conservation(tables.conservation)
    return summary
