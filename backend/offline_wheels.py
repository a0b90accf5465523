"""Wheels for a GPU machine without network: what the GPU commands need beyond torch, triton, numpy.

    python -m backend.offline_wheels .whl [--python-version 3.12]

Run it where the project is installed with its test extras (`pip install -e '.[test,cpu]'`) and
a package index is reachable. It finds every distribution that the GPU procedure's commands
(`GPU_COMMAND_MODULES`) import, adds what those require, leaves out what a CUDA image brings
(`PROVIDED` and their own requirements), and downloads each one, pinned to the version installed
here, as a wheel for the GPU machine's Python (`--python-version`, `--platform`) into the folder,
with a `requirements.txt`. A distribution published only as source (antlr4-python3-runtime,
which hydra needs) is built into a wheel here. On the GPU machine, with the folder copied over:

    python3 -m venv --system-site-packages .venv-gpu   # sees the image's torch, triton, numpy
    .venv-gpu/bin/pip install --no-index --find-links .whl -r .whl/requirements.txt
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement

# Everything the GPU procedure (backend/gpu_procedure.sh) runs: the backend, its tests and benches,
# the profiler, the validation and Figure 1 in real mode, with the modules they import lazily.
GPU_COMMAND_MODULES = (
    "backend.run", "backend.tp", "backend.engine", "backend.gpus",
    "bench.attention_bench", "bench.backend_efficiency",
    "pytest", "tests.test_attention", "tests.test_backend_cpu", "tests.test_simulator",
    "profiler.__main__", "profiler.accuracy", "profiler.fit", "profiler.fitted",
    "experiments.validate", "experiments.fig1", "experiments.report",
)
# What a CUDA image with PyTorch has: these and what they require.
PROVIDED = ("torch", "triton", "numpy")
# This project: it travels as the source tree; its own requirements are not all imported on a GPU.
PROJECT = "sched-sim"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_distributions(modules: tuple[str, ...] = GPU_COMMAND_MODULES) -> set[str]:
    """Distributions whose packages a fresh interpreter loads when it imports `modules`."""
    code = ("import importlib, json, sys\n"
            f"for m in {list(modules)!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"importing the GPU commands' modules failed here ({last}); install the "
                           "project with its extras: pip install -e '.[test,cpu]'")
    packages = md.packages_distributions()
    return {_canonical(d) for top in json.loads(out.stdout) for d in packages.get(top, [])}


def requirement_closure(names: set[str]) -> set[str]:
    """`names` and every installed distribution they require (markers evaluated here, no extras)."""
    todo, seen = list(names), set()
    while todo:
        name = _canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def needed_distributions() -> dict[str, str]:
    """{distribution: installed version} of everything to carry to the GPU machine."""
    provided = requirement_closure(set(PROVIDED))
    needed = requirement_closure(imported_distributions() - {PROJECT}) - provided
    return {name: md.version(name) for name in sorted(needed)}


def link_installed(distributions: set[str], folder: Path) -> Path:
    """A folder holding exactly `distributions`, as links to their files installed here: put it
    on `sys.path` of an interpreter without site-packages to see what imports with only them."""
    folder.mkdir(parents=True)
    for name in distributions:
        dist = md.distribution(name)
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            target = Path(dist.locate_file(top))
            if target.exists() and not (folder / top).exists():
                (folder / top).symlink_to(target)
    return folder


def _download(pins: dict[str, str], folder: Path, python_version: str, platform: str) -> None:
    for name, version in pins.items():
        spec = f"{name}=={version}"
        binary = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--python-version", python_version, "--implementation", "cp", "--platform", platform,
             "-d", str(folder), spec], capture_output=True, text=True)
        if binary.returncode == 0:
            continue
        # No wheel for that Python and platform: fine only for a pure-Python source distribution,
        # whose wheel (built here) runs anywhere.
        with tempfile.TemporaryDirectory() as tmp:
            built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-binary=:all:",
                                    "-w", tmp, spec], capture_output=True, text=True)
            wheels = list(Path(tmp).glob("*-none-any.whl"))
            if built.returncode != 0 or not wheels:
                raise RuntimeError(f"{spec} has no wheel for Python {python_version} on {platform} and "
                                   "is not pure Python; set --python-version and --platform to the GPU "
                                   "machine's, or install that version here")
            shutil.move(str(wheels[0]), folder / wheels[0].name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where the wheels and requirements.txt go, e.g. .whl")
    parser.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                        help="the GPU machine's Python (default: this one's)")
    parser.add_argument("--platform", default="manylinux_2_28_x86_64",
                        help="the GPU machine's (glibc 2.28 or later: this one and older manylinux wheels)")
    parser.add_argument("--list", action="store_true", help="print the pinned list, download nothing")
    args = parser.parse_args(argv)
    try:
        pins = needed_distributions()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    requirements = "".join(f"{name}=={version}\n" for name, version in pins.items())
    if args.list:
        print(requirements, end="")
        return 0
    args.folder.mkdir(parents=True, exist_ok=True)
    try:
        _download(pins, args.folder, args.python_version, args.platform)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (args.folder / "requirements.txt").write_text(requirements)
    wheels = sorted(args.folder.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 1e6
    print(f"{len(wheels)} wheels ({size:.0f} MB) and requirements.txt in {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
