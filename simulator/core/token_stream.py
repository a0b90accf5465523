"""Output tokens folded chunk by chunk into what the metrics need, so that a run's memory does not
grow with its tokens unless it writes them.

A chunk is the tokens of consecutive batches, in emission order. Per request the stream keeps its
token count, its last token's time, its first token's time and its largest gap; each token's
time-between-tokens (TBT) goes to a `Distribution`. Only with `keep_rows` are the token rows
themselves kept (for tokens.parquet).
"""
from __future__ import annotations

import numpy as np

from .distribution import Distribution


class TokenStream:
    def __init__(self, num_requests: int, tbt: Distribution, keep_rows: bool):
        self.tbt = tbt
        self.count = np.zeros(num_requests, dtype=np.int64)
        self.last_time = np.full(num_requests, np.nan)
        self.first_token = np.full(num_requests, np.nan)
        self.max_tbt = np.full(num_requests, np.nan)
        self.keep_rows = keep_rows
        self._rows: list[tuple[np.ndarray, ...]] = []

    def add(self, ids: np.ndarray, times: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """Fold one chunk: token i of request `ids[i]` came out at `times[i]` (in `groups[i]`).
        Returns, per token in the given order, whether it is a request's second or later token."""
        n = len(ids)
        if not n:
            return np.zeros(0, dtype=bool)
        # Batches list their requests oldest first, so the ids are ascending runs: a stable sort
        # merges them cheaply, and keeps each request's tokens in time order.
        order = np.argsort(ids.astype(np.int32, copy=False), kind="stable")
        ids, times = ids[order], times[order]
        first = np.ones(n, dtype=bool)
        first[1:] = ids[1:] != ids[:-1]
        starts = np.flatnonzero(first)
        run = np.diff(np.append(starts, n))
        owners = ids[starts]
        previous = np.empty(n)
        previous[1:] = times[:-1]
        previous[starts] = self.last_time[owners]
        tbt = times - previous  # NaN for a request's first token
        index = np.arange(n) - np.repeat(starts, run) + 1 + np.repeat(self.count[owners], run)
        self.count[owners] += run
        self.last_time[owners] = times[starts + run - 1]
        opening = index == 1
        self.first_token[ids[opening]] = times[opening]
        self.max_tbt[owners] = np.fmax(self.max_tbt[owners], np.fmax.reduceat(tbt, starts))
        has = ~opening
        self.tbt.add(tbt[has], None if groups is None else groups[order][has])
        if self.keep_rows:
            self._rows.append((ids, index, times, tbt))
        later = np.empty(n, dtype=bool)
        later[order] = has
        return later

    def rows(self) -> dict[str, np.ndarray]:
        """The token table: one row per token, by request, then time (needs `keep_rows`; call once:
        the rows are handed over, not copied)."""
        if not self._rows:
            return {"request_id": np.zeros(0, np.int64), "token_index": np.zeros(0, np.int64),
                    "time": np.zeros(0), "tbt": np.zeros(0)}
        ids, index, times, tbt = (np.concatenate(c) for c in zip(*self._rows))
        self._rows = []
        # Token k (1-based) of request r goes to row offset[r] + k - 1: a scatter, not a sort, since
        # every request's tokens carry the indices 1..count[r] exactly once.
        offset = np.cumsum(self.count) - self.count
        position = offset[ids] + index - 1
        out = {"request_id": ids, "token_index": index, "time": times, "tbt": tbt}
        for name, values in out.items():
            placed = np.empty_like(values)
            placed[position] = values
            out[name] = placed
        out["request_id"] = out["request_id"].astype(np.int64, copy=False)
        return out
