"""One GPU type as the cost models see it: datasheet peaks, modelling efficiencies, overheads.

Loaded from a `conf/hardware/<name>.yaml` mapping (a dict or an omegaconf DictConfig). Peaks are
datasheet figures; efficiencies and overheads are modelling assumptions documented in each yaml.
Every validation error is one line naming the key, its value and how to fix it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Efficiency:
    """Fractions of the datasheet peaks that real kernels reach."""
    matmul: float     # of peak bf16 FLOP/s, for the linear layers
    attention: float  # of peak bf16 FLOP/s, for attention kernels (lower than GEMMs: softmax, masking)
    memory: float     # of peak HBM bandwidth, for every bandwidth-bound kernel


@dataclass(frozen=True)
class AllReduceCurve:
    """All-reduce seconds at increasing message sizes for one GPU count: knots of a measured
    table's curve, interpolated log-log between them (profiler/all_reduce.py)."""
    num_workers: int
    nbytes: tuple[float, ...]
    seconds: tuple[float, ...]


TABLE_COLLECTIVES = ("all_reduce", "send_recv")


@dataclass(frozen=True)
class AllReduceSpec:
    table: str | None   # measured NCCL table, relative to the shared data dir (csv, or csv.gz)
    collective: str     # what the table measures: all_reduce, or send_recv (the all-reduce is derived)
    curves: tuple[AllReduceCurve, ...]  # committed knots made from the table (python -m profiler.all_reduce)

    @property
    def covered(self) -> list[int]:
        return sorted(c.num_workers for c in self.curves)


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    memory_gib: float
    peak_bf16_tflops: float   # dense, no sparsity
    mem_bandwidth_gbps: float  # HBM, GB/s (1e9 bytes/s)
    efficiency: Efficiency
    kernel_launch_floor_us: float
    cpu_overhead_ms: float
    all_reduce: AllReduceSpec
    profile: str | None = None  # a measured profile shipped in the repo (profiles/...), if any
    public_fit: str | None = None  # this GPU's fit to public measurements (profiler/calibration/public_<key>.json)

    @property
    def peak_flops(self) -> float:
        return self.peak_bf16_tflops * 1e12

    @property
    def mem_bandwidth(self) -> float:
        """Bytes per second."""
        return self.mem_bandwidth_gbps * 1e9

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "HardwareSpec":
        r = _Reader(cfg, "hardware")
        name = r.string("name", "a display name such as 'A100-80GB PCIe'")
        memory_gib = r.number("memory_gib", "the GPU memory in GiB, e.g. 80")
        peak = r.number("peak_bf16_tflops", "the datasheet dense bf16 peak, e.g. 312 for A100")
        bw = r.number("mem_bandwidth_gbps", "the datasheet HBM bandwidth in GB/s, e.g. 1935")
        e = r.section("efficiency")
        efficiency = Efficiency(
            matmul=e.fraction("matmul", "the share of peak that large bf16 GEMMs reach, typ. 0.6-0.8"),
            attention=e.fraction("attention", "the share of peak attention kernels reach, typ. 0.4-0.7"),
            memory=e.fraction("memory", "the share of HBM bandwidth streaming kernels reach, typ. 0.7-0.9"),
        )
        e.no_extra()
        floor = r.number("kernel_launch_floor_us", "the shortest kernel time in microseconds, e.g. 5",
                         allow_zero=True)
        cpu = r.number("cpu_overhead_ms", "the per-iteration CPU time in milliseconds, e.g. 5",
                       allow_zero=True)
        a = r.section("all_reduce")
        table = a.optional_string("table", "a file inside the shared data dir, or null")
        collective = a.choice("collective", TABLE_COLLECTIVES)
        curves = tuple(_all_reduce_curve(entry) for entry in a.entries(
            "curves", "{num_workers, points: 'bytes:microseconds ...'} (python -m profiler.all_reduce writes them)"))
        workers = [c.num_workers for c in curves]
        if len(set(workers)) != len(workers):
            raise ValueError(f"hardware.all_reduce.curves={workers} lists a num_workers twice; "
                             "keep one entry per number of GPUs")
        a.no_extra()
        profile = r.optional_string("profile", "a profile folder inside the repository, or null")
        public_fit = r.optional_string("public_fit", "a GPU of profiler/calibration/public_<gpu>.json "
                                       "(a100, h100, a40), or null")
        r.no_extra()
        return cls(name, memory_gib, peak, bw, efficiency, floor, cpu, AllReduceSpec(table, collective, curves), profile,
                   public_fit)


def _all_reduce_curve(r: "_Reader") -> AllReduceCurve:
    workers = r.integer("num_workers", 2, "the GPU count the curve was measured for (1 GPU needs none)")
    # One string of space-separated `bytes:microseconds` pairs, not a yaml list: every config
    # composition loads each hardware yaml, and yaml and omegaconf take ~1 ms per list element.
    points = r.string("points", "the knots, 'bytes:microseconds' pairs separated by spaces")
    fix = "regenerate it with `python -m profiler.all_reduce conf/hardware/<name>.yaml`"
    try:
        nbytes, micros = zip(*((float(b), float(t)) for b, t in (pair.split(":") for pair in points.split())))
    except ValueError:
        nbytes = micros = ()
    if len(nbytes) < 2 or min(nbytes + micros) <= 0:
        raise ValueError(f"{r.where}.points must hold at least two 'bytes:microseconds' pairs of positive "
                         f"numbers, separated by spaces; {fix}")
    if any(b2 <= b1 for b1, b2 in zip(nbytes, nbytes[1:])) or any(t2 < t1 for t1, t2 in zip(micros, micros[1:])):
        raise ValueError(f"{r.where}.points must grow in bytes and never fall in time; {fix}")
    r.no_extra()
    return AllReduceCurve(workers, nbytes, tuple(t * 1e-6 for t in micros))


class _Reader:
    """Reads typed values out of one config mapping and remembers which keys it consumed."""

    def __init__(self, cfg: Any, where: str):
        if not isinstance(cfg, Mapping):
            raise ValueError(f"{where}={cfg!r} must be a mapping of keys to values")
        self.cfg, self.where, self.seen = cfg, where, set()

    def _get(self, key: str, fix: str) -> Any:
        self.seen.add(key)
        if key not in self.cfg:
            raise ValueError(f"{self.where}.{key} is missing; add {fix}")
        return self.cfg[key]

    def number(self, key: str, fix: str, allow_zero: bool = False) -> float:
        value = self._get(key, fix)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not (value >= 0 if allow_zero else value > 0):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{self.where}.{key}={value!r} must be a number {bound}; set it to {fix}")
        return float(value)

    def integer(self, key: str, minimum: int, fix: str) -> int:
        value = self._get(key, fix)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{self.where}.{key}={value!r} must be an integer >= {minimum}; set it to {fix}")
        return value

    def fraction(self, key: str, fix: str) -> float:
        value = self.number(key, fix)
        if value > 1:
            raise ValueError(f"{self.where}.{key}={value!r} must be in (0, 1]; set it to {fix}")
        return value

    def string(self, key: str, fix: str) -> str:
        value = self._get(key, fix)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{self.where}.{key}={value!r} must be a non-empty string; set it to {fix}")
        return value

    def optional_string(self, key: str, fix: str) -> str | None:
        self.seen.add(key)
        value = self.cfg.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{self.where}.{key}={value!r} must be a non-empty string or null; "
                             f"set it to {fix}")
        return value

    def section(self, key: str) -> "_Reader":
        return _Reader(self._get(key, "that section (see conf/hardware/*.yaml)"), f"{self.where}.{key}")

    def choice(self, key: str, choices: Sequence[str]) -> str:
        value = self._get(key, f"one of {list(choices)}")
        if value not in choices:
            raise ValueError(f"{self.where}.{key}={value!r} is not one of {list(choices)}; set one of them")
        return value

    def entries(self, key: str, shape: str) -> list["_Reader"]:
        self.seen.add(key)
        value = self.cfg.get(key) or []
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ValueError(f"{self.where}.{key}={value!r} must be a list of mappings {shape}")
        return [_Reader(v, f"{self.where}.{key}[{i}]") for i, v in enumerate(value)]

    def no_extra(self) -> None:
        for key in self.cfg:
            if key not in self.seen:
                raise ValueError(f"{self.where}.{key}={self.cfg[key]!r} is not a known key; remove it "
                                 f"or use one of {sorted(self.seen)}")
