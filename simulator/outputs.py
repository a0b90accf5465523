"""Writing a run's tables and summary, the same way for simulated and real runs.

Files in a run directory:
- `requests.csv`   one row per request (times in seconds from the run's start);
- `tokens.parquet` one row per output token, with its time-between-tokens (TBT); not with
                   `outputs.tokens=false` (the summary's TBT quantiles are exact either way while
                   they take at most 50 M values, else from a sketch within 0.1%, as `tbt_quantiles`
                   says);
- `batches.parquet` one row per iteration: times, shape, KV blocks, cost breakdown (`cost_<op>_s`);
                   not with `outputs.batches=false`;
- `summary.json`   quantiles, throughput, makespan, the conservation check and what produced it;
- the reference notebooks' files, same names and columns as the Sarathi-Serve artifact:
  `decode_completion_time_series.csv` ("Time (sec)", cumulative "decode_completion") and
  `decode_token_execution_plus_preemption_time.csv` (1001 rows: "cdf" 0..1, "value" = TBT quantile);
  under `compat: reference` instead every file of the artifact, with its metric definitions
  (simulator/artifact_files.py), and the summary's TBT and TTFT are the artifact's.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .core.metrics import RunTables
from .run_dir import staged_dir
from .table_files import write_csv, write_parquet

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
    """Longest time with a request mid-generation and no decode token produced anywhere (Figure 1a).

    A request is mid-generation from its first token until it finishes. First tokens do not end a
    stall: a run of prompt-only batches (vLLM admitting prompts) holds every decode back, and
    counts as one stall from the last decode token before it to the first one after it.
    """
    req = tables.requests
    # Under compat reference generation starts when the prompt completes, and every output token
    # is a decode (the iteration that completes a prompt emits none).
    reference = "prompt_done" in req
    decode_times = np.unique(tables.tokens["time"] if reference else
                             tables.batches["end"][tables.later_tokens > 0])
    if not len(decode_times):
        return 0.0
    first, finish = req["prompt_done" if reference else "first_token"], req["finish"]
    multi = req["decode_len"] > 1  # a one-token request is never mid-generation
    starts_sorted = np.sort(first[multi])
    finishes_sorted = np.sort(finish[multi])
    prev = np.concatenate(([-np.inf], decode_times[:-1]))
    # Requests mid-generation at `prev` stay so until their next decode token, i.e. the whole gap.
    active = (np.searchsorted(starts_sorted, prev, side="right")
              - np.searchsorted(finishes_sorted, prev, side="right"))
    # Otherwise the stall starts when the first request enters generation within the gap.
    entering = np.searchsorted(starts_sorted, prev, side="right")
    entry = starts_sorted[np.minimum(entering, len(starts_sorted) - 1)]
    start = np.where(active > 0, prev, entry)
    stalls = np.where(start < decode_times, decode_times - start, 0.0)
    return float(stalls.max())


def summarize(tables: RunTables, meta: dict[str, Any]) -> dict[str, Any]:
    req, bat = tables.requests, tables.batches
    start = float(req["arrival"].min()) if len(req["arrival"]) else 0.0
    end = float(np.nanmax(req["finish"])) if len(req["finish"]) else 0.0
    makespan = end - start
    return {
        **meta,
        "num_requests": int(len(req["request_id"])),
        "num_batches": int(len(bat["end"])),
        "ttft_s": _stats(req["ttft"]),
        "tbt_s": tables.tbt.stats(QUANTILES) if tables.artifact is None else _artifact_tbt_stats(tables),
        "tbt_quantiles": tables.tbt.accuracy if tables.artifact is None else "the artifact's DDSketch",
        "e2e_s": _stats(req["e2e"]),
        "scheduling_delay_s": _stats(req["scheduling_delay"]),
        "longest_generation_stall_s": longest_generation_stall(tables),
        "makespan_s": makespan,
        "throughput": {
            "output_tokens_per_s": tables.conservation["tokens_produced"] / makespan if makespan > 0 else None,
            "requests_per_s": len(req["request_id"]) / makespan if makespan > 0 else None,
        },
        "preemptions": int(req["num_preemptions"].sum()),
        "conservation": tables.conservation,
        **({"replicas": per_replica(tables)} if "replica" in req else {}),
    }


def _artifact_tbt_stats(tables: RunTables) -> dict[str, Any]:
    from .artifact_files import tbt_stats  # compat reference only: keeps pandas out of the everyday run
    return tbt_stats(tables.artifact)


def per_replica(tables: RunTables) -> list[dict[str, Any]]:
    """A cluster's load and latency per replica (index = replica), next to the overall figures."""
    req, bat = tables.requests, tables.batches
    out = []
    for r in range(int(req["replica"].max()) + 1):
        mine = req["replica"] == r
        out.append({
            "requests": int(mine.sum()),
            "batches": int((bat["replica"] == r).sum()),
            "output_tokens": int(req["decode_len"][mine].sum()),
            "ttft_s": _stats(req["ttft"][mine]),
            "tbt_s": tables.tbt.stats(QUANTILES, group=r),
            "preemptions": int(req["num_preemptions"][mine].sum()),
        })
    return out


def write_run(out_dir: str | Path, tables: RunTables, meta: dict[str, Any],
              chrome_trace: bool = False, batches: bool = True) -> dict[str, Any]:
    """Write every file of a run; returns the summary (also in summary.json). The files appear in
    `out_dir` only once all are written, summary.json last (simulator/run_dir.py). `chrome_trace`
    adds chrome_trace.json (a span per batch, a track per replica); `batches=False` leaves out
    batches.parquet (the recorder then kept only the summary's columns)."""
    with staged_dir(out_dir) as out, ThreadPoolExecutor(max_workers=1) as writer:
        # The token table, the largest file by far, is encoded by pyarrow outside the GIL: written
        # beside the other files, not before them. Leaving the `with` waits for it, so the staged
        # directory is never moved, or removed after a failure, while it is being written.
        tokens = (writer.submit(write_parquet, out / "tokens.parquet", tables.tokens)
                  if tables.tokens is not None else None)
        write_csv(out / "requests.csv", tables.requests)
        if batches:
            write_parquet(out / "batches.parquet", tables.batches)
            if chrome_trace:
                import pandas as pd  # only for this optional file

                from .chrome_trace import write_chrome_trace
                write_chrome_trace(pd.DataFrame(tables.batches), out / "chrome_trace.json")
        _write_reference_files(out, tables, meta)
        summary = summarize(tables, meta)
        if tokens is not None:
            tokens.result()  # its error, if any, is this run's
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write_reference_files(out: Path, tables: RunTables, meta: dict[str, Any]) -> None:
    if tables.artifact is not None:  # compat reference: all the artifact's files, its definitions
        from .artifact_files import write_artifact_files
        write_artifact_files(out, tables, meta)
        return
    # One row per batch that produced tokens: the same step curve as the reference's row per token.
    origin = tables.requests["arrival"].min() if len(tables.requests["arrival"]) else 0.0
    bat = tables.batches
    emitted = bat["num_emitted_tokens"]
    keep = emitted > 0
    write_csv(out / "decode_completion_time_series.csv",
              {"Time (sec)": bat["end"][keep] - origin, "decode_completion": np.cumsum(emitted[keep])})
    cdf = np.round(np.linspace(0.0, 1.0, 1001), 3)
    values = tables.tbt.quantiles(cdf)
    write_csv(out / "decode_token_execution_plus_preemption_time.csv", {"cdf": cdf, "value": values})

