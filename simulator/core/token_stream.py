"""Output tokens folded into what the metrics need, two ways.

`CohortStream` (every run outside compat reference) never sees a token: it derives each token's
time, the per-request columns and the TBT distribution from per-batch and per-request events, and
builds the token rows for tokens.parquet only at the end, when they are wanted.

`TokenStream` (compat reference, whose artifact metrics read the token list itself): a chunk is the
tokens of consecutive batches, in emission order. Per request the stream keeps its token count, its
last token's time, its first token's time and its largest gap; each token's time-between-tokens
(TBT) goes to a `Distribution`, and the token rows are kept for tokens.parquet.
"""
from __future__ import annotations

import numpy as np

from .distribution import Distribution


class TokenStream:
    def __init__(self, num_requests: int, tbt: Distribution):
        self.tbt = tbt
        self.count = np.zeros(num_requests, dtype=np.int64)
        self.last_time = np.full(num_requests, np.nan)
        self.first_token = np.full(num_requests, np.nan)
        self.max_tbt = np.full(num_requests, np.nan)
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
        self._rows.append((ids, index, times, tbt))
        later = np.empty(n, dtype=bool)
        later[order] = has
        return later

    def rows(self) -> dict[str, np.ndarray]:
        """The token table: one row per token, by request, then time (call once: the chunks are
        dropped as they are placed)."""
        offset, request_id, token_index = row_layout(self.count)
        times, tbt = np.empty(len(request_id)), np.empty(len(request_id))
        while self._rows:  # a scatter per chunk, not a sort: every row is written exactly once
            ids, index, chunk_times, chunk_tbt = self._rows.pop(0)
            position = offset[ids] + index - 1
            times[position] = chunk_times
            tbt[position] = chunk_tbt
        return {"request_id": request_id, "token_index": token_index, "time": times, "tbt": tbt}


class CohortStream:
    """What `TokenStream` gives, from per-batch and per-request events only.

    Each replica's decode pass gives a token to every prompt-complete running request (those it
    preempts leave first), so a replica's decoding requests form a cohort that emitted last in the
    replica's previous decode batch, plus the newcomers whose prompt completed (and emitted) since.
    A decode batch's TBTs are then k copies of (its end - the previous decode batch's end) and one
    value per newcomer: the distribution takes them as (value, weight) pairs. A request's tokens
    come in episodes: a prompt emission, then a run of decode tokens, one per decode batch of its
    replica, from the one after the emission to the one it finishes in (or the last before it is
    preempted). Its count adds up its episodes, its largest TBT is the largest of its individual
    values (first decode of a run, first token after a recompute) and, per run, of the replica's
    decode-batch gaps inside the run (a range maximum, answered for every run at once by
    `finish`), and its token rows are its episodes' times: each emission's, then the run's batch
    ends.

    The stream checks on every decode batch that the batch decodes exactly the requests it counts
    as decoding on that replica, so the token counts (conservation) stay evidence of their own.
    """

    def __init__(self, num_requests: int, tbt: Distribution, num_groups: int = 1):
        self.tbt = tbt
        self.num_requests = num_requests
        self.count = np.zeros(num_requests, dtype=np.int64)
        self.first_token = np.full(num_requests, np.nan)
        self.max_tbt = np.full(num_requests, np.nan)
        self._seen = bytearray(num_requests)          # has emitted a token
        # decoding now: request -> (its prompt's token time, its first decode batch, replica, episode)
        self._open: dict[int, tuple[float, int, int, int]] = {}
        self._last_emit: dict[int, float] = {}        # preempted after emitting: its last token's time
        self._ends: list[list[float]] = [[] for _ in range(num_groups)]  # per replica: its decode batches' ends
        self._members = [0] * num_groups              # per replica: requests decoding
        self._newcomers: list[list[int]] = [[] for _ in range(num_groups)]  # joined since the last decode batch
        # episodes, in emission order: request, emission time, replica, first and last decode batch
        # of its run (last = first - 1 until the run closes: no decode token yet)
        self._ep_request: list[int] = []
        self._ep_time: list[float] = []
        self._ep_replica: list[int] = []
        self._ep_first: list[int] = []
        self._ep_last: list[int] = []
        self._stray: list[int] = []                    # tokens outside any episode (see on_batch)
        self._max_ids: list[int] = []                  # individual TBTs, for the per-request maximum
        self._max_values: list[float] = []
        self._values: list[float] = []                 # pending (value, weight, group) for `tbt`
        self._weights: list[int] = []
        self._groups: list[int] = []

    def _close(self, r: int, preempted: bool) -> None:
        """Request `r` stops decoding (finished, or preempted): its run ends at the replica's last
        decode batch so far."""
        join, first, replica, episode = self._open.pop(r)
        self._members[replica] -= 1
        ends = self._ends[replica]
        last = len(ends) - 1
        if first > last:  # no decode batch since its prompt's token
            self._newcomers[replica].remove(r)
            if preempted:
                self._last_emit[r] = join
        else:
            self._ep_last[episode] = last
            if preempted:
                self._last_emit[r] = ends[last]

    def on_batch(self, replica: int, end: float, num_decodes: int, emitted: list, finished: list,
                 preempted: list) -> int:
        """One batch of `replica`, ended at `end`: `emitted` starts with its `num_decodes` decodes,
        then the requests whose prompt it completed. Returns how many of its tokens were not a
        request's first."""
        is_open = self._open
        for req in preempted:
            if req.id in is_open:
                self._close(req.id, True)
        values, weights, groups = self._values, self._weights, self._groups
        later = num_decodes
        ends = self._ends[replica]
        if num_decodes:
            newcomers = self._newcomers[replica]
            if num_decodes != self._members[replica]:
                raise RuntimeError(f"replica {replica}: a batch ending at {end} decodes {num_decodes} "
                                   f"requests, but {self._members[replica]} are decoding")
            cohort = num_decodes - len(newcomers)
            if cohort:
                values.append(end - ends[-1])
                weights.append(cohort)
                groups.append(replica)
            if newcomers:
                max_ids, max_values = self._max_ids, self._max_values
                for r in newcomers:
                    value = end - is_open[r][0]
                    values.append(value)
                    weights.append(1)
                    groups.append(replica)
                    max_ids.append(r)
                    max_values.append(value)
                newcomers.clear()
            ends.append(end)
        if len(emitted) > num_decodes:
            seen = self._seen
            newcomers = self._newcomers[replica]
            first = len(ends)
            for req in emitted[num_decodes:]:
                r = req.id
                if seen[r] and (r in is_open or r not in self._last_emit):
                    # a second token in one batch, or a prompt's token with no recompute before it:
                    # an engine fault, counted so that conservation reports it
                    self._stray.append(r)
                    later += 1
                    continue
                if seen[r]:  # its first token after a recompute
                    value = end - self._last_emit.pop(r)
                    values.append(value)
                    weights.append(1)
                    groups.append(replica)
                    self._max_ids.append(r)
                    self._max_values.append(value)
                    later += 1
                else:
                    seen[r] = 1
                    self.first_token[r] = end
                is_open[r] = (end, first, replica, len(self._ep_request))
                self._ep_request.append(r)
                self._ep_time.append(end)
                self._ep_replica.append(replica)
                self._ep_first.append(first)
                self._ep_last.append(first - 1)
                newcomers.append(r)
            self._members[replica] += len(emitted) - num_decodes
        for req in finished:
            self._close(req.id, False)
        return later

    def flush(self) -> None:
        """Hand the pending TBTs to the distribution."""
        if self._values:
            self.tbt.add(np.array(self._values), np.array(self._groups, dtype=np.int64),
                         np.array(self._weights, dtype=np.int64))
            self._values, self._weights, self._groups = [], [], []

    def finish(self) -> None:
        """Per request: token count and largest TBT (first_token is kept as it goes)."""
        self.flush()
        n = self.num_requests
        ids = np.array(self._ep_request, dtype=np.int64)
        replicas = np.array(self._ep_replica, dtype=np.int64)
        first, last = np.array(self._ep_first, dtype=np.int64), np.array(self._ep_last, dtype=np.int64)
        self.count = (np.bincount(ids, weights=last - first + 2, minlength=n).astype(np.int64)
                      + np.bincount(np.array(self._stray, dtype=np.int64), minlength=n))
        max_tbt = self.max_tbt
        if self._max_ids:
            np.fmax.at(max_tbt, np.array(self._max_ids, dtype=np.int64), np.array(self._max_values))
        inner = last > first  # the gaps after a run's first decode batch are its other TBTs
        for replica in np.unique(replicas[inner]):
            mine = inner & (replicas == replica)
            gaps = np.diff(np.array(self._ends[replica]), prepend=np.nan)
            np.fmax.at(max_tbt, ids[mine], range_max(gaps, first[mine] + 1, last[mine]))
        self._max_ids, self._max_values = [], []

    def rows(self) -> dict[str, np.ndarray]:
        """The token table (as `TokenStream.rows`), from the episodes: by request, then time."""
        requests = np.array(self._ep_request, dtype=np.int64)
        order = np.argsort(requests, kind="stable")       # a request's episodes in time order
        replicas = np.array(self._ep_replica, dtype=np.int64)[order]
        first = np.array(self._ep_first, dtype=np.int64)[order]
        length = np.array(self._ep_last, dtype=np.int64)[order] - first + 2  # emission + decodes
        count = np.bincount(requests[order], weights=length, minlength=self.num_requests).astype(np.int64)
        offset, request_id, token_index = row_layout(count)
        start = np.cumsum(length) - length                # each episode's first row
        ends = [np.array(e) for e in self._ends]
        base = np.cumsum([0] + [len(e) for e in ends[:-1]])
        # row start[e] + k (k >= 1) is the run's k-th decode batch: all ends concatenated, index
        # base[replica] + first + k - 1; row start[e] itself is the emission, set after
        source = np.repeat(base[replicas] + first - 1 - start, length) + np.arange(len(request_id))
        times = np.concatenate(ends + [np.zeros(1)])[source]  # (an emission row may index -1: the pad)
        times[start] = np.array(self._ep_time)[order]
        tbt = np.empty(len(times))
        tbt[1:] = times[1:] - times[:-1]
        tbt[offset[count > 0]] = np.nan                    # a first token has no TBT
        return {"request_id": request_id, "token_index": token_index, "time": times, "tbt": tbt}


def row_layout(count: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The token table's rows by request, then token: request r's tokens 1..count[r] take rows
    offset[r] .. offset[r] + count[r] - 1. Returns (offset, request_id, token_index) of the rows."""
    offset = np.cumsum(count) - count
    request_id = np.repeat(np.arange(len(count), dtype=np.int64), count)
    token_index = np.arange(1, len(request_id) + 1, dtype=np.int64) - np.repeat(offset, count)
    return offset, request_id, token_index


def range_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """max(values[lo[i]:hi[i] + 1]) for every i (lo <= hi), from a sparse table."""
    length = hi - lo + 1
    level = np.frexp(length.astype(np.float64))[1] - 1  # floor(log2(length))
    table = [values]
    while (2 << (len(table) - 1)) <= length.max():
        half = 1 << (len(table) - 1)
        previous = table[-1]
        table.append(np.maximum(previous[:-half], previous[half:]))
    out = np.empty(len(lo))
    for k in np.unique(level):
        pick = level == k
        row = table[k]
        out[pick] = np.maximum(row[lo[pick]], row[hi[pick] - (1 << int(k)) + 1])
    return out
