"""An output directory's life: checked before any work, written so that nothing half-done looks done.

- `check_output_dir` runs before a run starts: the directory must be creatable and writable, and
  empty apart from hydra's own records (`.hydra/`, `*.log`), unless `overwrite=true`; then the
  previous outputs are removed at once, so an interrupted re-run cannot leave the old results
  beside the new config.
- `staged_dir` gives a run a hidden sibling directory to write into and moves it into place only
  when the run finished, the completion mark (`summary.json`) last. An interrupted or killed run
  leaves at most a hidden `.<name>.partial-*` directory, never a run directory without its summary
  or a summary beside someone else's files.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

COMPLETION_MARK = "summary.json"
HYDRA_RECORDS = (".hydra",)  # plus hydra's job logs, `*.log`
PARTIAL_PREFIX = "."         # staged directories are hidden: `.<name>.partial-<random>`
PARTIAL_TAG = ".partial-"


def check_output_dir(path: str | Path, overwrite: bool, key: str = "output_dir") -> Path:
    """Absolute `path`, checked writable and free for a new run (see the module doc)."""
    out = check_writable(path, key)
    if not out.exists():
        return out
    leftovers = sorted(p.name for p in out.iterdir() if not _is_hydra_record(p))
    if not leftovers:
        return out
    if not overwrite:
        shown = ", ".join(leftovers[:4]) + (", ..." if len(leftovers) > 4 else "")
        raise FileExistsError(f"{key}={path} already holds {shown}; pass overwrite=true to replace "
                              f"them, or choose an empty {key}=<dir>")
    remove_outputs(out, leftovers)
    return out


def check_writable(path: str | Path, key: str) -> Path:
    """Absolute `path`, checked to be a directory that exists or can be made, and written to."""
    out = Path(path).expanduser().absolute()
    existing = out
    while not existing.exists():  # the nearest ancestor that exists must be a writable directory
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{key}={path}: {existing} is a file, so no directory can be made "
                                 f"under it; choose another {key}=<dir>")
    try:  # try it: permission bits say nothing to root, nor about read-only or special filesystems
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as exc:
        raise PermissionError(f"{key}={path}: cannot write in {existing} ({exc.strerror}); "
                              f"choose another {key}=<dir>") from None
    return out


def remove_outputs(out: Path, names: list[str]) -> None:
    """Delete the previous outputs in `out`: every completion mark first, so that a deletion that
    stops half-way leaves nothing that looks finished."""
    for mark in [out / COMPLETION_MARK, *out.glob(f"*/{COMPLETION_MARK}")]:
        mark.unlink(missing_ok=True)
    for name in names:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def _is_hydra_record(path: Path) -> bool:
    return path.name in HYDRA_RECORDS or (path.suffix == ".log" and path.is_file())


@contextlib.contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """A hidden directory beside `final` to write a run into; on success its files move into
    `final` (created if needed) with `summary.json` last; on any exception it is deleted."""
    final = Path(final).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{final.name}{PARTIAL_TAG}", dir=final.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp's private 0700 would carry over to the run directory
    try:
        yield staging
        _move_in(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _move_in(staging: Path, final: Path) -> None:
    if not final.exists():
        os.rename(staging, final)  # one atomic step: the directory appears complete
        return
    # `final` exists already (hydra made it for its records): move file by file, the mark last.
    names = sorted(p.name for p in staging.iterdir())
    for name in sorted(names, key=lambda n: n == COMPLETION_MARK):
        os.replace(staging / name, final / name)
