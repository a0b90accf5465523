"""How a cluster simulation scales with its requests: wall time, decode tokens per wall second and
peak memory of one whole `python -m simulator` process per size.

    python bench/scale.py                          # 10k, 100k, 1M arXiv requests, 16 replicas
    python bench/scale.py --sizes 10000 100000 --replicas 4

Each size runs the command (imports, workload, event loop, summary and files included) with
Poisson arrivals at `--qps-per-replica` times the replicas, without the per-token and per-batch
tables (`outputs.tokens=false outputs.batches=false`), as a million-request run is meant to be
run. Peak memory is the process's max RSS. Timings are this machine's: compare ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_case(num_requests: int, replicas: int, qps: float, out_dir: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    subprocess.run([sys.executable, "-m", "simulator", f"workload.num_requests={num_requests}",
                    f"workload.arrival.qps={qps}", f"cluster.num_replicas={replicas}",
                    "outputs.tokens=false", "outputs.batches=false", f"hydra.run.dir={out_dir}"],
                   cwd=REPO, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = json.loads((out_dir / "summary.json").read_text())
    tokens = summary["conservation"]["tokens_produced"]
    return {"wall_s": wall, "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            "batches": summary["num_batches"], "decode_tokens": tokens, "tokens_per_wall_s": tokens / wall,
            # ru_maxrss of children is the largest child so far: sizes run smallest first
            "peak_rss_mb": after.ru_maxrss / 1024, "conservation_ok": summary["conservation"]["ok"],
            "tbt_p99_s": summary["tbt_s"]["p99"], "tbt_quantiles": summary["tbt_quantiles"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--qps-per-replica", type=float, default=1.0)
    args = parser.parse_args()
    qps = args.qps_per_replica * args.replicas
    print(f"{args.replicas} replicas, Poisson {qps:g} QPS, arXiv lengths, {os.cpu_count()} cores")
    print(f"{'requests':>9} {'wall s':>7} {'cpu s':>7} {'batches':>10} {'tokens':>11} {'tok/wall s':>11} "
          f"{'peak MB':>8} {'P99 TBT':>8}  quantiles")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted(args.sizes):
            r = run_case(n, args.replicas, qps, Path(tmp) / str(n))
            print(f"{n:>9} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} {r['batches']:>10,} {r['decode_tokens']:>11,} "
                  f"{r['tokens_per_wall_s']:>11,.0f} {r['peak_rss_mb']:>8.0f} {r['tbt_p99_s']:>8.3f}  "
                  f"{r['tbt_quantiles']}{'' if r['conservation_ok'] else '  CONSERVATION FAILED'}")


if __name__ == "__main__":
    main()
