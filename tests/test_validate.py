"""`experiments.validate` end to end on the CPU with a tiny model, its error arithmetic, and its
one-line refusals."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from backend.gpus import hardware_config_name, load_hardware
from experiments.validate import (RUN_FIGURES, format_table, iteration_errors, real_section,
                                  relative_error, run_figures, run_validation)
from simulator.core.paths import REPO_ROOT
from tests.test_simulator import compose_config

TINY = ["model.num_layers=2", "model.hidden_size=64", "model.num_heads=4", "model.num_kv_heads=2",
        "model.head_dim=16", "model.intermediate_size=128", "model.vocab_size=128"]
SMOKE = [*TINY, "real.device=cpu", "real.num_blocks=400", "real.num_layers=1", "cost_model=analytical",
         "validate.num_requests=4", "validate.max_tokens=2048", "validate.arrival.qps=4.0",
         "workload.lengths.kind=fixed", "workload.lengths.prefill=40", "workload.lengths.decode=5"]


def test_errors_on_hand_made_numbers():
    assert relative_error(1.1, 1.0) == pytest.approx(0.1)
    assert relative_error(0.8, 1.0) == pytest.approx(-0.2)
    assert relative_error(1.0, 0.0) is None and relative_error(None, 1.0) is None
    assert relative_error(float("nan"), 1.0) is None

    stats = iteration_errors(np.array([1.0, 2.0, 4.0, 5.0]), np.array([1.1, 1.8, 4.0, 6.0]))
    assert stats["count"] == 4
    assert stats["mape"] == pytest.approx((0.1 + 0.1 + 0.0 + 0.2) / 4)
    assert stats["median_ape"] == pytest.approx(0.1)
    assert stats["bias"] == pytest.approx((0.1 - 0.1 + 0.0 + 0.2) / 4)
    with pytest.raises(ValueError, match="same, non-zero count"):
        iteration_errors(np.array([1.0]), np.array([1.0, 2.0]))

    real = {"tbt_s": {"p50": 0.010, "p99": 0.100}, "ttft_s": {"p50": 0.2, "p90": 0.5}, "makespan_s": 20.0}
    sim = {"tbt_s": {"p50": 0.0105, "p99": 0.120}, "ttft_s": {"p50": 0.2, "p90": None}, "makespan_s": 19.0}
    figures = run_figures(real, sim, threshold=0.10)
    assert figures["tbt_p50"]["error"] == pytest.approx(0.05) and figures["tbt_p50"]["pass"]
    assert figures["tbt_p99"]["error"] == pytest.approx(0.20) and not figures["tbt_p99"]["pass"]
    assert figures["ttft_p90"]["error"] is None and not figures["ttft_p90"]["pass"], "unknown is a miss"
    assert figures["makespan"]["error"] == pytest.approx(-0.05) and figures["makespan"]["pass"]


def test_validate_on_cpu_end_to_end(tmp_path):
    pytest.importorskip("torch", reason="the real side needs torch (pip install -e '.[cpu]')")
    config = compose_config("validate", SMOKE, tmp_path)
    argv = ["validate.py", *SMOKE]
    result = run_validation(config, argv, log=lambda *_: None)

    on_disk = json.loads((tmp_path / "validation.json").read_text())
    assert on_disk["command"].startswith("python -m experiments.validate ") and on_disk["argv"] == argv
    assert on_disk["model"] == "Yi-34B (1 of 2 layers)" and on_disk["model_override"] == {"num_layers": 1, "of": 2}
    assert on_disk["device"].startswith("CPU") and on_disk["cost_model"].startswith("analytical")
    assert "cpu_time" in on_disk["timing"] and on_disk["gpu_spin"] is None  # no GPU spin on the CPU
    assert set(on_disk["schedulers"]) == {"vllm", "sarathi"}
    iterations = pd.read_parquet(tmp_path / "iterations.parquet")
    for name, s in on_disk["schedulers"].items():
        assert set(s["figures"]) == {"iteration_mape", *RUN_FIGURES}
        for figure, v in s["figures"].items():
            assert math.isfinite(v["error"]), (name, figure)
            assert isinstance(v["pass"], bool)
        # The prediction priced every batch the GPU (here: CPU) ran, not the simulation's batches.
        real = json.loads((tmp_path / f"real_{name}" / "summary.json").read_text())
        assert s["iterations"]["count"] == real["num_batches"] == (iterations["scheduler"] == name).sum()
        sim = json.loads((tmp_path / f"sim_{name}" / "summary.json").read_text())
        assert sim["mode"] == "sim" and sim["kv_cache_blocks"] == real["kv_cache_blocks"] == 400
        assert sim["model"] == real["model"]
    assert on_disk["pass"] == (not on_disk["misses"]) == result["pass"]

    page = (tmp_path / "validation_report.html").read_text()
    for label in ("vllm, real", "vllm, sim", "sarathi (chunk 1536), real", "sarathi (chunk 1536), sim"):
        assert label in page
    assert "predicted = measured" in page
    table = format_table(result)
    assert "P99 TBT" in table and ("MISSED" in table or "every figure" in table)


@pytest.mark.parametrize("overrides, message", [
    (["real.device=auto"], "real.device=auto found no GPU"),
    (["real.device=cpu", "real.emulation=omit"], "real.emulation=omit"),
    (["real.device=cpu", "real.num_layers=99"], "real.num_layers=99"),
    (["real.device=cpu", "validate.thresholds.iteration_mape=0"], "validate.thresholds.iteration_mape"),
])
def test_bad_config_is_one_line_and_nonzero_exit(tmp_path, overrides, message):
    pytest.importorskip("torch", reason="the device check needs torch")
    import torch

    if torch.cuda.is_available() and overrides == ["real.device=auto"]:
        pytest.skip("this machine has a GPU, so real.device=auto is fine here")
    out = subprocess.run([sys.executable, "-m", "experiments.validate", *overrides, f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert not (tmp_path / "validation.json").exists()


@pytest.mark.parametrize("gpu, argv, expected", [
    ("NVIDIA H100 80GB HBM3", [], "H100-80GB HBM3"),
    ("NVIDIA H200", [], "H200 141GB HBM3e"),  # the default (H100) config gives way to the GPU's
    ("NVIDIA H200", ["hardware=h200_141gb_hbm3e"], "H200 141GB HBM3e"),
    ("NVIDIA H200", ["hardware=h100_80gb_hbm3"], "the GPU is 'NVIDIA H200' but the chosen hardware "
                                                 "config describes 'H100-80GB HBM3': use hardware=h200_141gb_hbm3e"),
    ("NVIDIA H100 80GB HBM3", ["hardware=a100_80gb_pcie_nvlink"], "use hardware=h100_80gb_hbm3"),
    ("NVIDIA H100 PCIe", [], "no hardware config describes the GPU 'NVIDIA H100 PCIe'"),
])
def test_the_hardware_config_is_the_gpus_own(monkeypatch, tmp_path, gpu, argv, expected):
    torch = pytest.importorskip("torch", reason="the device check needs torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: gpu)
    config = compose_config("validate", argv, tmp_path)
    if expected.endswith(("HBM3", "HBM3e")):
        real, hardware = real_section(config, ["validate.py", *argv])
        assert real["device"] == "cuda" and hardware["name"] == expected
        assert hardware == load_hardware(hardware_config_name(gpu))
    else:
        with pytest.raises(ValueError, match=re.escape(expected)):
            real_section(config, ["validate.py", *argv])
