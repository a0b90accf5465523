"""What a serving engine adds to every iteration beyond its GPU kernels: the engine term.

Kernel profiles leave out scheduling and input preparation on the CPU, per-request output
processing, sampling's Python side and launch gaps the GPU does not hide. That time belongs to the
engine being simulated (and the host it runs on), not to the GPU, so it is its own config group,
`engine_model`:

| choice | per iteration |
| --- | --- |
| `sarathi_artifact_a100` | fitted to whole-iteration times the published Sarathi-Serve artifact measured on Figure 1's setup (`profiler/engine_fit.py`); numbers and provenance in `profiler/calibration/engine_<name>.json` |
| `hardware` | the hardware config's assumed flat `cpu_overhead_ms` (what every run used before) |
| `none` | nothing: kernels and communication only |

The term is `per_iteration + per_token x tokens + per_request x requests + steps(decodes)`, where
`steps` interpolates extra time over the batch's decode count (log-spaced knots; nothing in a
batch without decodes) when the fit keeps it. The cost models tabulate it by token, sampled-row
and decode count, so it costs `batch_time` one list lookup.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulator.core.paths import REPO_ROOT

from .hardware import HardwareSpec

ENGINE_CALIBRATION_DIR = REPO_ROOT / "profiler" / "calibration"
CHOICES = ("sarathi_artifact_a100", "hardware", "none")


@dataclass(frozen=True)
class EngineModel:
    name: str
    label: str                              # one line for reports: what the term is and where it comes from
    per_iteration_s: float = 0.0
    per_token_s: float = 0.0
    per_request_s: float = 0.0
    step_decodes: tuple[float, ...] = ()    # knots (decode counts) of the interpolated extra time
    step_seconds: tuple[float, ...] = ()

    def iteration_seconds(self, tokens: Any) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=float)
        return self.per_iteration_s + self.per_token_s * tokens

    def request_seconds(self, requests: Any) -> np.ndarray:
        return self.per_request_s * np.asarray(requests, dtype=float)

    def decode_seconds(self, decodes: Any) -> np.ndarray:
        """The decode steps: interpolated over log(decodes), flat beyond the outer knots, 0 without decodes."""
        decodes = np.asarray(decodes, dtype=float)
        if not self.step_decodes:
            return np.zeros_like(decodes)
        steps = np.interp(np.log(np.maximum(decodes, 1.0)), np.log(self.step_decodes), self.step_seconds)
        return np.where(decodes > 0, steps, 0.0)

    @classmethod
    def flat(cls, hardware: HardwareSpec) -> "EngineModel":
        return cls("hardware", f"assumed flat {hardware.cpu_overhead_ms:g} ms/iteration "
                   f"(hardware config cpu_overhead_ms, {hardware.name})", hardware.cpu_overhead_ms * 1e-3)

    @classmethod
    def from_fit(cls, name: str, fit: Mapping[str, Any]) -> "EngineModel":
        t = fit["term"]
        return cls(name, fit["label"], t["per_iteration_s"], t["per_token_s"], t["per_request_s"],
                   tuple(t["step_decodes"]), tuple(t["step_seconds"]))


def engine_fit_path(name: str, directory: Path | None = None) -> Path:
    return Path(directory or ENGINE_CALIBRATION_DIR) / f"engine_{name}.json"


def engine_model_for(cfg: Mapping[str, Any] | str | None, hardware: HardwareSpec,
                     directory: Path | None = None) -> EngineModel:
    """The engine term a config asks for (`engine_model: {name: ...}` or a bare name)."""
    name = cfg.get("name") if isinstance(cfg, Mapping) else (cfg or "hardware")
    extra = sorted(set(cfg) - {"name"}) if isinstance(cfg, Mapping) else []
    if extra:
        raise ValueError(f"engine_model has unknown keys {extra}; it takes only name (one of {list(CHOICES)})")
    if name == "none":
        return EngineModel("none", "none (kernels and communication only)")
    if name == "hardware":
        return EngineModel.flat(hardware)
    path = engine_fit_path(str(name), directory)
    if name not in CHOICES or not path.is_file():
        raise ValueError(f"engine_model={name!r} is unknown; use one of {list(CHOICES)} (engine_model=<name>)")
    return EngineModel.from_fit(str(name), json.loads(path.read_text()))
