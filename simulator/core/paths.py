"""Where the repository and the reference data (never committed) live."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# ../shared/data next to the repository: the public traces and measurements (../shared/data/README.md)
DEFAULT_SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
