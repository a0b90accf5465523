"""Ctrl-C while a command is still importing its libraries (a second or two: hydra, pandas, Ray):
one line and exit 130, as `simulator.cli.run_command` does once the command runs.

Entry points import this first, before anything slow; it only sets `sys.excepthook`.
"""
from __future__ import annotations

import os
import sys


def _hook(exc_type, exc, tb) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        print("interrupted", file=sys.stderr, flush=True)
        os._exit(130)  # nothing has started yet that needs cleaning up
    sys.__excepthook__(exc_type, exc, tb)


def exit_quietly_on_ctrl_c() -> None:
    sys.excepthook = _hook
