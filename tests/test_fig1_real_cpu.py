"""`experiments.fig1 mode=real` end to end on the CPU with a tiny model: same files, same report."""
from __future__ import annotations

import json

import pandas as pd
import pytest

torch = pytest.importorskip("torch", reason="real mode needs torch (pip install -e '.[cpu]')")

from experiments.fig1 import plan_runs  # noqa: E402
from experiments.report import write_fig1_report  # noqa: E402
from tests.test_simulator import compose_config  # noqa: E402

TINY = ["model.num_layers=2", "model.hidden_size=64", "model.num_heads=4", "model.num_kv_heads=2",
        "model.head_dim=16", "model.intermediate_size=128", "model.vocab_size=128"]


def test_fig1_real_mode_on_cpu_writes_the_simulators_files(tmp_path):
    from backend.run import run_real_all

    config = compose_config("fig1", ["mode=real", "real.device=cpu", "real.num_blocks=400", *TINY,
                                     "fig1.num_requests=4", "fig1.qps=[2.0]", "fig1.static_max_tokens=2048",
                                     "fig1.poisson_max_tokens=2048", "workload.lengths.kind=fixed",
                                     "workload.lengths.prefill=40", "workload.lengths.decode=5"], tmp_path)
    plans = plan_runs(config)
    summaries = run_real_all([c for _, c in plans], config, log=lambda *_: None)
    for (ref, _), summary in zip(plans, summaries):
        assert summary["mode"] == "real" and summary["conservation"]["ok"]
        assert "emulated" in summary["executor"], "tp=2 on one CPU must say it is emulated"
        on_disk = json.loads((ref.run_dir / "summary.json").read_text())
        assert on_disk["tbt_s"]["count"] == 4 * 4  # 4 requests x (5 tokens - the first)
        # What the timers measured is said, and there is no GPU spin to calibrate on the CPU.
        assert "gpu_time = the forward on the CPU" in on_disk["timing"] and on_disk["gpu_spin"] is None
        batches = pd.read_parquet(ref.run_dir / "batches.parquet")
        assert (batches["launch_time"] == 0).all() and (batches["lead_time"] == 0).all()
        assert (batches["cpu_time"] > 0).all() and (batches["gpu_time"] > 0).all()
    report = write_fig1_report([ref for ref, _ in plans], tmp_path / "r.html", "real on cpu", ["tiny"])
    assert report.stat().st_size > 0


def test_real_mode_takes_the_gpus_hardware_config(monkeypatch, tmp_path):
    """fig1's default hardware (A100) gives way to the GPU's own config; a chosen one must match;
    a CPU run keeps what is configured."""
    from backend.gpus import hardware_for_device

    config = compose_config("fig1", ["mode=real"], tmp_path)
    assert hardware_for_device("cpu", config["hardware"], [])["name"] == "A100-80GB PCIe"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for gpu, name in (("NVIDIA H100 80GB HBM3", "H100-80GB HBM3"), ("NVIDIA H200", "H200 141GB HBM3e")):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_, gpu=gpu: gpu)
        assert hardware_for_device("auto", config["hardware"], ["mode=real"])["name"] == name
        with pytest.raises(ValueError, match="the chosen hardware config describes 'A100-80GB PCIe'"):
            hardware_for_device("cuda", config["hardware"], ["mode=real", "hardware=a100_80gb_pcie_nvlink"])
