"""All-reduce time as a function of message size, for one number of tensor-parallel GPUs.

The numbers come from measured NCCL tables in the shared data dir (`hardware.all_reduce.table`, the
microsoft/vidur format: one row per GPU count, GPUs per node and message size; `size` in bytes,
times in ms). Only rows with every GPU in one node are read: tensor parallelism stays inside a node.
A table of send/recv times (a GPU with no all-reduce measurement) gives a ring all-reduce built from
them (`ring_all_reduce`).

Simulations read a compact copy of each curve committed in the hardware yaml (`all_reduce.curves`:
knots interpolated log-log, within 2% of the table at every measured size, checked by the tests), so
they give the same numbers with or without the shared data. A GPU count without a committed curve
is read from the table itself. `python -m profiler.all_reduce conf/hardware/<name>.yaml` rewrites the
yaml's `all_reduce:` section from its table.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import re
from pathlib import Path

import numpy as np

from simulator.core.paths import DEFAULT_SHARED_DATA_DIR

from .hardware import AllReduceSpec, HardwareSpec

KNOT_TOLERANCE = 0.015  # the knots' worst relative error against the table; the tests allow 2%
_SIGNIFICANT_DIGITS = 4  # of the committed microseconds: rounding moves a time by at most 0.05%
_SOURCE = "microsoft/vidur data/profiling/network at 7d47513 (MIT)"


def read_table(path: Path, collective: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per GPU count (all in one node), the measured (bytes, seconds) of `collective`, sorted by
    size and made monotone.

    The median over repetitions per size, then an isotonic (non-decreasing) least-squares fit:
    small messages are noisy (the A100 table alternates between ~7 us and ~60 us at the same
    sizes), and a larger message can never be cheaper than a smaller one, so the monotone fit
    averages the noise without letting it make a bigger batch faster. `size` is in bytes: Vidur's
    profiler records twice the element count of its fp16 buffer (`collectives_wrapper.py`), and
    its simulator divides by 2 x hidden size to get tokens.
    """
    by_count: dict[int, dict[int, list[float]]] = {}
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", newline="") as f:
        for row in csv.DictReader(f):
            workers = int(row["num_workers"])
            if row["collective"] == collective and int(row["devices_per_node"]) == workers:
                by_count.setdefault(workers, {}).setdefault(int(row["size"]), []).append(
                    float(row[f"time_stats.{collective}.median"]))
    curves = {}
    for workers, by_size in sorted(by_count.items()):
        sizes = sorted(by_size)
        times_ms = [float(np.median(by_size[s])) for s in sizes]
        curves[workers] = np.array(sizes, dtype=float), np.array(_isotonic(times_ms)) * 1e-3
    return curves


def _isotonic(values: list[float]) -> list[float]:
    """Pool-adjacent-violators: the non-decreasing sequence closest to `values` in least squares."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, c2), (m1, c1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return [m for m, c in blocks for _ in range(int(c))]


def ring_all_reduce(nbytes: np.ndarray, seconds: np.ndarray, num_workers: int) -> tuple[np.ndarray, np.ndarray]:
    """A ring all-reduce of n GPUs derived from send/recv times: a reduce-scatter then an
    all-gather, 2(n-1) steps in each of which every GPU sends a 1/n share of the message to its
    neighbour. Each step is priced as one measured send/recv of that share, its latency included,
    so a message of n x S bytes takes 2(n-1) x t(S). Links are assumed full duplex and the
    reduction free; see the hardware yaml for how far this is from measured all-reduces."""
    return nbytes * num_workers, 2 * (num_workers - 1) * seconds


def table_curves(spec: AllReduceSpec, data_dir: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per GPU count, the all-reduce (bytes, seconds) the table measures or, for a send/recv
    table, derives for the GPU counts its send/recv pairs were measured within one node."""
    curves = read_table(data_dir / spec.table, spec.collective)
    if spec.collective == "send_recv":
        return {n: ring_all_reduce(*curve, n) for n, curve in curves.items()}
    return curves


def source_of(spec: AllReduceSpec) -> str:
    """Where a spec's all-reduce times come from, for cost-model labels."""
    if spec.collective == "send_recv":
        return f"all-reduce derived from send/recv (ring: 2(n-1) send/recvs of size/n) in {spec.table}"
    return f"all-reduce measured in {spec.table}"


class AllReduceModel:
    """Seconds for an all-reduce of a given number of bytes (vectorised over numpy arrays)."""

    def __init__(self, source: str, nbytes: np.ndarray, seconds: np.ndarray):
        self.source = source  # one line for labels: where the numbers come from
        self._log_bytes = np.log(np.asarray(nbytes, dtype=float))
        self._log_seconds = np.log(np.asarray(seconds, dtype=float))

    @classmethod
    def for_workers(cls, spec: AllReduceSpec, num_workers: int, data_dir: Path | None = None,
                    ) -> "AllReduceModel":
        """The committed curve for this GPU count, else the table's; a count neither covers is a
        one-line error listing the counts that are covered."""
        for curve in spec.curves:
            if curve.num_workers == num_workers:
                return cls(f"{source_of(spec)} ({num_workers} GPUs, committed curve)", curve.nbytes, curve.seconds)
        data_dir = DEFAULT_SHARED_DATA_DIR if data_dir is None else Path(data_dir)
        present = spec.table is not None and (data_dir / spec.table).is_file()
        measured = table_curves(spec, data_dir) if present else {}
        if num_workers in measured:
            return cls(f"{source_of(spec)} ({num_workers} GPUs)", *measured[num_workers])
        covered = sorted({*spec.covered, *measured})
        raise ValueError(
            f"parallel.tp={num_workers} needs an all-reduce of {num_workers} GPUs and hardware.all_reduce "
            f"covers {covered or 'none'} GPUs (committed curves {spec.covered}, table {spec.table!r} "
            f"{'read from' if present else 'absent from'} {data_dir}); choose parallel.tp from "
            f"{[1, *covered]} or a hardware config that covers {num_workers} GPUs")

    def seconds(self, nbytes: np.ndarray) -> np.ndarray:
        # Below the table: the smallest message's time (latency-bound). Above it: time grows in
        # proportion to size (log-log slope 1, bandwidth-bound), from the largest measurement.
        logb = np.log(np.maximum(np.asarray(nbytes, dtype=float), 1.0))
        inside = np.interp(logb, self._log_bytes, self._log_seconds)
        above = self._log_seconds[-1] + (logb - self._log_bytes[-1])
        return np.exp(np.where(logb > self._log_bytes[-1], above, inside))

    def all_gather_seconds(self, gathered_nbytes: np.ndarray) -> np.ndarray:
        """Seconds for an all-gather that leaves `gathered_nbytes` on each rank: it moves as much
        data as an all-reduce of half that many bytes (ring algorithms), so it is charged that."""
        return self.seconds(np.asarray(gathered_nbytes, dtype=float) / 2)


def knots(nbytes: np.ndarray, seconds: np.ndarray, tolerance: float = KNOT_TOLERANCE) -> list[int]:
    """Indices of the measured points to keep so that log-log interpolation between them stays
    within `tolerance` (relative) of every measured point: from each kept point, the farthest
    next point whose straight segment (in log-log) misses no point in between by more."""
    log_b, log_t = np.log(nbytes), np.log(seconds)
    limit = np.log1p(tolerance)
    kept = [0]
    while kept[-1] < len(nbytes) - 1:
        start, best = kept[-1], kept[-1] + 1
        for end in range(start + 2, len(nbytes)):
            span = slice(start, end + 1)
            line = log_t[start] + (log_t[end] - log_t[start]) * (log_b[span] - log_b[start]) / (log_b[end] - log_b[start])
            if np.abs(line - log_t[span]).max() <= limit:
                best = end
        kept.append(best)
    return kept


def _rounded_us(seconds: float) -> float:
    return float(f"{seconds * 1e6:.{_SIGNIFICANT_DIGITS}g}")


def curves_block(spec: AllReduceSpec, data_dir: Path, command: str) -> str:
    """The yaml `all_reduce:` section for `spec`: its table and collective, and the knots of each
    GPU count's curve, with the worst error of the written numbers against the table."""
    lines = ["all_reduce:",
             f"  table: {spec.table}  # in ../shared/data: {_SOURCE}",
             f"  collective: {spec.collective}  # what the table measures: all_reduce, or send_recv "
             "(the all-reduce is then derived, profiler/all_reduce.py)",
             f"  # Written by `{command}`:",
             "  # per GPU count, bytes:microseconds knots of the table's median time per size, made",
             "  # non-decreasing; interpolated log-log they are within 2% of it at every measured size,",
             "  # so runs with and without ../shared give the same numbers.",
             "  curves:"]
    for workers, (nbytes, seconds) in table_curves(spec, data_dir).items():
        kept = knots(nbytes, seconds)
        points = [(int(nbytes[i]), _rounded_us(seconds[i])) for i in kept]
        written = AllReduceModel("", [b for b, _ in points], [t * 1e-6 for _, t in points])
        worst = np.abs(written.seconds(nbytes) / seconds - 1).max()
        lines.append(f"    - num_workers: {workers}  # {len(points)} knots, worst {worst:.1%} off the "
                     f"table's {len(nbytes)} sizes")
        lines.extend(_wrapped("      points: >-", [f"{b}:{t:g}" for b, t in points], "        "))
    return "\n".join(lines) + "\n"


def _wrapped(head: str, items: list[str], indent: str, width: int = 110) -> list[str]:
    """`head`, then `items` separated by spaces on lines of `indent` (a folded yaml scalar)."""
    lines, line = [head], indent
    for item in items:
        if line != indent and len(line) + len(item) > width:
            lines.append(line.rstrip())
            line = indent
        line += item + " "
    return [*lines, line.rstrip()]


def rewrite_yaml(hardware_yaml: Path, data_dir: Path) -> str:
    """Replace the `all_reduce:` section of a hardware yaml (up to the next unindented line) with
    `curves_block`; everything else in the file stays as it is. Returns the new section."""
    from omegaconf import OmegaConf  # only this command-line tool reads yaml itself

    config = OmegaConf.to_container(OmegaConf.load(hardware_yaml))
    config["all_reduce"].pop("curves", None)  # replaced, so an outdated or broken one does not matter
    spec = HardwareSpec.from_config(config).all_reduce
    if spec.table is None or not (data_dir / spec.table).is_file():
        raise SystemExit(f"{hardware_yaml}: hardware.all_reduce.table={spec.table!r} not found in {data_dir}; "
                         "set it to a measured table there or pass --data-dir")
    text = hardware_yaml.read_text()
    section = re.search(r"^all_reduce:.*\n(?:[ \t]+.*\n)*", text, flags=re.MULTILINE)
    block = curves_block(spec, data_dir, f"python -m profiler.all_reduce {hardware_yaml}")
    hardware_yaml.write_text(text[:section.start()] + block + text[section.end():])
    return block


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=rewrite_yaml.__doc__)
    parser.add_argument("hardware_yaml", type=Path, nargs="+")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_SHARED_DATA_DIR)
    args = parser.parse_args()
    for path in args.hardware_yaml:
        print(f"# {path}\n{rewrite_yaml(path, args.data_dir)}")
