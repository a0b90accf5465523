"""Shared command-line behaviour: turn a bad config or input into one line and a non-zero exit."""
from __future__ import annotations

import sys
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from .core.block_manager import KVCacheTooSmallError
from .core.metrics import ConservationError

USER_ERRORS = (ValueError, FileNotFoundError, KVCacheTooSmallError)


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def run_or_exit(task: Callable[[], Any]) -> Any:
    try:
        return task()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ConservationError as exc:
        print(f"error: {exc} -- the outputs of this run are incomplete", file=sys.stderr)
        sys.exit(3)
