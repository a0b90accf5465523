"""The cost-model interface: how long one model iteration (a batch) takes on one replica.

The simulator's executor calls `batch_time` once per iteration, so it must be cheap (a few
microseconds); reports call `breakdown` once on a whole batches table to show where time goes.
Implementations are built by name through `build_cost_model`, so a config can pick one;
`cost_model_for` is what the commands call: it resolves `cost_model: auto`, finds the profile a
measured model reads, and builds it.
"""
from __future__ import annotations

import abc
import functools
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
    op_sources: dict[str, str]  # per `breakdown` op: where its time comes from, for summaries and reports

    @abc.abstractmethod
    def batch_time(self, batch: Any) -> float:
        """Seconds for one iteration. `batch` has the `BatchShape` attributes (a Batch or a BatchShape)."""

    @abc.abstractmethod
    def breakdown(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Seconds per operation for many batches, given arrays named as `BatchShape.FIELDS`.

        For each batch the operations sum to its `batch_time`.
        """


def check_time_scale(time_scale: float) -> float:
    if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)) or not time_scale > 0:
        raise ValueError(f"cost_model.time_scale={time_scale!r} must be a number > 0 (1: as modelled)")
    return float(time_scale)


def scale_note(time_scale: float) -> str:
    return "" if time_scale == 1.0 else f"; every time x {time_scale:g} (cost_model.time_scale)"


# The engine term's breakdown columns: by token count, by sampled rows (requests), by decode count.
ENGINE_OPS = ("engine_iteration", "engine_requests", "engine_decodes")


def engine_sources(engine: Any) -> dict[str, str]:
    """`op_sources` entries of the engine term's breakdown columns."""
    return {op: f"engine model: {engine.label}" for op in ENGINE_OPS}


# name -> "module:callable(model, hardware, tp, **options) -> CostModel". Imported on first use,
# so that this interface does not import its implementations.
_FACTORIES: dict[str, str] = {
    "analytical": "profiler.analytical:AnalyticalCostModel",
    "public": "profiler.public:PublicFitCostModel",
    "fitted": "profiler.fitted:FittedCostModel",
    "transfer": "profiler.transfer:TransferCostModel",
}
NAMES = ("auto", *_FACTORIES)
MEASURED = ("fitted", "transfer")  # the models that read a measured profile (`profile_dir=`)
HARDWARE_CONF = REPO_ROOT / "conf" / "hardware"


def build_cost_model(model: ModelSpec, hardware: HardwareSpec, tp: int, name: str = "analytical",
                     **options: Any) -> CostModel:
    if name not in _FACTORIES:
        raise ValueError(f"cost_model={name!r} is unknown; use one of {list(NAMES)} (cost_model=<name>)")
    module, attr = _FACTORIES[name].split(":")
    built = getattr(importlib.import_module(module), attr)(model, hardware, tp, **options)
    built.label += f"; engine term: {built.engine.label}"
    return built


def cost_model_for(model: ModelSpec, hardware_cfg: Mapping[str, Any], tp: int,
                   requested: str | Mapping[str, Any] = "auto", *, profile_dir: str | Path | None = None,
                   cache_dir: str | Path | None = None, data_dir: Path | None = None,
                   conf_dir: Path = HARDWARE_CONF, **options: Any) -> CostModel:
    """The cost model a config asks for (`cost_model:` a name or `{name, time_scale}`), built.

    `auto` resolves, best first: a profile of this GPU measured with `python -m profiler`
    ("fitted"), this GPU's fit to public measurements ("public"), a transfer from another GPU's
    profile or public fit ("transfer"), else "analytical" (`resolve_cost_model_name`). With
    `profile_dir` (a directory written by `python -m profiler`), "auto" means "fitted" if it was
    measured for this hardware, else "transfer". `cache_dir` (fitted laws) goes to the profile
    models only; `data_dir` (the all-reduce tables) and `options` (engine) to any. Every defect is
    one ValueError or FileNotFoundError line.
    """
    hardware = HardwareSpec.from_config(hardware_cfg)
    requested, time_scale = _name_and_scale(requested)
    options["time_scale"] = time_scale
    if profile_dir is None:
        name = resolve_cost_model_name(hardware_cfg, requested, conf_dir, model)
        profile_dir = shipped_profile_dir(hardware_cfg, conf_dir) if name in MEASURED else None
    else:
        profile_dir = Path(profile_dir)
        name = requested
        if requested == "auto":
            name = "fitted" if _measured_for(profile_dir) == hardware.name else "transfer"
    if name == "transfer" and profile_dir is None:  # no profile anywhere: carry a public fit over
        source = _public_source(hardware_cfg, conf_dir)
        if source is None:
            raise ValueError("cost_model=transfer needs a measured profile or a public fit of another GPU, and "
                             "no conf/hardware config has one; use cost_model=analytical")
        return build_cost_model(model, hardware, tp, name="public", data_dir=data_dir, source=source, **options)
    if name in MEASURED:
        if profile_dir is None:
            raise ValueError(f"cost_model={name} needs a measured profile, and no conf/hardware config "
                             "ships one yet (profile: null); use cost_model=public or analytical, or run the "
                             "profiler on a GPU (docs/profiler.md)")
        options.update(profile_dir=profile_dir, cache_dir=cache_dir)
    return build_cost_model(model, hardware, tp, name=name, data_dir=data_dir, **options)


def _name_and_scale(requested: str | Mapping[str, Any]) -> tuple[str, float]:
    if isinstance(requested, Mapping):
        extra = sorted(set(requested) - {"name", "time_scale"})
        if extra:
            raise ValueError(f"cost_model has unknown keys {extra}; it takes name (one of {list(NAMES)}) "
                             "and time_scale")
        return str(requested.get("name", "auto")), check_time_scale(requested.get("time_scale", 1.0))
    return str(requested), 1.0


# ---- which model `cost_model: auto` means ------------------------------------------------------
def resolve_cost_model_name(hardware_cfg: Mapping[str, Any], requested: str, conf_dir: Path = HARDWARE_CONF,
                            model: ModelSpec | None = None) -> str:
    """`auto` -> "fitted" if the hardware config ships a measured profile (its `profile:` key) and
    the model is one the backend runs (Llama), "public" if it names a public fit (`public_fit:`),
    "transfer" if another hardware config ships either, else "analytical". Any other request is
    returned unchanged (`build_cost_model` checks the name)."""
    if requested != "auto":
        return requested
    llama = model is None or model.is_llama  # the profiles time the backend's Llama ops
    if llama and _own_profile(hardware_cfg) is not None:
        return "fitted"
    if hardware_cfg.get("public_fit"):
        return "public"
    if (llama and _transfer_source(hardware_cfg, conf_dir) is not None) or _public_source(hardware_cfg, conf_dir):
        return "transfer"
    return "analytical"


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


def hardware_configs(conf_dir: Path) -> list[dict[str, Any]]:
    """Every hardware config in `conf_dir`, by file name (read once per content of the folder)."""
    paths = sorted(Path(conf_dir).glob("*.yaml"))
    return _read_configs(tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths))


@functools.lru_cache(maxsize=8)
def _read_configs(files: tuple[tuple[str, int, int], ...]) -> list[dict[str, Any]]:
    from omegaconf import OmegaConf  # yaml of the other configs; only `auto` and transfers read them

    return [OmegaConf.to_container(OmegaConf.load(path)) for path, _, _ in files]


def _transfer_source(hardware_cfg: Mapping[str, Any], conf_dir: Path) -> Path | None:
    for other in hardware_configs(conf_dir):
        if other.get("name") != hardware_cfg.get("name"):
            found = _own_profile(other)
            if found is not None:
                return found
    return None


def _public_source(hardware_cfg: Mapping[str, Any], conf_dir: Path) -> HardwareSpec | None:
    """The hardware config with a public fit whose datasheet is nearest this one's (bf16 peak and
    HBM bandwidth, by log ratio): the GPU a transfer carries over from."""
    target = HardwareSpec.from_config(hardware_cfg)
    candidates = []
    for order, cfg in enumerate(hardware_configs(conf_dir)):
        other = HardwareSpec.from_config(cfg)
        if other.public_fit and other.name != target.name:
            distance = (abs(np.log(other.peak_flops / target.peak_flops))
                        + abs(np.log(other.mem_bandwidth / target.mem_bandwidth)))
            candidates.append((distance, order, other))
    return min(candidates)[2] if candidates else None
