"""The cost-model interface: how long one model iteration (a batch) takes on one replica.

The simulator's executor calls `batch_time` once per iteration, so it must be cheap (a few
microseconds); reports call `breakdown` once on a whole batches table to show where time goes.
Implementations are built by name through `build_cost_model`, so a config can pick one.
"""
from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping
from pathlib import Path
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
    "fitted": "profiler.fitted:FittedCostModel",
    "transfer": "profiler.transfer:TransferCostModel",
}
REPO_ROOT = Path(__file__).resolve().parents[1]
HARDWARE_CONF = REPO_ROOT / "conf" / "hardware"


def register_cost_model(name: str, target: str) -> None:
    """Make `build_cost_model(..., name=name)` call `target` ("package.module:callable")."""
    _FACTORIES[name] = target


def build_cost_model(model: ModelSpec, hardware: HardwareSpec, tp: int, name: str = "analytical",
                     **options: Any) -> CostModel:
    if name not in _FACTORIES:
        raise ValueError(f"cost_model.name={name!r} is unknown; use one of {sorted(_FACTORIES)}")
    module, attr = _FACTORIES[name].split(":")
    return getattr(importlib.import_module(module), attr)(model, hardware, tp, **options)


# ---- which model `cost_model: auto` means ------------------------------------------------------
def resolve_cost_model_name(hardware_cfg: Mapping[str, Any], requested: str,
                            conf_dir: Path = HARDWARE_CONF) -> str:
    """`auto` -> "fitted" if the hardware config ships a measured profile (its `profile:` key),
    "transfer" if another hardware config in `conf_dir` ships one, else "analytical". Any other
    request is returned unchanged (`build_cost_model` checks the name)."""
    if requested != "auto":
        return requested
    if _own_profile(hardware_cfg) is not None:
        return "fitted"
    return "transfer" if _transfer_source(hardware_cfg, conf_dir) is not None else "analytical"


def shipped_profile_dir(hardware_cfg: Mapping[str, Any], conf_dir: Path = HARDWARE_CONF) -> Path | None:
    """The profile a "fitted" or "transfer" model of this hardware reads: its own, else the one
    shipped for another hardware (first config by file name); None if no config ships one. Pass
    it as `build_cost_model(..., profile_dir=...)`."""
    return _own_profile(hardware_cfg) or _transfer_source(hardware_cfg, conf_dir)


def _own_profile(hardware_cfg: Mapping[str, Any]) -> Path | None:
    """The `profile:` of a hardware config (relative to the repository), checked to exist."""
    value = hardware_cfg.get("profile")
    if value is None:
        return None
    path = Path(value) if Path(value).is_absolute() else REPO_ROOT / value
    if not (path / "profile.csv").is_file():
        raise FileNotFoundError(f"hardware.profile={value!r} ({hardware_cfg.get('name')}) has no "
                                f"profile.csv at {path}; restore the profile or set profile: null")
    return path


def _transfer_source(hardware_cfg: Mapping[str, Any], conf_dir: Path) -> Path | None:
    from omegaconf import OmegaConf  # yaml of the other configs; only `auto` reads them

    for path in sorted(Path(conf_dir).glob("*.yaml")):
        other = OmegaConf.to_container(OmegaConf.load(path))
        if other.get("name") != hardware_cfg.get("name"):
            found = _own_profile(other)
            if found is not None:
                return found
    return None
