"""Simulator speed: simulated decode tokens and batches per wall second, and peak memory.

    python bench/sim_speed.py                 # 10,000 and 100,000 arXiv requests, vllm and sarathi
    python bench/sim_speed.py --sizes 10000   # one size
    python bench/sim_speed.py --sizes 10000 --qps 1.0   # the Vidur comparison workload

The load is Poisson at 90% of the replica's capacity, where capacity is the request rate a
sarathi replica sustains on a burst of 2,000 requests (measured here, first). Each case runs in
its own process so peak memory (max RSS) is its own. Timings are wall-clock on this machine:
compare ratios, not absolute numbers, across machines.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simulator.cli import to_dict  # noqa: E402
from simulator.core.request import Request  # noqa: E402
from simulator.core.schedulers import make_scheduler  # noqa: E402
from simulator.engine import simulate  # noqa: E402
from simulator.outputs import write_run  # noqa: E402
from simulator.run import make_requests, prepare  # noqa: E402


def config(overrides: list[str], out_dir: str) -> dict:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="simulator", overrides=overrides + [f"output_dir={out_dir}"])
    return to_dict(cfg)


def one_case(overrides: list[str]) -> dict:
    """Simulate, finalize and write one run; time each phase."""
    with tempfile.TemporaryDirectory() as out:
        setup = prepare(config(overrides, out))
        scheduler = make_scheduler(setup.scheduler_name, setup.scheduler_config, setup.num_blocks)
        requests: list[Request] = make_requests(setup.workload)
        t0 = time.perf_counter()
        recorder = simulate(requests, scheduler, setup.cost_model.batch_time)
        t1 = time.perf_counter()
        tables = recorder.finalize()
        write_run(out, tables, {"mode": "sim"})
        t2 = time.perf_counter()
    tokens, batches = len(tables.tokens["time"]), len(tables.batches["start"])
    return {"event_loop_s": t1 - t0, "tables_and_files_s": t2 - t1, "decode_tokens": tokens,
            "batches": batches, "decode_tokens_per_s": tokens / (t1 - t0),
            "batches_per_s": batches / (t1 - t0),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def capacity_qps() -> float:
    with tempfile.TemporaryDirectory() as out:
        setup = prepare(config(["scheduler=sarathi", "workload.num_requests=2000",
                                "workload.arrival.kind=static"], out))
        scheduler = make_scheduler(setup.scheduler_name, setup.scheduler_config, setup.num_blocks)
        requests = make_requests(setup.workload)
        tables = simulate(requests, scheduler, setup.cost_model.batch_time).finalize()
    return len(requests) / float(tables.requests["finish"].max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--schedulers", nargs="+", default=["vllm", "sarathi"])
    parser.add_argument("--qps", type=float, help="fixed load instead of 90%% of capacity "
                        "(1.0 is the Vidur comparison: 10,000 arXiv requests at QPS 1.0)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_case(json.loads(args.case))))
        return
    if args.qps:
        qps = args.qps
        print(f"load {qps:.3f} QPS (fixed)")
    else:
        qps = 0.9 * capacity_qps()
        print(f"replica capacity (sarathi, 2,000-request burst): {qps / 0.9:.3f} req/s; load {qps:.3f} QPS")
    print(f"{'scheduler':<10} {'requests':>9} {'loop s':>7} {'files s':>7} {'batches':>9} "
          f"{'tokens':>10} {'tok/s':>11} {'batch/s':>9} {'peak MB':>8}")
    for n in args.sizes:
        for name in args.schedulers:
            overrides = [f"scheduler={name}", f"workload.num_requests={n}", f"workload.arrival.qps={qps}"]
            out = subprocess.run([sys.executable, __file__, "--case", json.dumps(overrides)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{name:<10} {n:>9} {r['event_loop_s']:>7.2f} {r['tables_and_files_s']:>7.2f} "
                  f"{r['batches']:>9} {r['decode_tokens']:>10} {r['decode_tokens_per_s']:>11,.0f} "
                  f"{r['batches_per_s']:>9,.0f} {r['peak_rss_mb']:>8.0f}")


if __name__ == "__main__":
    main()
