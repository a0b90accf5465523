"""The Sarathi-Serve artifact's output files, written for runs under `compat: reference`.

Names, columns and layout are the artifact's (reference-semantics §7), so its Figure 1 notebooks
read a run directory as they read one of the artifact's:

    benchmark_config.yml                 flat run config (the 1b notebook reads the scheduler and QPS)
    requests.json                        id (from 1), arrived_at, num_prefill_tokens, num_decode_tokens
    replica_0/config.yml                 scheduler_type, chunk_size, ... (the 1a notebook)
    replica_0/sequence_metrics.csv       per request ("Request Id" = 0_<id>): times and counts
    replica_0/batch_metrics.csv          per batch ("Batch Id"): token counts, size, times
    replica_0/chrome_trace.json          a span per batch
    replica_0/plots/<metric>.csv         per-request time metrics and batch metrics as CDFs
                                         (id, value, cdf = percent rank), batch metrics also as
                                         <metric>_per_batch.csv
    replica_0/plots/decode_token_execution_plus_preemption_time.csv       1,001 DDSketch quantiles
    replica_0/plots/decode_token_execution_plus_preemption_time_list.csv  every TBT push
    replica_0/plots/<series>_time_series.csv   cumulative request_arrival, request_completion,
                                               prefill_completion, decode_completion

The artifact's PNG plots and its histograms (PNG only) are not written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .chrome_trace import write_chrome_trace
from .core.artifact_metrics import REQUEST_TIME_METRICS, SERIES, TBT_METRIC, ArtifactMetrics
from .core.metrics import RunTables

REPLICA_DIR = "replica_0"
PLOTS_DIR = f"{REPLICA_DIR}/plots"
CDF_POINTS = 1001
TIME = "Time (sec)"
REQUEST_ID = "Request Id"
BATCH_ID = "Batch Id"
_BATCH_COUNTS = ("batch_num_tokens", "batch_num_prefill_tokens", "batch_num_decode_tokens", "batch_size")
_BATCH_TIMES = ("batch_execution_time", "inter_batch_delay")


def tbt_stats(artifact: ArtifactMetrics) -> dict[str, Any]:
    """The summary's TBT entry as the artifact computes it: quantiles of the DDSketch of pushes."""
    values = artifact.pushes["value"]
    if not len(values):
        return {"count": 0, "p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    return {"count": int(len(values)), "p50": artifact.tbt_quantile(0.5), "p90": artifact.tbt_quantile(0.9),
            "p99": artifact.tbt_quantile(0.99), "mean": float(artifact.sketch.avg), "max": float(values.max())}


def write_artifact_files(out: Path, tables: RunTables, meta: dict[str, Any]) -> None:
    artifact = tables.artifact
    if artifact is None:
        raise ValueError("the artifact's files need a run recorded under compat=reference")
    plots = out / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    _write_configs(out, meta, len(tables.requests["arrival"]))
    _write_requests_json(out / "requests.json", tables.requests)
    sequences = _sequence_frame(tables.requests, artifact)
    sequences.to_csv(out / REPLICA_DIR / "sequence_metrics.csv", index=False)
    for name in REQUEST_TIME_METRICS:
        _write_cdf(plots / f"{name}.csv", sequences[[REQUEST_ID, name]].dropna(), name)
    batches = _batch_frame(tables.batches)
    batches.to_csv(out / REPLICA_DIR / "batch_metrics.csv", index=False)
    for name in _BATCH_TIMES + _BATCH_COUNTS:
        series = batches[[BATCH_ID, name]].dropna()
        _write_cdf(plots / f"{name}.csv", series, name)
        series.to_csv(plots / f"{name}_per_batch.csv", index=False)
    _write_tbt_files(plots, artifact)
    origin = float(tables.requests["arrival"].min()) if len(tables.requests["arrival"]) else 0.0
    for name in SERIES:
        times, increments = artifact.series[name]
        if len(times):  # the artifact writes no file for an empty series
            pd.DataFrame({TIME: times - origin, name: np.cumsum(increments)}).to_csv(
                plots / f"{name}_time_series.csv", index=False)
    trace = pd.DataFrame({"start": tables.batches["start"], "end": tables.batches["end"],
                          "batch_size": tables.batches["batch_size"],
                          "request_ids": artifact.batch_members,
                          "num_tokens": tables.batches["num_tokens"],
                          "num_prefill_tokens": tables.batches["num_prefill_tokens"],
                          "num_decode_tokens": tables.batches["num_decode_tokens"],
                          "prompt_chunk_lens": artifact.batch_chunks})
    write_chrome_trace(trace, out / REPLICA_DIR / "chrome_trace.json")


def _write_configs(out: Path, meta: dict[str, Any], num_requests: int) -> None:
    sched = meta["scheduler_config"]
    workload = meta.get("workload_config") or {}
    arrival = workload.get("arrival") or {}
    benchmark = {
        "seed": workload.get("seed"),
        "model_name": meta.get("model"),
        "model_max_model_len": sched["max_model_len"],
        "model_tensor_parallel_degree": meta.get("tp"),
        "model_pipeline_parallel_degree": 1,
        "cluster_num_replicas": 1,
        "request_generator_provider": "synthetic",
        "synthetic_request_generator_interval_provider": arrival.get("kind"),
        "poisson_request_interval_generator_qps": arrival.get("qps"),
        "synthetic_request_generator_num_requests": num_requests,
        "synthetic_request_generator_length_provider": (workload.get("lengths") or {}).get("kind"),
        "trace_request_length_generator_max_tokens": workload.get("max_tokens"),
        "replica_scheduler_provider": meta["scheduler"],
        "replica_scheduler_max_batch_size": sched["max_num_seqs"],
        "sarathi_scheduler_chunk_size": sched["chunk_size"],
        "vllm_scheduler_max_tokens_in_batch": sched["max_tokens_in_batch"],
        "metrics_store_keep_individual_batch_metrics": True,
    }
    (out / "benchmark_config.yml").write_text(yaml.safe_dump(benchmark, sort_keys=False))
    replica = {"scheduler_type": meta["scheduler"], "chunk_size": sched["chunk_size"],
               "max_num_seqs": sched["max_num_seqs"], "max_model_len": sched["max_model_len"],
               "max_num_batched_tokens": sched["max_tokens_in_batch"] or sched["max_model_len"],
               "block_size": sched["block_size"], "watermark": sched["watermark"],
               "num_gpu_blocks": meta.get("kv_cache_blocks")}
    (out / REPLICA_DIR).mkdir(parents=True, exist_ok=True)
    (out / REPLICA_DIR / "config.yml").write_text(yaml.safe_dump(replica, sort_keys=False))


def _write_requests_json(path: Path, requests: dict[str, np.ndarray]) -> None:
    rows = [{"id": int(i) + 1, "arrived_at": float(a), "num_prefill_tokens": int(p), "num_decode_tokens": int(d)}
            for i, a, p, d in zip(requests["request_id"], requests["arrival"], requests["prompt_len"],
                                  requests["decode_len"])]
    path.write_text(json.dumps(rows, indent="\t") + "\n")


def _sequence_frame(requests: dict[str, np.ndarray], artifact: ArtifactMetrics) -> pd.DataFrame:
    frame = pd.DataFrame({REQUEST_ID: [f"0_{i}" for i in requests["request_id"]], **artifact.sequences})
    # The artifact outer-joins its per-metric series on the id string, which sorts it as text.
    return frame.sort_values(REQUEST_ID, kind="stable").reset_index(drop=True)


def _batch_frame(batches: dict[str, np.ndarray]) -> pd.DataFrame:
    inter = np.full(len(batches["start"]), np.nan)
    inter[1:] = batches["start"][1:] - batches["end"][:-1]
    return pd.DataFrame({BATCH_ID: batches["batch_id"],
                         "batch_num_tokens": batches["num_tokens"],
                         "batch_num_prefill_tokens": batches["num_prefill_tokens"],
                         "batch_num_decode_tokens": batches["num_decode_tokens"],
                         "batch_size": batches["batch_size"],
                         "batch_execution_time": batches["duration"],
                         "inter_batch_delay": inter})


def _write_cdf(path: Path, series: pd.DataFrame, name: str) -> None:
    if not len(series):
        return
    series = series.assign(cdf=series[name].rank(method="first", pct=True))
    series.sort_values("cdf", kind="stable").to_csv(path, index=False)


def _write_tbt_files(plots: Path, artifact: ArtifactMetrics) -> None:
    if not artifact.sketch.count:
        return
    cdf = np.linspace(0.0, 1.0, CDF_POINTS)
    pd.DataFrame({"cdf": cdf, TBT_METRIC: [artifact.sketch.get_quantile_value(q) for q in cdf]}).to_csv(
        plots / f"{TBT_METRIC}.csv", index=False)
    pushes = artifact.pushes
    ids = [f"0_{r}_{i}" for r, i in zip(pushes["request_id"].tolist(), pushes["token_index"].tolist())]
    pd.DataFrame({"Decode Token Id": ids, f"{TBT_METRIC}_list": pushes["value"]}).to_csv(
        plots / f"{TBT_METRIC}_list.csv", index=False)
