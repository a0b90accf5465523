"""The everyday run's whole wall time: `python -m simulator workload=arxiv_trace
workload.num_requests=10000` (start-up, workload, event loop, tables and every file), repeated.

    python bench/everyday.py             # 7 runs
    python bench/everyday.py --runs 15 --requests 10000

Prints each run's wall and CPU seconds and their median. Needs the arXiv trace in
../shared/data. Wall time on a busy machine is an upper bound: compare the CPU seconds, and
medians over runs, across versions.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(num_requests: int, out_dir: Path) -> tuple[float, float]:
    """(wall s, CPU s) of one whole `python -m simulator` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "simulator", "workload=arxiv_trace",
                          f"workload.num_requests={num_requests}", f"hydra.run.dir={out_dir}"],
                         cwd=REPO, capture_output=True, text=True)
    if run.returncode:  # the simulator's own one-line error
        sys.exit(run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}")
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=positive, default=7)
    parser.add_argument("--requests", type=positive, default=10_000)
    args = parser.parse_args()
    walls, cpus = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            wall, cpu = one_run(args.requests, Path(tmp) / f"run{i}")
            walls.append(wall)
            cpus.append(cpu)
            print(f"run {i + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    print(f"{args.requests} arXiv requests, {args.runs} runs: wall median {statistics.median(walls):.2f} s "
          f"(min {min(walls):.2f}, max {max(walls):.2f}); CPU median {statistics.median(cpus):.2f} s")


if __name__ == "__main__":
    main()
