"""Fan independent runs out as Ray tasks, with a progress bar; or run them in order in-process.

Local Ray is the default; an `address` joins an existing cluster (`ray start --head`). A task's
exception is re-raised here as itself (not wrapped in Ray's traceback), so a bad config still
ends as one line. Tasks are never retried: a run that failed once fails again.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

from tqdm import tqdm

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_all(task: Callable[[dict], Any], configs: Sequence[dict], ray_cfg: Mapping[str, Any],
            desc: str = "runs") -> list[Any]:
    """`task(config)` for every config, results in the same order; the first failure is raised."""
    if not ray_cfg.get("enabled", True) or len(configs) <= 1:
        return [task(c) for c in tqdm(configs, desc=desc, unit="run")]
    return ray_map(task, [(c,) for c in configs], ray_cfg, desc)


def ray_map(fn: Callable[..., Any], args: Sequence[tuple], ray_cfg: Mapping[str, Any], desc: str) -> list[Any]:
    """`fn(*a)` for each tuple in `args` as Ray tasks; results in order. `ray_cfg`: address, num_cpus."""
    import ray  # only where runs fan out: the serving model never needs it

    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"include_dashboard": False, "configure_logging": False,
                                   # workers import this repository's packages
                                   "runtime_env": {"env_vars": {"PYTHONPATH": REPO_ROOT}}}
        if ray_cfg.get("address"):
            options["address"] = ray_cfg["address"]
        else:
            options["num_cpus"] = ray_cfg.get("num_cpus") or os.cpu_count()
        ray.init(**options)
    try:
        remote = ray.remote(max_retries=0)(fn)
        pending = {remote.remote(*a): i for i, a in enumerate(args)}
        results: list[Any] = [None] * len(args)
        with tqdm(total=len(args), desc=desc, unit="run") as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    try:
                        results[pending.pop(ref)] = ray.get(ref)
                    except ray.exceptions.RayTaskError as err:
                        cause = getattr(err, "cause", None)
                        raise (cause if isinstance(cause, Exception) else err) from None
                    bar.update()
        return results
    finally:
        if started_here:
            ray.shutdown()
