"""Executors: drive the model runner of every tensor-parallel rank from the engine's process.

- `LocalExecutor`: one process, no Ray. tp=1, or one rank's shard of a tp-way model emulated
  on one device (collectives omitted or modelled, see collectives.py; the label says which).
- `RayTPExecutor`: one Ray actor per rank, each holding only its shard, joined in a
  torch.distributed group (NCCL on GPUs, gloo on the CPU). The driver sends each step to every
  rank and checks that all ranks sampled the same tokens. Rank 0 must run on the driver's node
  (its address hosts the group's rendezvous): fine for one machine.

Both expose `num_blocks` (KV blocks per rank: configured, or measured and then the minimum over
ranks), `kv_note` (how it was obtained), `label`, `spin_calibration` (rank 0's GPU spin rate and
its warm-up, `backend.spin`; None on the CPU), `warm_up_kernels()` (compiles every attention
kernel variant on every rank; returns rank 0's launch count), `execute(step) -> (tokens,
StepTimes)` (rank 0's times) and `shutdown()`.
"""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

from simulator.core.schedulers import SCHEDULERS, SchedulerConfig

from .collectives import Distributed, Emulated, SingleGPU
from .runner import ModelRunner, RunnerConfig, Step, StepTimes, check_kv_blocks
from .spin import calibration


def _spin_calibration(device: torch.device) -> dict[str, float] | None:
    if device.type != "cuda":
        return None
    return calibration(device.index if device.index is not None else torch.cuda.current_device()).as_dict()


def build_executor(cfg: RunnerConfig, scheduler: str, sched_cfg: SchedulerConfig, all_reduce=None):
    """The executor for `cfg` (resolved here), its KV cache sized for `scheduler`'s largest batch.

    `all_reduce` (a `profiler.all_reduce.AllReduceModel`) is needed for emulation="modelled".
    """
    cfg = cfg.resolved()
    cfg.model.check_tp(cfg.tp)
    if sched_cfg.block_size != cfg.block_size:
        raise ValueError(f"scheduler.block_size={sched_cfg.block_size} differs from the backend's "
                         f"block_size={cfg.block_size}; they must match")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {sorted(SCHEDULERS)}")
    lengths = SCHEDULERS[scheduler].profile_prompt_lengths(sched_cfg)
    if cfg.tp == 1 or cfg.emulation is not None:
        executor = LocalExecutor(cfg, lengths, all_reduce)
    else:
        gpus = torch.cuda.device_count()
        if cfg.device.startswith("cuda") and gpus < cfg.tp:
            raise ValueError(f"parallel.tp={cfg.tp} needs {cfg.tp} GPUs but {gpus} are visible; set "
                             "real.emulation=omit or modelled to run one shard on one GPU")
        executor = RayTPExecutor(cfg, lengths)
    try:
        check_kv_blocks(executor.num_blocks, cfg.block_size, sched_cfg.max_model_len)
    except Exception:
        executor.shutdown()
        raise
    return executor


class LocalExecutor:
    def __init__(self, cfg: RunnerConfig, profile: list[int], all_reduce=None):
        device = torch.device(cfg.device)
        if cfg.tp == 1:
            comm = SingleGPU(device)
        else:
            comm = Emulated(cfg.tp, device, cfg.emulation, all_reduce)
        self.label = comm.label
        self.spin_calibration = _spin_calibration(device)  # measured now, before any step spins
        self.runner = ModelRunner(cfg, 0, comm)
        if cfg.num_blocks:
            self.num_blocks, self.kv_note = cfg.num_blocks, "configured"
        else:
            self.num_blocks, self.kv_note = self.runner.measure_kv_blocks(profile)
        self.runner.allocate_kv(self.num_blocks)

    def warm_up_kernels(self) -> int:
        return self.runner.warm_up_kernels()

    def execute(self, step: Step) -> tuple[list[int], StepTimes]:
        return self.runner.execute(step)

    def shutdown(self) -> None:
        self.runner = None


class _RankWorker:
    """The body of one rank's Ray actor."""

    def __init__(self, cfg: RunnerConfig, rank: int, init_method: str):
        device = torch.device(cfg.device)
        if device.type == "cuda":
            torch.cuda.set_device(device.index or 0)  # Ray shows each actor one GPU
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method=init_method, rank=rank, world_size=cfg.tp)
        self.runner = ModelRunner(cfg, rank, Distributed(cfg.tp, device))

    def label(self) -> str:
        return self.runner.model.comm.label

    def spin_calibration(self) -> dict[str, float] | None:
        return _spin_calibration(self.runner.device)

    def warm_up_kernels(self) -> int:
        return self.runner.warm_up_kernels()

    def measure_kv_blocks(self, lengths: list[int]) -> tuple[int, str]:
        return self.runner.measure_kv_blocks(lengths)

    def allocate_kv(self, num_blocks: int) -> None:
        self.runner.allocate_kv(num_blocks)

    def execute(self, step: Step) -> tuple[list[int], StepTimes]:
        return self.runner.execute(step)


class RayTPExecutor:
    def __init__(self, cfg: RunnerConfig, profile: list[int]):
        import ray  # only tensor parallelism across processes needs Ray

        self._ray = ray
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            ray.init(num_cpus=max(os.cpu_count() or 1, cfg.tp), include_dashboard=False,
                     log_to_driver=False)
        on_gpu = cfg.device.startswith("cuda")
        actor = ray.remote(num_gpus=1 if on_gpu else 0, num_cpus=0 if on_gpu else 1)(_RankWorker)
        init_method = f"tcp://{ray.util.get_node_ip_address()}:{_free_port()}"
        self.workers = [actor.remote(cfg, rank, init_method) for rank in range(cfg.tp)]
        self.label = ray.get(self.workers[0].label.remote())
        self.spin_calibration = ray.get(self.workers[0].spin_calibration.remote())
        if cfg.num_blocks:
            self.num_blocks, self.kv_note = cfg.num_blocks, "configured"
        else:
            measured = ray.get([w.measure_kv_blocks.remote(profile) for w in self.workers])
            self.num_blocks = min(blocks for blocks, _ in measured)
            self.kv_note = f"minimum over {cfg.tp} ranks; rank 0 {measured[0][1]}"
        ray.get([w.allocate_kv.remote(self.num_blocks) for w in self.workers])

    def warm_up_kernels(self) -> int:
        return self._ray.get([w.warm_up_kernels.remote() for w in self.workers])[0]

    def execute(self, step: Step) -> tuple[list[int], StepTimes]:
        ref = self._ray.put(step)
        results = self._ray.get([w.execute.remote(ref) for w in self.workers])
        tokens = results[0][0]
        for rank, (other, _) in enumerate(results[1:], start=1):
            if other != tokens:
                raise RuntimeError(f"TP rank {rank} sampled {other} but rank 0 sampled {tokens}")
        return results[0]

    def shutdown(self) -> None:
        for worker in self.workers:
            self._ray.kill(worker)
        self.workers = []
        if self._started_ray:
            self._ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
