"""Metrics from serving events, identical in simulation and on the GPU.

An engine calls `MetricsRecorder.on_batch` once per iteration with what the scheduler reported.
Recording is cheap (appends to flat lists: it runs once per batch on the simulator's hot path);
all tables are built at the end with numpy:

- requests: arrival, first scheduled, first token, finish, TTFT, end-to-end, scheduling delay,
  preemptions, and the longest gap between two of its tokens;
- tokens: one row per output token (request, index, time, gap to the previous token = TBT;
  the first token's gap is its TTFT, so it carries no TBT);
- batches: start, end, the batch shape (`BatchShape.FIELDS`), size, KV blocks in use, preemptions,
  and any per-batch extras the engine measured (e.g. GPU time in real mode).

`finalize()` checks conservation: every request finished exactly once with exactly its
`decode_len` tokens (under `compat: reference`, plus the tokens it had generated before its last
preemption; none for a request it ignored). A failure is reported in the summary and raised,
never passed off.

Under `compat: reference` the recorder also logs who took part in each batch and where prompts
completed, from which `finalize` derives the artifact's own metrics (`artifact_metrics.py`), and
TTFT is the artifact's `prefill_e2e_time`: arrival to the end of the prompt's last chunk.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .artifact_metrics import ArtifactMetrics, BatchEvents, artifact_metrics
from .batch import Batch, BatchShape
from .request import Request

_request_id = operator.attrgetter("id")


class ConservationError(RuntimeError):
    pass


@dataclass
class RunTables:
    requests: dict[str, np.ndarray]
    tokens: dict[str, np.ndarray]
    batches: dict[str, np.ndarray]
    conservation: dict
    artifact: ArtifactMetrics | None = None  # compat reference only


class MetricsRecorder:
    def __init__(self, requests: Sequence[Request], compat: str = "corrected"):
        self.requests = list(requests)
        if [r.id for r in self.requests] != list(range(len(self.requests))):
            raise ValueError("request ids must be 0..n-1 in list order")
        n = len(self.requests)
        self.first_scheduled = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.finish_count = np.zeros(n, dtype=np.int64)
        self._token_ids: list[int] = []
        self._tokens_per_batch: list[int] = []
        self._batch_rows: list[tuple] = []
        self._extras: dict[str, list[float]] = {}
        self.reference = compat == "reference"
        self.ignored = np.zeros(n, dtype=bool)
        self.tokens_before_preemption = np.zeros(n, dtype=np.int64)  # at its last preemption
        self.events = BatchEvents() if self.reference else None

    def on_batch(self, batch: Batch, start: float, end: float, emitted: list[Request],
                 finished: list[Request], kv_blocks_in_use: int, **extras: float) -> None:
        for req, _start, _chunk in batch.prefills:
            if self.first_scheduled[req.id] != self.first_scheduled[req.id]:  # NaN: first time
                self.first_scheduled[req.id] = start
        self._token_ids.extend(map(_request_id, emitted))
        self._tokens_per_batch.append(len(emitted))
        for req in finished:
            self.finish[req.id] = end
            self.finish_count[req.id] += 1
        self._batch_rows.append((start, end, batch.num_prefill_tokens, len(batch.decodes),
                                 len(batch.prefills), batch.decode_kv_tokens, batch.prefill_kv_tokens,
                                 batch.prefill_attn_pairs, kv_blocks_in_use, len(batch.preempted)))
        for key, value in extras.items():
            self._extras.setdefault(key, []).append(value)
        if self.events is not None:
            for req in batch.preempted:
                self.tokens_before_preemption[req.id] = req.generated
            self.events.on_batch(batch, len(self._batch_rows) - 1)

    def on_ignored(self, requests: Sequence[Request], now: float) -> None:
        """Requests a scheduler dropped at `now` (compat reference: longer than max_model_len)."""
        for req in requests:
            self.ignored[req.id] = True
            self.finish[req.id] = now
            self.finish_count[req.id] += 1

    # ---- tables ------------------------------------------------------------------------------------
    def finalize(self) -> RunTables:
        batches = self._batch_table()
        tokens = self._token_table(batches["end"])
        requests = self._request_table(tokens)
        conservation = self._conservation(tokens)
        if self.events is None:
            return RunTables(requests, tokens, batches, conservation)
        requests["ignored"] = self.ignored.copy()
        artifact = artifact_metrics(requests, batches, self.events, np.asarray(self._token_ids, dtype=np.int64))
        requests["prompt_done"] = artifact.prompt_done
        requests["ttft"] = artifact.prompt_done - requests["arrival"]
        return RunTables(requests, tokens, batches, conservation, artifact)

    def _batch_table(self) -> dict[str, np.ndarray]:
        names = ("start", "end") + BatchShape.FIELDS + ("kv_blocks_in_use", "num_preempted")
        rows = np.array(self._batch_rows, dtype=np.float64).reshape(-1, len(names))
        table = {name: rows[:, i] if i < 2 else rows[:, i].astype(np.int64) for i, name in enumerate(names)}
        table["batch_id"] = np.arange(len(rows))
        table["duration"] = table["end"] - table["start"]
        table["batch_size"] = table["num_decode_tokens"] + table["num_prefills"]
        table["num_tokens"] = table["num_prefill_tokens"] + table["num_decode_tokens"]
        table["num_emitted_tokens"] = np.asarray(self._tokens_per_batch, dtype=np.int64)
        for key, values in self._extras.items():
            table[key] = np.asarray(values, dtype=np.float64)
        return table

    def _token_table(self, batch_end: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.asarray(self._token_ids, dtype=np.int64)
        times = np.repeat(batch_end, np.asarray(self._tokens_per_batch, dtype=np.int64))
        order = np.argsort(ids, kind="stable")  # per request, tokens stay in time order
        ids, times = ids[order], times[order]
        first = np.ones(len(ids), dtype=bool)
        first[1:] = ids[1:] != ids[:-1]
        starts = np.flatnonzero(first)
        index = np.arange(len(ids)) - np.repeat(starts, np.diff(np.append(starts, len(ids)))) + 1
        tbt = np.full(len(ids), np.nan)
        tbt[1:] = np.diff(times)
        tbt[first] = np.nan
        return {"request_id": ids, "token_index": index, "time": times, "tbt": tbt}

    def _request_table(self, tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reqs = self.requests
        n = len(reqs)
        arrival = np.array([r.arrival for r in reqs], dtype=np.float64)
        first_token = np.full(n, np.nan)
        is_first = tokens["token_index"] == 1
        first_token[tokens["request_id"][is_first]] = tokens["time"][is_first]
        max_tbt = np.full(n, np.nan)
        has_tbt = ~np.isnan(tokens["tbt"])
        np.fmax.at(max_tbt, tokens["request_id"][has_tbt], tokens["tbt"][has_tbt])
        return {
            "request_id": np.arange(n),
            "arrival": arrival,
            "prompt_len": np.array([r.prompt_len for r in reqs], dtype=np.int64),
            "decode_len": np.array([r.decode_len for r in reqs], dtype=np.int64),
            "first_scheduled": self.first_scheduled,
            "first_token": first_token,
            "finish": self.finish,
            "ttft": first_token - arrival,
            "e2e": self.finish - arrival,
            "scheduling_delay": self.first_scheduled - arrival,
            "num_preemptions": np.array([r.num_preemptions for r in reqs], dtype=np.int64),
            "max_tbt": max_tbt,
        }

    def _conservation(self, tokens: dict[str, np.ndarray]) -> dict:
        n = len(self.requests)
        decode_len = np.array([r.decode_len for r in self.requests], dtype=np.int64)
        expected = self.tokens_before_preemption + np.where(self.ignored, 0, decode_len)
        produced = np.bincount(tokens["request_id"], minlength=n)
        finished_once = int((self.finish_count == 1).sum())
        result = {
            "requests": n,
            "finished_exactly_once": finished_once,
            "finished_twice_or_more": int((self.finish_count > 1).sum()),
            "tokens_expected": int(expected.sum()),
            "tokens_produced": int(produced.sum()),
            "requests_with_wrong_token_count": int((produced != expected).sum()),
        }
        result["ok"] = (finished_once == n and result["requests_with_wrong_token_count"] == 0)
        return result


def check_conservation(conservation: dict) -> None:
    if not conservation["ok"]:
        raise ConservationError(f"conservation check failed: {conservation}")
