"""The `workload` config group, checked and turned into typed specs.

Every problem is reported as one WorkloadConfigError line: the key (as a hydra override path),
the value found, and what is allowed. Keys that only some kinds use may be present (or null) for
the others, so one yaml file can carry them all; keys nobody knows are rejected (typos).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from .errors import WorkloadConfigError

LENGTH_KINDS = ("arxiv", "trace", "fixed", "uniform")
ARRIVAL_KINDS = ("static", "poisson", "gamma")
DEFAULT_SEED = 42  # the reference's default.yml

_TOP_KEYS = ("num_requests", "max_tokens", "seed", "lengths", "arrival")
_LENGTH_KEYS = ("kind", "path", "prefill_scale", "decode_scale", "prefill", "decode",
                "min_prefill", "max_prefill", "min_decode", "max_decode")
_ARRIVAL_KEYS = ("kind", "qps", "cv")


@dataclass(frozen=True)
class LengthSpec:
    kind: str
    path: str | None = None          # trace: CSV file
    prefill_scale: float = 1.0
    decode_scale: float = 1.0
    prefill: int | None = None       # fixed
    decode: int | None = None        # fixed
    min_prefill: int | None = None   # uniform, inclusive bounds
    max_prefill: int | None = None
    min_decode: int | None = None
    max_decode: int | None = None


@dataclass(frozen=True)
class ArrivalSpec:
    kind: str
    qps: float | None = None   # poisson, gamma
    cv: float | None = None    # gamma


@dataclass(frozen=True)
class WorkloadSpec:
    num_requests: int
    max_tokens: int
    seed: int
    lengths: LengthSpec
    arrival: ArrivalSpec


def parse_workload_config(cfg: Mapping) -> WorkloadSpec:
    top = _section(cfg, "workload", _TOP_KEYS)
    lengths = _parse_lengths(_section(_required(top, "workload", "lengths"),
                                      "workload.lengths", _LENGTH_KEYS))
    arrival = _parse_arrival(_section(_required(top, "workload", "arrival"),
                                      "workload.arrival", _ARRIVAL_KEYS))
    seed = top.get("seed")
    return WorkloadSpec(
        num_requests=_int(top, "workload", "num_requests", minimum=1),
        # 2 = one prompt token + one output token, the smallest request there is.
        max_tokens=_int(top, "workload", "max_tokens", minimum=2),
        # RandomState accepts seeds in [0, 2**32).
        seed=DEFAULT_SEED if seed is None else _int(top, "workload", "seed", minimum=0,
                                                     maximum=2**32 - 1),
        lengths=lengths,
        arrival=arrival,
    )


def _parse_lengths(section: dict[str, Any]) -> LengthSpec:
    where = "workload.lengths"
    kind = _kind(section, where, LENGTH_KINDS)
    scales = {key: _positive_real(section, where, key, default=1.0)
              for key in ("prefill_scale", "decode_scale")}
    if kind == "trace":
        path = _required(section, where, "path")
        if not isinstance(path, str) or not path:
            raise _bad(where, "path", path, "a CSV file path")
        return LengthSpec(kind, path=path, **scales)
    if kind == "fixed":
        return LengthSpec(kind, prefill=_int(section, where, "prefill", minimum=1),
                          decode=_int(section, where, "decode", minimum=1), **scales)
    if kind == "uniform":
        bounds = {key: _int(section, where, key, minimum=1)
                  for key in ("min_prefill", "max_prefill", "min_decode", "max_decode")}
        for part in ("prefill", "decode"):
            if bounds[f"max_{part}"] < bounds[f"min_{part}"]:
                raise _bad(where, f"max_{part}", bounds[f"max_{part}"],
                           f"an integer >= min_{part} ({bounds[f'min_{part}']})")
        return LengthSpec(kind, **bounds, **scales)
    return LengthSpec(kind, **scales)


def _parse_arrival(section: dict[str, Any]) -> ArrivalSpec:
    where = "workload.arrival"
    kind = _kind(section, where, ARRIVAL_KINDS)
    if kind == "static":
        return ArrivalSpec(kind)
    qps = _positive_real(section, where, "qps")
    if kind == "poisson":
        return ArrivalSpec(kind, qps=qps)
    return ArrivalSpec(kind, qps=qps, cv=_positive_real(section, where, "cv"))


def _section(value: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise WorkloadConfigError(f"{where} = {value!r}: expected a mapping with keys "
                                  f"{', '.join(allowed)}")
    unknown = [key for key in value if key not in allowed]
    if unknown:
        key = unknown[0]
        raise WorkloadConfigError(f"{where}.{key} = {value[key]!r}: unknown key; allowed keys: "
                                  f"{', '.join(allowed)}")
    return dict(value)


def _required(section: dict[str, Any], where: str, key: str) -> Any:
    value = section.get(key)
    if value is None:
        raise WorkloadConfigError(f"{where}.{key} is missing; set {where}.{key}=...")
    return value


def _kind(section: dict[str, Any], where: str, allowed: tuple[str, ...]) -> str:
    kind = _required(section, where, "kind")
    if kind not in allowed:
        raise _bad(where, "kind", kind, f"one of {', '.join(allowed)}")
    return kind


def _int(section: dict[str, Any], where: str, key: str, minimum: int,
         maximum: int | None = None) -> int:
    value = _required(section, where, key)
    # bool is an Integral in Python; `true` for a token count is a config mistake.
    if (not isinstance(value, Integral) or isinstance(value, bool) or value < minimum
            or (maximum is not None and value > maximum)):
        limit = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise _bad(where, key, value, f"an integer {limit}")
    return int(value)


def _positive_real(section: dict[str, Any], where: str, key: str,
                   default: float | None = None) -> float:
    value = section.get(key)
    if value is None and default is not None:
        return default
    if value is None:
        raise WorkloadConfigError(f"{where}.{key} is missing; set {where}.{key}=... (a number > 0)")
    if (not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value)
            or value <= 0):
        raise _bad(where, key, value, "a finite number > 0")
    return float(value)


def _bad(where: str, key: str, value: Any, allowed: str) -> WorkloadConfigError:
    return WorkloadConfigError(f"{where}.{key} = {value!r}: must be {allowed}")
