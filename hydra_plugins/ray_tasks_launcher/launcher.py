"""A hydra launcher that runs the jobs of a multirun (`-m`) in parallel as Ray tasks.

`python -m simulator -m scheduler=vllm,sarathi workload.arrival.qps=0.55,0.7,1.0` composes six
jobs; each becomes one Ray task on a local Ray (default) or on the cluster named by
`hydra.launcher.address`. Results come back in job order; a progress bar counts finished jobs.
Hydra only accepts launchers from the `hydra_plugins` package, hence this folder.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from simulator.run_dir import check_writable

log = logging.getLogger(__name__)


def _run_one(hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig,
             singletons: dict[Any, Any]) -> JobReturn:
    # A Ray worker is a fresh process: restore hydra's global state before running the job.
    setup_globals()
    Singleton.set_state(singletons)
    return run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


class RayTasksLauncher(Launcher):
    """`preflight`: "module:function" called as function(job_config, job_overrides) for every job
    before any starts, so that one bad job stops the sweep before it runs."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, preflight: str | None = None) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.preflight = preflight
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from experiments.parallel import ray_map  # Ray starts only when a multirun launches

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        # Absolute: a Ray worker's working directory is wherever its cluster was started, and the
        # runs belong where the user ran the sweep.
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        check_writable(sweep_dir, key="hydra.sweep.dir")  # each job's own directory is checked below
        configs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"#{idx}: {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
                sweep_config.hydra.sweep.dir = str(sweep_dir)
            if self.preflight:
                self._check(sweep_config, list(overrides))
            configs.append(sweep_config)
        sweep_dir.mkdir(parents=True, exist_ok=True)

        singletons = Singleton.get_state()
        args = [(self.hydra_context, self.task_function, c, singletons) for c in configs]
        return ray_map(_run_one, args, {"address": self.address, "num_cpus": self.num_cpus, "config_key": "hydra.launcher"}, "multirun")

    def _check(self, sweep_config: DictConfig, overrides: list[str]) -> None:
        module, _, name = str(self.preflight).partition(":")
        check = getattr(importlib.import_module(module), name)
        job_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        with open_dict(sweep_config):
            sweep_config.hydra.runtime.output_dir = str(job_dir)  # as run_job sets it
        HydraConfig.instance().set_config(sweep_config)  # for ${hydra:...} in the job's config
        task_config = OmegaConf.masked_copy(sweep_config, [k for k in sweep_config if k != "hydra"])
        check(task_config, overrides)
