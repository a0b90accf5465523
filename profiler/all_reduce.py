"""All-reduce time as a function of message size, for one number of tensor-parallel workers.

Preferred source: a measured NCCL table (`../shared/data/<gpu>_pairwise_nvlink_all_reduce.csv`,
`size` = fp16 elements, times in ms), interpolated log-log over message size. Without that file the
model falls back on alpha-beta constants committed in the hardware yaml, fitted from the same
table by `python -m profiler.all_reduce conf/hardware/<name>.yaml`, which prints the yaml block.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from simulator.core.paths import DEFAULT_SHARED_DATA_DIR

from .hardware import AllReduceSpec, AlphaBeta, HardwareSpec

_CSV_ELEMENT_BYTES = 2  # the table's `size` counts fp16 elements


def load_curve(csv_path: Path, num_workers: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Measured (bytes, seconds) for `num_workers`, sorted by size and made monotone; None if absent.

    The median over repetitions per size, then an isotonic (non-decreasing) least-squares fit:
    small messages are noisy (the A100 table alternates between ~7 us and ~60 us at the same
    sizes), and a larger message can never be cheaper than a smaller one, so the monotone fit
    averages the noise without letting it make a bigger batch faster.
    """
    by_size: dict[int, list[float]] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if int(row["num_workers"]) == num_workers and row["collective"] == "all_reduce":
                by_size.setdefault(int(row["size"]), []).append(float(row["time_stats.all_reduce.median"]))
    if not by_size:
        return None
    sizes = sorted(by_size)
    times_ms = [float(np.median(by_size[s])) for s in sizes]
    return (np.array(sizes, dtype=float) * _CSV_ELEMENT_BYTES,
            np.array(_isotonic(times_ms)) * 1e-3)


def _isotonic(values: list[float]) -> list[float]:
    """Pool-adjacent-violators: the non-decreasing sequence closest to `values` in least squares."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, c2), (m1, c1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return [m for m, c in blocks for _ in range(int(c))]


def fit_alpha_beta(nbytes: np.ndarray, seconds: np.ndarray, num_workers: int) -> AlphaBeta:
    """Least squares of t = alpha + bytes/bw in *relative* error, so small messages count as much
    as large ones (plain least squares would fit only the multi-millisecond end)."""
    design = np.stack([np.ones_like(nbytes), nbytes], axis=1) / seconds[:, None]
    (alpha, inv_bw), *_ = np.linalg.lstsq(design, np.ones_like(seconds), rcond=None)
    return AlphaBeta(num_workers, alpha_us=max(alpha, 0.0) * 1e6, bandwidth_gbps=1e-9 / inv_bw)


class AllReduceModel:
    """Seconds for an all-reduce of a given number of bytes (vectorised over numpy arrays)."""

    def __init__(self, source: str, nbytes: np.ndarray | None = None, seconds: np.ndarray | None = None,
                 alpha_beta: AlphaBeta | None = None):
        self.source = source  # one line for labels: where the numbers come from
        self._log_bytes = None if nbytes is None else np.log(nbytes)
        self._log_seconds = None if seconds is None else np.log(seconds)
        self._alpha_beta = alpha_beta

    @classmethod
    def for_workers(cls, spec: AllReduceSpec, num_workers: int, data_dir: Path | None = None,
                    ) -> "AllReduceModel":
        data_dir = DEFAULT_SHARED_DATA_DIR if data_dir is None else Path(data_dir)
        if spec.csv is not None and (data_dir / spec.csv).is_file():
            curve = load_curve(data_dir / spec.csv, num_workers)
            if curve is not None:
                return cls(f"all-reduce from measured table {spec.csv} ({num_workers} GPUs)", *curve)
        for entry in spec.fallback:
            if entry.num_workers == num_workers:
                return cls(f"all-reduce alpha-beta fallback ({entry.alpha_us:.1f} us + "
                           f"bytes / {entry.bandwidth_gbps:.1f} GB/s, {num_workers} GPUs)",
                           alpha_beta=entry)
        raise ValueError(
            f"hardware.all_reduce has no data for num_workers={num_workers}: csv={spec.csv!r} in "
            f"{data_dir} is absent or lacks that count, and fallback covers "
            f"{[e.num_workers for e in spec.fallback]}; add a fallback entry or choose another tp")

    def seconds(self, nbytes: np.ndarray) -> np.ndarray:
        nbytes = np.asarray(nbytes, dtype=float)
        if self._alpha_beta is not None:
            ab = self._alpha_beta
            return ab.alpha_us * 1e-6 + nbytes / (ab.bandwidth_gbps * 1e9)
        # Below the table: the smallest message's time (latency-bound). Above it: time grows in
        # proportion to size (log-log slope 1, bandwidth-bound), from the largest measurement.
        logb = np.log(np.maximum(nbytes, 1.0))
        inside = np.interp(logb, self._log_bytes, self._log_seconds)
        above = self._log_seconds[-1] + (logb - self._log_bytes[-1])
        return np.exp(np.where(logb > self._log_bytes[-1], above, inside))

    def all_gather_seconds(self, gathered_nbytes: np.ndarray) -> np.ndarray:
        """Seconds for an all-gather that leaves `gathered_nbytes` on each rank: it moves as much
        data as an all-reduce of half that many bytes (ring algorithms), so it is charged that."""
        return self.seconds(np.asarray(gathered_nbytes, dtype=float) / 2)


def _refit(hardware_yaml: Path, data_dir: Path) -> str:
    """The `fallback:` yaml block for a hardware config, fitted from its measured csv."""
    from omegaconf import OmegaConf  # only this command-line tool reads yaml itself

    spec = HardwareSpec.from_config(OmegaConf.to_container(OmegaConf.load(hardware_yaml))).all_reduce
    if spec.csv is None or not (data_dir / spec.csv).is_file():
        raise SystemExit(f"{hardware_yaml}: all_reduce.csv={spec.csv!r} not found in {data_dir}")
    lines = [f"  # fitted by `python -m profiler.all_reduce {hardware_yaml}` from ../shared/data/{spec.csv}",
             "  # (microsoft/vidur data/profiling/network, MIT): relative least squares over the measured sizes",
             "  fallback:"]
    with open(data_dir / spec.csv, newline="") as f:
        counts = sorted({int(row["num_workers"]) for row in csv.DictReader(f)})
    for workers in counts:
        curve = load_curve(data_dir / spec.csv, workers)
        ab = fit_alpha_beta(*curve, workers)
        error = np.abs(AllReduceModel("", alpha_beta=ab).seconds(curve[0]) / curve[1] - 1)
        lines.append(f"    - {{num_workers: {workers}, alpha_us: {ab.alpha_us:.1f}, "
                     f"bandwidth_gbps: {ab.bandwidth_gbps:.1f}}}  # error vs table: median "
                     f"{np.median(error):.0%}, worst {error.max():.0%} at {curve[0][error.argmax()] / 1e6:.3g} MB")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=_refit.__doc__)
    parser.add_argument("hardware_yaml", type=Path, nargs="+")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_SHARED_DATA_DIR)
    args = parser.parse_args()
    for path in args.hardware_yaml:
        print(f"# {path}\n{_refit(path, args.data_dir)}")
