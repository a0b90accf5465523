"""Fan independent runs out as Ray tasks, with a progress bar; or run them in order in-process.

A private local Ray is the default; an `address` joins an existing cluster (`ray start --head`).
Ctrl-C stops the runs and shuts Ray down (never half-way through starting or stopping it). A task's
exception is re-raised here as itself (not wrapped in Ray's traceback), so a bad config still
ends as one line. Tasks are never retried: a run that failed once fails again.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Callable, Iterator, Mapping, Sequence

from tqdm import tqdm

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_all(task: Callable[[dict], Any], configs: Sequence[dict], ray_cfg: Mapping[str, Any],
            desc: str = "runs") -> list[Any]:
    """`task(config)` for every config, results in the same order; the first failure is raised."""
    if not ray_cfg.get("enabled", True) or len(configs) <= 1:
        return [task(c) for c in tqdm(configs, desc=desc, unit="run")]
    return ray_map(task, [(c,) for c in configs], ray_cfg, desc)


@contextlib.contextmanager
def ray_session(ray_cfg: Mapping[str, Any]) -> Iterator[Any]:
    """Ray for the block: the one already initialised, else one started here (local, or joining
    `ray_cfg["address"]`) and shut down after it. Yields the `ray` module."""
    import ray  # only where runs fan out: the serving model never needs it

    started_here = not ray.is_initialized()
    try:
        if started_here:
            options = init_options(ray_cfg)
            # Joining a cluster starts nothing here, and may retry for a minute: Ctrl-C stays live.
            with ctrl_c_deferred() if options["address"] == "local" else contextlib.nullcontext():
                try:
                    ray.init(**options)
                except ConnectionError as exc:
                    where = f"{ray_cfg.get('config_key', 'ray')}.address={options['address']}"
                    raise ValueError(f"{where}: cannot join that Ray cluster ({str(exc).splitlines()[0]}); "
                                     "check the address, or leave it null for a local Ray") from None
        yield ray
    finally:
        if started_here:
            with ctrl_c_deferred():
                ray.shutdown()


def ray_map(fn: Callable[..., Any], args: Sequence[tuple], ray_cfg: Mapping[str, Any], desc: str) -> list[Any]:
    """`fn(*a)` for each tuple in `args` as Ray tasks; results in order. `ray_cfg`: address, num_cpus."""
    with ray_session(ray_cfg) as ray:
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


def init_options(ray_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`ray.init` arguments: a private local Ray unless `address` names a cluster (`config_key`:
    where the user set it, for error messages: "ray" or "hydra.launcher"). Without an
    address Ray would attach to any cluster already running on the machine (or named by
    RAY_ADDRESS), so "local" is explicit."""
    options: dict[str, Any] = {"include_dashboard": False, "configure_logging": False,
                               # workers import this repository's packages
                               "runtime_env": {"env_vars": {"PYTHONPATH": REPO_ROOT}}}
    if ray_cfg.get("address"):
        options["address"] = ray_cfg["address"]
    else:
        options["address"] = "local"
        options["num_cpus"] = ray_cfg.get("num_cpus") or os.cpu_count()
    return options


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) while Ray starts or stops and raise it once that step is done: an
    interrupt half-way through either leaves Ray's processes running, orphaned."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can set signal handlers (and receives SIGINT)
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
