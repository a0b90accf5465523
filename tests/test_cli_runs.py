"""The commands users type, run as they type them: fig1 through Ray, and a hydra multirun sweep."""
from __future__ import annotations

import json
import subprocess
import sys

from simulator.core.paths import REPO_ROOT


def run(args: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_fig1_sim_through_ray_writes_the_report(tmp_path):
    out = run(["-m", "experiments.fig1", "mode=sim", "fig1.num_requests=16", "fig1.qps=[1.0]",
               f"output_dir={tmp_path}"])
    assert f"report: {tmp_path / 'fig1_report.html'}" in out.stdout
    runs = sorted(p.parent.name for p in tmp_path.glob("*/summary.json"))
    assert runs == ["1a_kv_sarathi", "1a_kv_vllm", "1a_sarathi", "1a_vllm", "1b_sarathi_qps1", "1b_vllm_qps1"]


def test_multirun_sweep_runs_every_job_and_writes_the_summary_page(tmp_path):
    run(["-m", "simulator", "-m", "scheduler=vllm,sarathi", "workload.arrival.qps=0.5,2.0",
         "workload.num_requests=16", f"hydra.sweep.dir={tmp_path}"])
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/summary.json"))]
    assert len(summaries) == 4 and all(s["conservation"]["ok"] for s in summaries)
    assert sorted(s["scheduler"] for s in summaries) == ["sarathi", "sarathi", "vllm", "vllm"]
    page = (tmp_path / "sweep_report.html").read_text()
    assert "workload.arrival.qps" in page and "scheduler" in page
