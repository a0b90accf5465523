"""The cost-model interface: how long one model iteration (a batch) takes on one replica.

The simulator's executor calls `batch_time` once per iteration, so it must be cheap (a few
microseconds); reports call `breakdown` once on a whole batches table to show where time goes.
Implementations are built by name through `build_cost_model`, so a config can pick one;
`cost_model_for` is what the commands call: it resolves `cost_model: auto`, finds the profile a
measured model reads, and builds it.
"""
from __future__ import annotations

import abc
import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from simulator.core.model_spec import ModelSpec
from simulator.core.paths import REPO_ROOT

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
MEASURED = ("fitted", "transfer")  # the models that read a measured profile (`profile_dir=`)
HARDWARE_CONF = REPO_ROOT / "conf" / "hardware"


def build_cost_model(model: ModelSpec, hardware: HardwareSpec, tp: int, name: str = "analytical",
                     **options: Any) -> CostModel:
    if name not in _FACTORIES:
        raise ValueError(f"cost_model={name!r} is unknown; use one of {sorted(_FACTORIES)} or auto")
    module, attr = _FACTORIES[name].split(":")
    return getattr(importlib.import_module(module), attr)(model, hardware, tp, **options)


def cost_model_for(model: ModelSpec, hardware_cfg: Mapping[str, Any], tp: int, requested: str = "auto", *,
                   profile_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                   data_dir: Path | None = None, conf_dir: Path = HARDWARE_CONF, **options: Any) -> CostModel:
    """The cost model a config asks for (`cost_model:`, "auto" or a name), built.

    Without `profile_dir`, "auto" resolves as `resolve_cost_model_name` says and a measured model
    reads the profile the hardware configs ship (`shipped_profile_dir`); with it (a directory
    written by `python -m profiler`), "auto" means "fitted" if it was measured for this hardware,
    else "transfer". `cache_dir` (fitted laws) goes to the measured models only; `data_dir` (the
    all-reduce tables) and `options` to any. Every defect is one ValueError or FileNotFoundError line.
    """
    hardware = HardwareSpec.from_config(hardware_cfg)
    if profile_dir is None:
        name = resolve_cost_model_name(hardware_cfg, requested, conf_dir)
        profile_dir = shipped_profile_dir(hardware_cfg, conf_dir) if name in MEASURED else None
    else:
        profile_dir = Path(profile_dir)
        name = requested
        if requested == "auto":
            name = "fitted" if _measured_for(profile_dir) == hardware.name else "transfer"
    if name in MEASURED:
        if profile_dir is None:
            raise ValueError(f"cost_model={name} needs a measured profile, and no conf/hardware config "
                             "ships one yet (profile: null); use cost_model=analytical or run the "
                             "profiler on a GPU (docs/profiler.md)")
        options.update(profile_dir=profile_dir, cache_dir=cache_dir)
    return build_cost_model(model, hardware, tp, name=name, data_dir=data_dir, **options)


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


def _measured_for(profile_dir: Path) -> str:
    """The name of the hardware a profile was measured for (its metadata.json)."""
    from .fit import PROFILE_METADATA  # light, but only a given profile needs it

    path = profile_dir / PROFILE_METADATA
    if not path.is_file():
        raise FileNotFoundError(f"profile {profile_dir} has no {PROFILE_METADATA}; give a directory "
                                "written by `python -m profiler`")
    return json.loads(path.read_text())["hardware"]["name"]


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
