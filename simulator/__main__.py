"""`python -m simulator <hydra overrides>`: run one simulation and print its summary."""
from __future__ import annotations

import json

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .cli import run_or_exit, to_dict
from .run import run_simulation


@hydra.main(config_path="../conf", config_name="simulator", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config = to_dict(cfg)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    run = lambda: run_simulation(config, config["output_dir"], progress=not multirun)  # noqa: E731
    # In a multirun, hydra keeps a job's exception and re-raises it when the jobs are back, so
    # one bad job is reported once by the driver rather than killing a worker process.
    summary = run() if multirun else run_or_exit(run)
    brief = {k: summary[k] for k in ("scheduler", "hardware", "cost_model", "workload", "num_requests",
                                     "num_batches", "ttft_s", "tbt_s", "e2e_s", "makespan_s",
                                     "throughput", "preemptions", "longest_generation_stall_s")}
    brief["conservation_ok"] = summary["conservation"]["ok"]
    print(json.dumps(brief, indent=None if multirun else 2))


if __name__ == "__main__":
    main()
