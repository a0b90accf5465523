"""Which GPU, which hardware config: the profiler names and refuses by the detected GPU."""
from __future__ import annotations

import pytest

from backend.gpus import KNOWN_GPUS, hardware_chosen, load_hardware

torch = pytest.importorskip("torch", reason="the profiler needs torch (pip install -e '.[cpu]')")


def test_every_known_gpu_has_a_valid_hardware_config():
    from profiler.hardware import HardwareSpec

    names = {HardwareSpec.from_config(load_hardware(config)).name for config in KNOWN_GPUS.values()}
    assert len(names) == len(KNOWN_GPUS)
    assert hardware_chosen(["mode=real", "hardware=h200_141gb_hbm3e"]) and hardware_chosen(["+hardware=x"])
    assert not hardware_chosen(["hardware.cpu_overhead_ms=4", "mode=real"])


def test_profiler_refuses_another_gpus_config_before_measuring(monkeypatch, tmp_path):
    from hydra import compose, initialize_config_dir

    from profiler.__main__ import profile, slug
    from simulator.cli import to_dict
    from simulator.core.paths import REPO_ROOT

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H200")
    argv = ["hardware=h100_80gb_hbm3", f"profiler.output_root={tmp_path}"]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        config = to_dict(compose(config_name="profiler", overrides=argv))
    with pytest.raises(ValueError, match="the GPU is 'NVIDIA H200' but .* use hardware=h200_141gb_hbm3e"):
        profile(config, log=lambda *_: None, argv=argv)
    assert not list(tmp_path.glob("*_tp2"))
    assert slug("NVIDIA H200") == "h200" and slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
