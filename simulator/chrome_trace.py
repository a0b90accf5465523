"""A run's batches as a Chrome trace (chrome://tracing, https://ui.perfetto.dev).

One complete event per batch: a span from its start to its end, on one track per replica (the
batches table's `replica` column; a single track without one), with the batch's composition as
its arguments. The event layout is the Sarathi-Serve artifact's `chrome_trace.json` (times in
microseconds, `pid` = replica, `tid` = 0, the artifact's argument names), so traces from both
open side by side.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

# batches-table column -> the artifact's argument name; columns a table lacks are left out
_ARGS = {
    "batch_id": "batch_id",
    "batch_size": "batch_size",
    "request_ids": "request_ids",
    "num_tokens": "num_batched_tokens",
    "num_prefill_tokens": "num_batched_prompt_tokens",
    "num_decode_tokens": "num_batched_output_tokens",
    "prompt_chunk_lens": "prompt_chunk_lens",
}


def chrome_trace_events(batches: pd.DataFrame) -> list[dict]:
    """The trace events of a batches table (needs `start` and `end` in seconds)."""
    missing = {"start", "end"} - set(batches.columns)
    if missing:
        raise ValueError(f"a Chrome trace needs the batches' {sorted(missing)} columns")
    n = len(batches)
    start_us = batches["start"].to_numpy(np.float64) * 1e6
    dur_us = batches["end"].to_numpy(np.float64) * 1e6 - start_us
    replica = batches["replica"].tolist() if "replica" in batches.columns else [0] * n
    args = {name: _plain(batches[column]) for column, name in _ARGS.items() if column in batches.columns}
    names = args.get("request_ids") or args.get("batch_id") or list(range(n))
    events = []
    for i in range(n):
        events.append({
            "name": str(names[i]), "ph": "X", "ts": float(start_us[i]), "dur": float(dur_us[i]),
            "pid": replica[i], "tid": 0, "args": {name: values[i] for name, values in args.items()},
        })
    return events


def write_chrome_trace(batches: pd.DataFrame, path: str | Path) -> Path:
    """Write `batches` (one row per batch) as a Chrome trace JSON array to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(chrome_trace_events(batches)))  # one string: far faster than json.dump
    return path


def _plain(column: pd.Series) -> list:
    """JSON-ready values: numpy scalars and arrays become Python ints, floats and lists."""
    return [v.tolist() if isinstance(v, np.ndarray) else v for v in column.tolist()]
