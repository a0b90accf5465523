"""`python -m simulator <hydra overrides>`: run one simulation and print its summary."""
from __future__ import annotations

if __name__ == "__main__":  # before the slow imports below: Ctrl-C during them is one line too
    from simulator.ctrl_c import exit_quietly_on_ctrl_c

    exit_quietly_on_ctrl_c()

import json

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .cli import command, reject_added_keys, run_command, to_dict
from .run import prepare, run_simulation
from .run_dir import check_output_dir, check_writable

CONFIG_NAME = "simulator"


@command(CONFIG_NAME)
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if not multirun:  # a multirun's jobs were all checked (check_job) before the first started
        reject_added_keys(cfg, CONFIG_NAME, hydra_cfg.overrides.task)
    config = to_dict(cfg)
    # run_simulation checks the output directory and every value before it simulates; errors
    # propagate to run_command, which prints them as one line (in a multirun hydra re-raises a
    # job's exception in the driver once the jobs are back).
    summary = run_simulation(config, config["output_dir"], progress=not multirun)
    brief = {k: summary[k] for k in ("scheduler", "hardware", "cost_model", "workload", "num_requests",
                                     "num_batches", "ttft_s", "tbt_s", "e2e_s", "makespan_s",
                                     "throughput", "preemptions", "longest_generation_stall_s")}
    brief["conservation_ok"] = summary["conservation"]["ok"]
    print(json.dumps(brief, indent=None if multirun else 2))


def check_job(cfg: DictConfig, overrides: list[str]) -> None:
    """Every check a multirun job's config can fail, without running it (the launcher's preflight):
    keys added by overrides, every value, the output directory."""
    reject_added_keys(cfg, CONFIG_NAME, overrides)
    config = to_dict(cfg)
    prepare(config)
    if config.get("overwrite") is True:  # the job itself removes its old outputs, once it runs
        check_writable(config["output_dir"], "output_dir")
    else:
        check_output_dir(config["output_dir"], overwrite=False)


if __name__ == "__main__":
    run_command(main)
