"""The offline wheels, installed for real: a fresh venv, no index, then every GPU command's imports.

    python -m bench.offline_wheels_install [--wheels DIR]

Gathers the wheels for this machine's Python (`python -m backend.offline_wheels`, needs a package
index; or `--wheels` a folder made earlier for this Python), creates a venv without
site-packages, installs `requirements.txt` from the folder with `pip --no-index`, puts links to
the torch, triton and numpy installed here (and what they require) beside it, as a CUDA image
would have them, and imports `GPU_COMMAND_MODULES` there. Prints each phase's seconds; exits
non-zero if any phase fails. Minutes, mostly the download: tests/test_offline_wheels.py checks
the list itself in seconds.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backend.offline_wheels import GPU_COMMAND_MODULES, PROVIDED, link_installed, requirement_closure

REPO = Path(__file__).resolve().parents[1]


def _run(what: str, command: list[str]) -> None:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    print(f"{what}: {time.perf_counter() - started:.1f} s")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: {what} failed: {last}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, help="a folder made by backend.offline_wheels for this Python")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheels = args.wheels or Path(tmp) / "wheels"
        if args.wheels is None:
            _run("download", [sys.executable, "-m", "backend.offline_wheels", str(wheels)])
        venv = Path(tmp) / "venv"
        _run("venv", [sys.executable, "-m", "venv", str(venv)])
        python = venv / "bin" / "python"
        # torch & co. beside the venv, as --system-site-packages shows a CUDA image's to it.
        image = link_installed(requirement_closure(set(PROVIDED)), Path(tmp) / "image")
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
        (Path(site) / "cuda_image.pth").write_text(f"{image}\n")
        _run("offline install", [str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links",
                                 str(wheels), "-r", str(wheels / "requirements.txt")])
        _run("imports", [str(python), "-c", "import importlib, sys; sys.path.insert(0, '.')\n"
                         f"for m in {list(GPU_COMMAND_MODULES)!r}: importlib.import_module(m)"])
    print(f"every GPU command's modules import from the offline wheels ({len(GPU_COMMAND_MODULES)} modules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
