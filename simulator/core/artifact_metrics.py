"""The Sarathi-Serve artifact's metrics, computed as it computes them (reference-semantics §7).

Under `compat: reference` the recorder keeps, besides its own tables, who took part in each
batch and which prompts completed where (`BatchEvents`). From these `artifact_metrics` derives
what the artifact's metrics store would have logged:

- TBT pushes (`decode_token_execution_plus_preemption_time`): one per sequence whose prompt is
  complete at the end of a batch, in batch order (decodes, then prompt chunks). A token pushes
  the time since its request's previous token (0 for its first; a recompute does not reset it,
  so the first token after one pushes the whole stall). The batch that completes a prompt pushes
  again the request's last value (0 if it has none), a spurious entry: each request contributes
  D + 1 pushes, two of them zeros.
- their DDSketch (relative accuracy 0.001), whose quantiles are the artifact's P99 TBT;
- the per-request `sequence_metrics` (prefill_e2e_time = arrival to the end of the prompt's last
  chunk, overwritten by a recompute, is the artifact's TTFT), and the completion time series.

Nothing here runs per token in the event loop: everything is numpy over the recorded arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ddsketch import DDSketch

from .batch import Batch

SKETCH_RELATIVE_ACCURACY = 0.001
TBT_METRIC = "decode_token_execution_plus_preemption_time"
SERIES = ("request_arrival", "request_completion", "prefill_completion", "decode_completion")
# The per-request time metrics, in the artifact's column order (its CDF files are these).
REQUEST_TIME_METRICS = (
    "request_e2e_time", "request_e2e_time_normalized", "request_e2e_time_piecewise_normalized",
    "request_execution_time", "request_execution_time_normalized", "request_preemption_time",
    "request_scheduling_delay", "request_execution_plus_preemption_time",
    "request_execution_plus_preemption_time_normalized", "prefill_e2e_time", "prefill_e2e_time_normalized",
    "prefill_e2e_time_piecewise_normalized", "prefill_time_execution_plus_preemption",
    "prefill_time_execution_plus_preemption_normalized", "decode_time_execution_plus_preemption_normalized")


@dataclass
class BatchEvents:
    """Per batch, the requests in it (decodes first, then prompt chunks, as the reference lists
    them), their prompt chunk lengths (0 for a decode), and the prompts it completed."""
    members: list[int] = field(default_factory=list)
    chunks: list[int] = field(default_factory=list)
    members_per_batch: list[int] = field(default_factory=list)
    prompt_done: list[tuple[int, int]] = field(default_factory=list)  # (request id, batch index)

    def on_batch(self, batch: Batch, index: int) -> None:
        decodes = batch.decodes
        self.members.extend(req.id for req in decodes)
        self.chunks.extend([0] * len(decodes))
        for req, start, chunk in batch.prefills:
            self.members.append(req.id)
            self.chunks.append(chunk)
            if start + chunk == req.prefill_len:
                self.prompt_done.append((req.id, index))
        self.members_per_batch.append(len(decodes) + len(batch.prefills))


@dataclass
class ArtifactMetrics:
    pushes: dict[str, np.ndarray]      # per TBT push, in the artifact's order: time, request_id, token_index, value
    sketch: DDSketch                   # of the pushed values
    sequences: dict[str, np.ndarray]   # per request (ids 0..n-1): the sequence_metrics.csv columns
    series: dict[str, tuple[np.ndarray, np.ndarray]]  # completion series: (event times, increments)
    batch_members: list[list[int]]     # request ids of each batch, in the artifact's order
    batch_chunks: list[list[int]]      # their prompt chunk lengths (0 for a decode)
    prompt_done: np.ndarray            # per request: end of the batch that last completed its prompt

    def tbt_quantile(self, q: float) -> float | None:
        return float(self.sketch.get_quantile_value(q)) if self.sketch.count else None


def artifact_metrics(requests: dict[str, np.ndarray], batches: dict[str, np.ndarray], events: BatchEvents,
                     token_ids: np.ndarray) -> ArtifactMetrics:
    """`requests`, `batches`: the recorder's tables; `token_ids`: the request of every emitted
    token in emission order (batch by batch, decodes in batch order)."""
    n = len(requests["arrival"])
    end = batches["end"]
    num_batches = len(end)
    tok_batch = np.repeat(np.arange(num_batches), batches["num_emitted_tokens"])
    done = np.asarray(events.prompt_done, dtype=np.int64).reshape(-1, 2)
    done_ids, done_batch = done[:, 0], done[:, 1]

    # Tokens grouped by request (time order within): gap to the request's previous token, 0 first.
    order = np.argsort(token_ids, kind="stable")
    sid, sbatch = token_ids[order], tok_batch[order]
    stime = end[sbatch]
    first = np.ones(len(sid), dtype=bool)
    first[1:] = sid[1:] != sid[:-1]
    sgap = np.zeros(len(sid))
    sgap[1:] = np.diff(stime)
    sgap[first] = 0.0
    starts = np.flatnonzero(first)
    sindex = np.arange(len(sid)) - np.repeat(starts, np.diff(np.append(starts, len(sid))))  # outputs - 1

    # A prompt completion pushes the value of the request's last token before that batch.
    stride = num_batches + 1
    prev = np.searchsorted(sid * stride + sbatch, done_ids * stride + done_batch, side="left") - 1
    has_prev = prev >= 0
    has_prev[has_prev] = sid[prev[has_prev]] == done_ids[has_prev]
    done_value = np.zeros(len(done_ids))
    done_value[has_prev] = sgap[prev[has_prev]]
    done_index = np.full(len(done_ids), -1, dtype=np.int64)  # the artifact's "no token yet" suffix
    done_index[has_prev] = sindex[prev[has_prev]]

    # All pushes in the artifact's order: by batch, its tokens first, then its prompt completions.
    gap, index = np.empty_like(sgap), np.empty_like(sindex)
    gap[order], index[order] = sgap, sindex
    push_batch = np.concatenate([tok_batch, done_batch])
    kind = np.concatenate([np.zeros(len(token_ids), dtype=np.int8), np.ones(len(done_ids), dtype=np.int8)])
    push_order = np.lexsort((np.arange(len(push_batch)), kind, push_batch))
    pushes = {
        "time": end[push_batch[push_order]],
        "request_id": np.concatenate([token_ids, done_ids])[push_order],
        "token_index": np.concatenate([index, done_index])[push_order],
        "value": np.concatenate([gap, done_value])[push_order],
        "is_token": kind[push_order] == 0,
    }
    sketch = DDSketch(relative_accuracy=SKETCH_RELATIVE_ACCURACY)
    # Equal values added once with their count: the same buckets as one add per push, far faster.
    values, counts = np.unique(pushes["value"], return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist()):
        sketch.add(value, count)

    prompt_done = np.full(n, np.nan)
    prompt_done[done_ids] = end[done_batch]  # batch order: the last completion wins
    members = np.asarray(events.members, dtype=np.int64)
    per_batch = np.asarray(events.members_per_batch, dtype=np.int64)
    member_batch = np.repeat(np.arange(num_batches), per_batch)
    steps = np.bincount(members, minlength=n)
    execution = np.bincount(members, weights=batches["duration"][member_batch], minlength=n)
    outputs = np.bincount(token_ids, minlength=n)
    sequences = _sequence_metrics(requests, prompt_done, execution, steps, outputs)
    series = _completion_series(requests, pushes)
    bounds = np.cumsum(per_batch)[:-1]
    return ArtifactMetrics(
        pushes, sketch, sequences, series,
        [a.tolist() for a in np.split(members, bounds)] if num_batches else [],
        [a.tolist() for a in np.split(np.asarray(events.chunks, dtype=np.int64), bounds)] if num_batches else [],
        prompt_done)


def _sequence_metrics(requests: dict[str, np.ndarray], f: np.ndarray, e: np.ndarray, steps: np.ndarray,
                      outputs: np.ndarray) -> dict[str, np.ndarray]:
    """The artifact's per-request metrics (NaN for ignored requests, which log only num_ignored)."""
    a, s, c = requests["arrival"], requests["first_scheduled"], requests["finish"]
    prompt = requests["prompt_len"].astype(np.float64)
    ignored = requests["ignored"]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(ignored, np.nan, outputs.astype(np.float64))
        p = (c - s) - e  # every moment after first scheduled that it was not in a running batch
        inter_arrival = np.full(len(a), np.nan)
        inter_arrival[1:] = np.diff(a)
        metrics = {
            "request_e2e_time": c - a,
            "request_e2e_time_normalized": (c - a) / out,
            "request_e2e_time_piecewise_normalized": (s - a) + (c - s) / out,
            "request_execution_time": e,
            "request_execution_time_normalized": e / out,
            "request_preemption_time": p,
            "request_scheduling_delay": s - a,
            "request_execution_plus_preemption_time": e + p,
            "request_execution_plus_preemption_time_normalized": (e + p) / out,
            "prefill_e2e_time": f - a,
            "prefill_e2e_time_normalized": (f - a) / prompt,
            "prefill_e2e_time_piecewise_normalized": (s - a) + (f - s) / prompt,
            "prefill_time_execution_plus_preemption": f - s,
            "prefill_time_execution_plus_preemption_normalized": (f - s) / prompt,
            "decode_time_execution_plus_preemption_normalized": (c - f) / out,
        }
        metrics = {k: np.where(ignored, np.nan, v) for k, v in metrics.items()}
        metrics.update({
            "request_inter_arrival_delay": inter_arrival,
            "request_num_tokens": prompt + out,
            "request_num_prefill_tokens": np.where(ignored, np.nan, prompt),
            "request_num_decode_tokens": out,
            "request_pd_ratio": prompt / out,
            "request_num_restarts": np.where(ignored, np.nan, requests["num_preemptions"]),
            "request_num_pauses": np.where(ignored, np.nan, steps),
            "request_num_ignored": ignored.astype(np.int64),
        })
    return metrics


def _completion_series(requests: dict[str, np.ndarray], pushes: dict[str, np.ndarray]
                       ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(event times, increments) of the four cumulative series, in the order events happen."""
    arrival, finish = requests["arrival"], requests["finish"]
    by_finish = np.argsort(finish, kind="stable")
    # A life's first token is the push that follows the request's prompt-completion push.
    rid = pushes["request_id"]
    grouped = np.argsort(rid, kind="stable")
    after_done = np.zeros(len(rid), dtype=bool)
    same = rid[grouped][1:] == rid[grouped][:-1]
    after_done[grouped[1:]] = same & ~pushes["is_token"][grouped][:-1]
    life_first = after_done & pushes["is_token"]
    return {
        "request_arrival": (arrival, np.ones(len(arrival), dtype=np.int64)),
        "request_completion": (finish[by_finish], np.ones(len(finish), dtype=np.int64)),
        "prefill_completion": (pushes["time"][life_first], requests["prompt_len"][rid[life_first]]),
        "decode_completion": (pushes["time"], np.ones(len(rid), dtype=np.int64)),
    }
