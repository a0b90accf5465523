"""The offline wheel list: the GPU commands import with nothing but it and what a CUDA image has."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the GPU commands import torch (pip install -e '.[cpu]')")

from backend.offline_wheels import (GPU_COMMAND_MODULES, PROVIDED, link_installed,  # noqa: E402
                                    needed_distributions, requirement_closure)

REPO = Path(__file__).resolve().parents[1]


def import_in(site: Path, modules: tuple[str, ...]) -> subprocess.CompletedProcess:
    # -S: no site-packages, -E: no PYTHONPATH; the path is the repository and the site alone.
    code = (f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(site)!r}]\n"
            f"import importlib\nfor m in {list(modules)!r}: importlib.import_module(m)\n")
    return subprocess.run([sys.executable, "-S", "-E", "-c", code], cwd=REPO, capture_output=True, text=True)


def test_gpu_commands_import_with_only_the_wheels_and_the_cuda_image(tmp_path):
    needed = set(needed_distributions())
    assert {"hydra-core", "omegaconf", "antlr4-python3-runtime", "plotly", "pandas", "pyarrow",
            "pytest"} <= needed and not needed & set(PROVIDED)
    provided = requirement_closure(set(PROVIDED))
    site = link_installed(needed | provided, tmp_path / "site")
    run = import_in(site, GPU_COMMAND_MODULES)
    assert run.returncode == 0, run.stderr.strip().splitlines()[-1:]
    # The isolation is real: without one carried wheel, hydra (which every command imports) fails.
    fewer = link_installed((needed - {"omegaconf"}) | provided, tmp_path / "fewer")
    run = import_in(fewer, ("hydra",))
    assert run.returncode != 0 and "omegaconf" in run.stderr
