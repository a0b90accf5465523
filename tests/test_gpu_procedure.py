"""backend/gpu_procedure.sh refuses in one line what it cannot run (its CPU dry run, which writes
every file a GPU run writes, takes about a minute: `bash backend/gpu_procedure.sh --dry-run`)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the procedure runs the backend (pip install -e '.[cpu]')")

REPO = Path(__file__).resolve().parents[1]


def procedure(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(REPO / "backend" / "gpu_procedure.sh"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_bad_argument_is_one_line(tmp_path):
    run = procedure("--out", str(tmp_path / "o"), "benchmark")
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("error: unknown argument 'benchmark'; usage:")
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the procedure would run")
def test_without_a_gpu_it_asks_for_one_or_a_dry_run(tmp_path):
    run = procedure("--out", str(tmp_path / "o"))
    assert run.returncode == 3 and run.stderr.count("\n") == 1, run.stderr
    assert "torch sees no CUDA GPU" in run.stderr and "--dry-run" in run.stderr
    assert not (tmp_path / "o").exists()
