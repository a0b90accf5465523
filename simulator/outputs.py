"""Writing a run's tables and summary, the same way for simulated and real runs.

Files in a run directory:
- `requests.csv`   one row per request (times in seconds from the run's start);
- `tokens.parquet` one row per output token, with its time-between-tokens (TBT);
- `batches.parquet` one row per iteration: times, shape, KV blocks, cost breakdown (`cost_<op>_s`);
- `summary.json`   quantiles, throughput, makespan, the conservation check and what produced it;
- the reference notebooks' files, same names and columns as the Sarathi-Serve artifact:
  `decode_completion_time_series.csv` ("Time (sec)", cumulative "decode_completion") and
  `decode_token_execution_plus_preemption_time.csv` (1001 rows: "cdf" 0..1, "value" = TBT quantile).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .core.metrics import RunTables

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


def _stats(values: np.ndarray) -> dict[str, float | None]:
    values = values[~np.isnan(values)]
    if not len(values):
        return {"count": 0, **{k: None for k in QUANTILES}, "mean": None, "max": None}
    out = {"count": int(len(values))}
    out.update({k: float(np.quantile(values, q)) for k, q in QUANTILES.items()})
    out["mean"] = float(values.mean())
    out["max"] = float(values.max())
    return out


def longest_generation_stall(tables: RunTables) -> float:
    """Longest interval with a request mid-generation and no token produced anywhere (Figure 1a)."""
    times = np.unique(tables.tokens["time"])
    if len(times) < 2:
        return 0.0
    first = np.sort(tables.requests["first_token"])
    finish = np.sort(tables.requests["finish"])
    gaps = np.diff(times)
    t = times[:-1]
    generating = np.searchsorted(first, t, side="right") - np.searchsorted(finish, t, side="right")
    gaps = gaps[generating > 0]
    return float(gaps.max()) if len(gaps) else 0.0


def summarize(tables: RunTables, meta: dict[str, Any]) -> dict[str, Any]:
    req, tok, bat = tables.requests, tables.tokens, tables.batches
    start = float(req["arrival"].min()) if len(req["arrival"]) else 0.0
    end = float(np.nanmax(req["finish"])) if len(req["finish"]) else 0.0
    makespan = end - start
    return {
        **meta,
        "num_requests": int(len(req["request_id"])),
        "num_batches": int(len(bat["start"])),
        "ttft_s": _stats(req["ttft"]),
        "tbt_s": _stats(tok["tbt"]),
        "e2e_s": _stats(req["e2e"]),
        "scheduling_delay_s": _stats(req["scheduling_delay"]),
        "longest_generation_stall_s": longest_generation_stall(tables),
        "makespan_s": makespan,
        "throughput": {
            "output_tokens_per_s": len(tok["time"]) / makespan if makespan > 0 else None,
            "requests_per_s": len(req["request_id"]) / makespan if makespan > 0 else None,
        },
        "preemptions": int(req["num_preemptions"].sum()),
        "conservation": tables.conservation,
    }


def write_run(out_dir: str | Path, tables: RunTables, meta: dict[str, Any]) -> dict[str, Any]:
    """Write every file of a run; returns the summary (also in summary.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(tables.requests).to_csv(out / "requests.csv", index=False)
    pd.DataFrame(tables.tokens).to_parquet(out / "tokens.parquet", index=False)
    pd.DataFrame(tables.batches).to_parquet(out / "batches.parquet", index=False)
    _write_reference_files(out, tables)
    summary = summarize(tables, meta)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write_reference_files(out: Path, tables: RunTables) -> None:
    # One row per batch that produced tokens: the same step curve as the reference's row per token.
    origin = tables.requests["arrival"].min() if len(tables.requests["arrival"]) else 0.0
    bat = tables.batches
    emitted = bat["num_emitted_tokens"]
    keep = emitted > 0
    pd.DataFrame({"Time (sec)": bat["end"][keep] - origin,
                  "decode_completion": np.cumsum(emitted[keep])}).to_csv(
        out / "decode_completion_time_series.csv", index=False)
    tbt = tables.tokens["tbt"]
    tbt = tbt[~np.isnan(tbt)]
    cdf = np.round(np.linspace(0.0, 1.0, 1001), 3)
    values = np.quantile(tbt, cdf) if len(tbt) else np.full(len(cdf), np.nan)
    pd.DataFrame({"cdf": cdf, "value": values}).to_csv(
        out / "decode_token_execution_plus_preemption_time.csv", index=False)

