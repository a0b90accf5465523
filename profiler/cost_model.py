"""The cost-model interface: how long one model iteration (a batch) takes on one replica.

The simulator's executor calls `batch_time` once per iteration, so it must be cheap (a few
microseconds); reports call `breakdown` once on a whole batches table to show where time goes.
Implementations are built by name through `build_cost_model`, so a config can pick one.
"""
from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from simulator.core.model_spec import ModelSpec

from .hardware import HardwareSpec


class CostModel(abc.ABC):
    name: str   # short id, e.g. "analytical"
    label: str  # one line for reports: the method, the hardware, where the numbers come from

    @abc.abstractmethod
    def batch_time(self, batch: Any) -> float:
        """Seconds for one iteration. `batch` has the `BatchShape` attributes (a Batch or a BatchShape)."""

    @abc.abstractmethod
    def breakdown(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Seconds per operation for many batches, given arrays named as `BatchShape.FIELDS`.

        For each batch the operations sum to its `batch_time`.
        """


# name -> "module:callable(model, hardware, tp, **options) -> CostModel". Imported on first use,
# so that this interface does not import its implementations.
_FACTORIES: dict[str, str] = {
    "analytical": "profiler.analytical:AnalyticalCostModel",
}


def register_cost_model(name: str, target: str) -> None:
    """Make `build_cost_model(..., name=name)` call `target` ("package.module:callable")."""
    _FACTORIES[name] = target


def build_cost_model(model: ModelSpec, hardware: HardwareSpec, tp: int, name: str = "analytical",
                     **options: Any) -> CostModel:
    if name not in _FACTORIES:
        raise ValueError(f"cost_model.name={name!r} is unknown; use one of {sorted(_FACTORIES)}")
    module, attr = _FACTORIES[name].split(":")
    return getattr(importlib.import_module(module), attr)(model, hardware, tp, **options)
