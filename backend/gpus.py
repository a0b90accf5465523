"""Which GPU this is, and which hardware config describes it.

Real runs, validations and profiles are labelled with, and priced from, a hardware config
(`conf/hardware/<name>.yaml`). Measured on another GPU, their numbers would be filed under the
wrong hardware, so every GPU command resolves the config from the GPU it finds:
- the hardware left at the command's default: the detected GPU's config replaces it;
- a hardware config chosen on the command line (`hardware=...`) that describes another GPU: refused.
Only the GPUs below are known; another one needs its own hardware config and a line here.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

CONF_HARDWARE = Path(__file__).resolve().parents[1] / "conf" / "hardware"

# What torch.cuda.get_device_name() reports -> conf/hardware/<config>.yaml. Exact names: an
# "NVIDIA H100 PCIe" or an "NVIDIA H200 NVL" has other clocks and bandwidth than the SXM parts
# these configs describe.
KNOWN_GPUS = {
    "NVIDIA A100 80GB PCIe": "a100_80gb_pcie_nvlink",
    "NVIDIA H100 80GB HBM3": "h100_80gb_hbm3",
    "NVIDIA H200": "h200_141gb_hbm3e",
}


def hardware_config_name(device_name: str) -> str:
    """The hardware config of the GPU called `device_name`; one line if there is none."""
    try:
        return KNOWN_GPUS[device_name.strip()]
    except KeyError:
        raise ValueError(
            f"no hardware config describes the GPU {device_name!r} (known: "
            f"{', '.join(sorted(KNOWN_GPUS))}); add conf/hardware/<name>.yaml for it and its name "
            "to KNOWN_GPUS in backend/gpus.py") from None


def load_hardware(config_name: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((CONF_HARDWARE / f"{config_name}.yaml").read_text())


def hardware_chosen(argv: Sequence[str]) -> bool:
    """Whether a command line names the hardware config (`hardware=...`, `+hardware=...`)."""
    return any(re.match(r"[+~]{0,2}hardware=", arg) for arg in argv)


def matching_hardware(device_name: str, configured: Mapping[str, Any], chosen: bool) -> dict[str, Any]:
    """The hardware config to use on the GPU `device_name`: `configured` if it describes that
    GPU, else the GPU's own config when the user did not choose one; refused when they did."""
    wanted = hardware_config_name(device_name)
    expected = load_hardware(wanted)
    if configured.get("name") == expected["name"]:
        return dict(configured)  # keeps the user's overrides of single keys
    if chosen:
        raise ValueError(f"the GPU is {device_name!r} but the chosen hardware config describes "
                         f"{configured.get('name')!r}: use hardware={wanted}, or leave hardware "
                         "unset to take it from the GPU")
    return expected


def cuda_device_name(device: Any = None) -> str | None:
    """torch's name of the CUDA device (default: the current one); None without a GPU or torch."""
    try:
        import torch
    except ModuleNotFoundError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(device)


def hardware_for_device(device: str, configured: Mapping[str, Any], argv: Sequence[str]) -> dict[str, Any]:
    """The hardware config for real runs on `device` (auto | cpu | cuda[:i]) of a command run
    with `argv`: on a GPU, `matching_hardware`; on the CPU (a smoke test), `configured` as is."""
    name = cuda_device_name(None if device == "auto" else device) if device != "cpu" else None
    if name is None:
        return dict(configured)
    return matching_hardware(name, configured, hardware_chosen(argv))
