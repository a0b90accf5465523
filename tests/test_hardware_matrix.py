"""Every model on every GPU config runs at a tensor-parallel degree that fits, and a combination
that cannot work stops before the run with one line saying why (`python -m simulator model=<m>
hardware=<h> parallel.tp=<k>`, in process)."""
from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from simulator.cli import to_dict
from simulator.core.paths import REPO_ROOT
from simulator.core.schedulers import make_scheduler
from simulator.engine import simulate
from simulator.run import make_requests, prepare, run_simulation

CONF = REPO_ROOT / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
HARDWARE = sorted(p.stem for p in (CONF / "hardware").glob("*.yaml"))
NUM_REQUESTS = 8

# A TP at which each model's bf16 weights (~2 bytes per published parameter) take at most about
# half of a 44 GiB A40's memory, so every config has room for a KV cache.
TP = {"phi_2": 1, "llama_2_7b": 1, "llama_3_8b": 1, "mistral_7b": 1, "internlm_20b": 2, "yi_34b": 2,
      "codellama_34b": 2, "llama_2_70b": 4, "llama_3_70b": 4, "qwen_72b": 4}
# The A40's all-reduce is derived for 2 GPUs only (conf/hardware/a40_48gb_pcie_nvlink.yaml), and
# at TP 2 a 70B model's weights (~65 GiB per GPU) outgrow its 44 GiB: no TP works there.
NO_TP_WORKS = {(m, "a40_48gb_pcie_nvlink") for m in ("llama_2_70b", "llama_3_70b", "qwen_72b")}


@cache
def group(name: str, option: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / name / f"{option}.yaml"))


@cache
def base_config() -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_dict(compose(config_name="simulator", overrides=[f"workload.num_requests={NUM_REQUESTS}",
                                                                  "output_dir=set-per-run"]))


def config(model: str, hardware: str, tp: int, out_dir: Path) -> dict:
    """What `python -m simulator model=<model> hardware=<hardware> parallel.tp=<tp>` composes: the
    group files are plain mappings, so the default config with them swapped in (composing each
    combination through hydra would take ~0.3 s apiece)."""
    return {**base_config(), "model": group("model", model), "hardware": group("hardware", hardware),
            "parallel": {**base_config()["parallel"], "tp": tp}, "output_dir": str(out_dir)}


def test_every_model_has_a_tp():
    assert sorted(TP) == MODELS, "give each model in conf/model a TP that fits (TP above)"


@pytest.mark.parametrize("hardware", HARDWARE)
def test_every_model_runs(hardware, tmp_path):
    for model in MODELS:
        if (model, hardware) in NO_TP_WORKS:
            continue
        setup = prepare(config(model, hardware, TP[model], tmp_path))
        scheduler = make_scheduler(setup.scheduler_name, setup.scheduler_config, setup.num_blocks)
        recorder = simulate(make_requests(setup.workload), scheduler, setup.cost_model.batch_time,
                            keep_tokens=False, keep_batches=False)
        tables = recorder.finalize()
        assert tables.conservation["ok"] and np.isfinite(tables.requests["finish"]).all(), (model, hardware)


@pytest.mark.parametrize("model, hardware, tp, reason", [
    ("llama_2_70b", "a40_48gb_pcie_nvlink", 4, r"parallel.tp=4 needs an all-reduce of 4 GPUs and "
                                               r"hardware.all_reduce covers \[2\] GPUs"),
    ("llama_3_70b", "a40_48gb_pcie_nvlink", 2, "no memory left for the KV cache"),
    ("qwen_72b", "a40_48gb_pcie_nvlink", 1, "no memory left for the KV cache"),
    ("llama_3_70b", "a100_80gb_pcie_nvlink", 8, r"parallel.tp=8 needs an all-reduce of 8 GPUs and "
                                                r"hardware.all_reduce covers \[2, 4\] GPUs"),
    ("qwen_72b", "h100_80gb_hbm3", 2, "no memory left for the KV cache"),
    ("yi_34b", "h100_80gb_sxm_dgx", 16, "model.num_heads=56 is not divisible by parallel.tp=16"),
    ("mistral_7b", "a100_80gb_sxm_dgx", 16, "model.num_kv_heads=8 is not divisible by parallel.tp=16"),
    ("internlm_20b", "h200_141gb_hbm3e", 3, "model.num_heads=40 is not divisible by parallel.tp=3"),
])
def test_impossible_combination_is_one_line_before_the_run(model, hardware, tp, reason, tmp_path):
    out_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=reason) as err:
        run_simulation(config(model, hardware, tp, out_dir), out_dir, log=lambda *_: None)
    assert "\n" not in str(err.value)
    assert not out_dir.exists() or not any(out_dir.iterdir()), "the run started before the error"


def test_overrides_compose_the_same_config(tmp_path):
    """The shortcut in `config` is what hydra composes from the command-line overrides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composed = to_dict(compose(config_name="simulator", overrides=[
            "model=llama_3_70b", "hardware=h100_80gb_sxm_dgx", "parallel.tp=8",
            f"workload.num_requests={NUM_REQUESTS}", f"output_dir={tmp_path}"]))
    assert composed == config("llama_3_70b", "h100_80gb_sxm_dgx", 8, tmp_path)
