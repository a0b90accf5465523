"""Metrics from serving events, identical in simulation and on the GPU.

An engine calls `MetricsRecorder.on_batch` once per iteration with what the scheduler reported.
Recording is cheap (appends to flat lists: it runs once per batch on the simulator's hot path);
every 65,536 batches the lists are folded into numpy. No token is recorded one by one (outside
compat reference): `CohortStream` derives every token metric from per-batch and per-request events
(a replica's decoding requests share their last token's time), and the token rows, when kept
(`keep_tokens`), are built from those events once the run is over. The TBT distribution takes a
decode batch's cohort as one weighted value, so its sum (the mean TBT) may differ from a per-token
sum in the last bits. The tables are built with numpy:

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

Under `compat: reference` the recorder records each token (`TokenStream`) and logs who took part
in each batch and where prompts completed, from which `finalize` derives the artifact's own
metrics (`artifact_metrics.py`), and TTFT is the artifact's `prefill_e2e_time`: arrival to the end
of the prompt's last chunk.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .artifact_metrics import ArtifactMetrics, BatchEvents, artifact_metrics
from .batch import Batch, BatchShape
from .distribution import Distribution, ExactUntilFull
from .request import Request
from .token_stream import CohortStream, TokenStream

_request_id = operator.attrgetter("id")
FOLD_BATCHES = 1 << 16    # fold the pending batch rows into numpy past this many
EXACT_MAX_TBT_VALUES = 50_000_000  # exact TBT quantiles while they take at most this many values or pairs
SUMMARY_BATCH_COLUMNS = ("end", "num_emitted_tokens", "replica")  # what a run keeps without its batch table


class ConservationError(RuntimeError):
    pass


@dataclass
class RunTables:
    requests: dict[str, np.ndarray]
    tokens: dict[str, np.ndarray]
    batches: dict[str, np.ndarray]
    conservation: dict
    artifact: ArtifactMetrics | None = None  # compat reference only
    tbt: Distribution | None = None           # every token's TBT, per replica and overall
    later_tokens: np.ndarray | None = None    # per batch: tokens it emitted that were not a first token


class MetricsRecorder:
    def __init__(self, requests: Sequence[Request], compat: str = "corrected", keep_tokens: bool = True,
                 keep_batches: bool = True, num_groups: int = 1):
        """`keep_tokens`, `keep_batches`: build the token and batch tables (else only what the
        summary needs: `SUMMARY_BATCH_COLUMNS` of each batch); `num_groups`: how many replicas
        record batches (each passes its index as the `replica` extra)."""
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
        self._folded: list[dict[str, np.ndarray]] = []  # batch-table chunks
        self._later_tokens: list[np.ndarray] = []
        self.reference = compat == "reference"
        self.keep_batches = keep_batches or self.reference
        tbt = ExactUntilFull(num_groups, EXACT_MAX_TBT_VALUES)
        self.keep_tokens = keep_tokens or self.reference
        # the cohort stream works per batch; the artifact's metrics read every token's record
        self._cohorts = not self.reference
        self.tokens: TokenStream | CohortStream = (
            CohortStream(n, tbt, num_groups) if self._cohorts else TokenStream(n, tbt))
        self._later_pending: list[int] = []  # cohort stream: per batch, its later tokens
        self.ignored = np.zeros(n, dtype=bool)
        self.tokens_before_preemption = np.zeros(n, dtype=np.int64)  # at its last preemption
        self.events = BatchEvents() if self.reference else None

    def on_batch(self, batch: Batch, start: float, end: float, emitted: list[Request],
                 finished: list[Request], kv_blocks_in_use: int, **extras: float) -> None:
        for req, _start, _chunk in batch.prefills:
            if self.first_scheduled[req.id] != self.first_scheduled[req.id]:  # NaN: first time
                self.first_scheduled[req.id] = start
        if self._cohorts:
            self._later_pending.append(self.tokens.on_batch(
                extras.get("replica", 0), end, len(batch.decodes), emitted, finished, batch.preempted))
        else:  # each token's request: `emitted` starts with the decodes, whose ids may be listed
            decode_ids = batch.decode_ids
            if decode_ids is None:
                self._token_ids.extend(map(_request_id, emitted))
            else:
                self._token_ids.extend(decode_ids)
                if len(emitted) > len(decode_ids):
                    self._token_ids.extend(map(_request_id, emitted[len(decode_ids):]))
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
        elif len(self._batch_rows) >= FOLD_BATCHES:
            self._fold()

    def _fold(self) -> None:
        """Move the pending batches and tokens into numpy: a batch-table chunk and the token stream."""
        names = ("start", "end") + BatchShape.FIELDS + ("kv_blocks_in_use", "num_preempted")
        rows = np.array(self._batch_rows, dtype=np.float64).reshape(-1, len(names))
        # copies, not views: a column kept alone must not keep the whole `rows` alive
        chunk = {name: rows[:, i].copy() if i < 2 else rows[:, i].astype(np.int64) for i, name in enumerate(names)}
        per_batch = np.asarray(self._tokens_per_batch, dtype=np.int64)
        chunk["num_emitted_tokens"] = per_batch
        for key, values in self._extras.items():
            chunk[key] = np.asarray(values, dtype=np.float64)
        if self._cohorts:
            self.tokens.flush()
            self._later_tokens.append(np.asarray(self._later_pending, dtype=np.int64))
            self._later_pending = []
        else:
            group = chunk.get("replica")
            later = self.tokens.add(np.asarray(self._token_ids, dtype=np.int64), np.repeat(chunk["end"], per_batch),
                                    None if group is None else np.repeat(group.astype(np.int64), per_batch))
            ends = np.cumsum(per_batch)  # each batch's tokens end here in `later`
            later_before = np.concatenate(([0], np.cumsum(later, dtype=np.int64)))
            self._later_tokens.append(later_before[ends] - later_before[ends - per_batch])
        self._folded.append(chunk if self.keep_batches else
                            {key: chunk[key] for key in SUMMARY_BATCH_COLUMNS if key in chunk})
        if not self.reference:  # the artifact's metrics index the whole lists
            self._token_ids, self._tokens_per_batch, self._batch_rows = [], [], []
            self._extras = {key: [] for key in self._extras}

    def on_ignored(self, requests: Sequence[Request], now: float) -> None:
        """Requests a scheduler dropped at `now` (compat reference: longer than max_model_len)."""
        for req in requests:
            self.ignored[req.id] = True
            self.finish[req.id] = now
            self.finish_count[req.id] += 1

    # ---- tables ------------------------------------------------------------------------------------
    def finalize(self) -> RunTables:
        """The tables; `tokens` is None when the recorder was told not to keep them."""
        if self._batch_rows or not self._folded:
            self._fold()
        batches = self._batch_table()
        if self._cohorts:
            self.tokens.finish()
        tokens = self.tokens.rows() if self.keep_tokens else None
        requests = self._request_table()
        conservation = self._conservation()
        later = np.concatenate(self._later_tokens)
        if self.events is None:
            return RunTables(requests, tokens, batches, conservation, tbt=self.tokens.tbt, later_tokens=later)
        requests["ignored"] = self.ignored.copy()
        artifact = artifact_metrics(requests, batches, self.events, np.asarray(self._token_ids, dtype=np.int64))
        requests["prompt_done"] = artifact.prompt_done
        requests["ttft"] = artifact.prompt_done - requests["arrival"]
        return RunTables(requests, tokens, batches, conservation, artifact, tbt=self.tokens.tbt, later_tokens=later)

    def _batch_table(self) -> dict[str, np.ndarray]:
        table = {key: np.concatenate([chunk[key] for chunk in self._folded]) for key in self._folded[-1]}
        self._folded = []  # finalize runs once: the chunks' memory goes back now
        if not self.keep_batches:
            return table
        extras = {key: table.pop(key) for key in self._extras}
        table["batch_id"] = np.arange(len(table["start"]))
        table["duration"] = table["end"] - table["start"]
        table["batch_size"] = table["num_decode_tokens"] + table["num_prefills"]
        table["num_tokens"] = table["num_prefill_tokens"] + table["num_decode_tokens"]
        table["num_emitted_tokens"] = table.pop("num_emitted_tokens")  # the column order of the files
        table.update(extras)
        return table

    def _request_table(self) -> dict[str, np.ndarray]:
        reqs = self.requests
        n = len(reqs)
        arrival = np.array([r.arrival for r in reqs], dtype=np.float64)
        first_token = self.tokens.first_token
        max_tbt = self.tokens.max_tbt
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

    def _conservation(self) -> dict:
        n = len(self.requests)
        decode_len = np.array([r.decode_len for r in self.requests], dtype=np.int64)
        expected = self.tokens_before_preemption + np.where(self.ignored, 0, decode_len)
        produced = self.tokens.count
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
