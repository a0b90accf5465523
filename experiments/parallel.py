"""Fan independent runs out as Ray tasks, with a progress bar; or run them in order in-process.

Each run is a plain (function, config) pair so that a task carries only picklable data. Local
Ray is the default; `ray.address` joins an existing cluster (`ray start --head`).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

from tqdm import tqdm


def run_all(task: Callable[[dict], Any], configs: Sequence[dict], ray_cfg: Mapping[str, Any],
            desc: str = "runs") -> list[Any]:
    """`task(config)` for every config, results in the same order; the first failure is raised."""
    if not ray_cfg.get("enabled", True) or len(configs) <= 1:
        return [task(c) for c in tqdm(configs, desc=desc, unit="run")]
    import ray  # only where runs fan out: the serving model never needs it

    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                                   "configure_logging": False}
        if ray_cfg.get("address"):
            options["address"] = ray_cfg["address"]
        else:
            options["num_cpus"] = ray_cfg.get("num_cpus") or os.cpu_count()
        # Workers import this repository's packages from the driver's working directory.
        options["runtime_env"] = {"env_vars": {"PYTHONPATH": _repo_root()}}
        ray.init(**options)
    try:
        remote = ray.remote(task)
        pending = {remote.remote(c): i for i, c in enumerate(configs)}
        results: list[Any] = [None] * len(configs)
        with tqdm(total=len(configs), desc=desc, unit="run") as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    results[pending.pop(ref)] = ray.get(ref)
                    bar.update()
        return results
    finally:
        if started_here:
            ray.shutdown()


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
