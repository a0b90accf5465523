"""A hydra callback: when a multirun ends, write one page comparing its runs (`sweep_report.html`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        run_dirs, overrides = [], []
        for summary in sorted(sweep_dir.glob("*/summary.json"), key=lambda p: _job_number(p.parent)):
            run_dirs.append(summary.parent)
            overrides_file = summary.parent / ".hydra" / "overrides.yaml"
            overrides.append(yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else [])
        if not run_dirs:
            print(f"sweep summary: no finished runs under {sweep_dir}")
            return
        from .report import write_sweep_report  # plotly and pandas: not for the single runs hydra also calls us on
        out = write_sweep_report(run_dirs, overrides, sweep_dir / "sweep_report.html",
                                 f"Sweep of {len(run_dirs)} runs")
        print(f"sweep summary ({len(run_dirs)} runs): {out}")


def _job_number(run_dir: Path) -> int:
    return int(run_dir.name) if run_dir.name.isdigit() else 1 << 30
