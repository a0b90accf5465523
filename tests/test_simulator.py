"""The simulator end to end: config -> run directory, determinism, errors, and Figure 1's claims."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir

from simulator.cli import to_dict
from simulator.core.paths import REPO_ROOT
from simulator.run import run_simulation

CONF = str(REPO_ROOT / "conf")


def compose_config(name: str, overrides: list[str], out_dir: Path) -> dict:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return to_dict(compose(config_name=name, overrides=overrides + [f"output_dir={out_dir}"]))


def test_same_seed_same_config_gives_identical_files(tmp_path):
    overrides = ["scheduler=vllm", "workload.num_requests=300", "workload.arrival.qps=2.0"]
    for name in ("a", "b"):
        run_simulation(compose_config("simulator", overrides, tmp_path / name), tmp_path / name, log=lambda *_: None)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert {"summary.json", "requests.csv", "tokens.parquet", "batches.parquet",
            "decode_completion_time_series.csv", "decode_token_execution_plus_preemption_time.csv"} <= set(files)
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_run_tables_are_consistent(tmp_path):
    summary = run_simulation(compose_config("simulator", ["scheduler=sarathi", "workload.num_requests=200",
                                                          "workload.arrival.qps=0.2"], tmp_path),
                             tmp_path, log=lambda *_: None)
    assert summary["conservation"]["ok"]
    req = pd.read_csv(tmp_path / "requests.csv")
    tok = pd.read_parquet(tmp_path / "tokens.parquet")
    bat = pd.read_parquet(tmp_path / "batches.parquet")
    assert (req.first_scheduled >= req.arrival).all(), "a request ran before it arrived"
    assert (req.first_token > req.first_scheduled).all() and (req.finish >= req.first_token).all()
    assert tok.groupby("request_id").size().sort_index().tolist() == req.decode_len.tolist()
    assert (np.diff(bat.start) > 0).all() and (bat.start.values[1:] >= bat.end.values[:-1]).all()
    # At 0.2 QPS the replica idles between requests: it must wait, not spin on empty batches.
    assert (bat.num_tokens > 0).all()
    cost_columns = [c for c in bat.columns if c.startswith("cost_")]
    assert cost_columns and np.allclose(bat[cost_columns].sum(axis=1), bat.duration, rtol=1e-9)
    series = pd.read_csv(tmp_path / "decode_completion_time_series.csv")
    assert list(series.columns) == ["Time (sec)", "decode_completion"]
    assert series.decode_completion.iloc[-1] == req.decode_len.sum()
    cdf = pd.read_csv(tmp_path / "decode_token_execution_plus_preemption_time.csv")
    assert len(cdf) == 1001 and np.isclose(cdf.value.quantile(0.99), summary["tbt_s"]["p99"], rtol=1e-2)


def test_bad_config_is_one_line_and_nonzero_exit(tmp_path):
    cases = [["scheduler.name=fifo"], ["workload.arrival.qps=-1"], ["engine.gpu_memory_utilization=0.3"],
             ["workload=sharegpt_8k", "workload.lengths.path=/no/such.csv"],
             ["scheduler.max_model_len=512", "workload.max_tokens=4096"], ["scheduler.chunk_size=1.7"],
             ["scheduler.max_num_seqs=true"], ["parallel.tp=1.5"], ["engine.num_blocks=0"]]
    for overrides in cases:
        out = subprocess.run([sys.executable, "-m", "simulator", *overrides, f"hydra.run.dir={tmp_path}"],
                             capture_output=True, text=True, cwd=REPO_ROOT)
        assert out.returncode == 2, (overrides, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (overrides, out.stderr)
        assert not (tmp_path / "summary.json").exists(), "partial output left behind"


def test_figure1_claims_hold_in_simulation(tmp_path):
    """The README's promise: vLLM stalls generation >= 5x longer, and its P99 TBT is higher at each QPS."""
    from experiments.fig1 import plan_runs, simulate_one

    config = compose_config("fig1", ["mode=sim"], tmp_path)
    summaries = {}
    for ref, run_cfg in plan_runs(config):
        summaries[(ref.panel, run_cfg["scheduler"]["name"], ref.qps)] = simulate_one(run_cfg)
    assert all(s["conservation"]["ok"] for s in summaries.values())
    stall = {name: summaries[("1a", name, None)]["longest_generation_stall_s"] for name in ("vllm", "sarathi")}
    assert stall["vllm"] >= 5 * stall["sarathi"], stall
    for qps in config["fig1"]["qps"]:
        vllm, sarathi = (summaries[("1b", n, qps)]["tbt_s"]["p99"] for n in ("vllm", "sarathi"))
        assert vllm > sarathi, (qps, vllm, sarathi)
