"""The scheduler registry: policies by name, each in its own module."""
from __future__ import annotations

from typing import Any, Mapping

from .base import RequestRejectedError, Scheduler, SchedulerConfig, SchedulerStuckError
from .faster_transformer import FasterTransformerScheduler
from .orca import OrcaScheduler
from .sarathi import SarathiScheduler
from .vllm import VLLMScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls for cls in (VLLMScheduler, SarathiScheduler, OrcaScheduler, FasterTransformerScheduler)
}


def make_scheduler(name: str, config: SchedulerConfig | Mapping[str, Any], num_blocks: int) -> Scheduler:
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)} "
                         "(e.g. scheduler=sarathi)")
    if not isinstance(config, SchedulerConfig):
        config = SchedulerConfig.from_config(config)
    return SCHEDULERS[name](config, num_blocks)


__all__ = ["SCHEDULERS", "make_scheduler", "Scheduler", "SchedulerConfig", "RequestRejectedError",
           "SchedulerStuckError"]
