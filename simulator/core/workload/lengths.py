"""Prompt (prefill) and output (decode) token counts per request.

Providers: a replayed trace CSV, the committed arXiv summary, fixed, and uniform lengths. Each
returns raw counts; `scale_and_clip` then applies reference-semantics §1 steps 1-3 to all of them
alike (scale and truncate, clip proportionally to `max_tokens`, clamp to >= 1).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TraceFormatError, TraceNotFoundError, WorkloadConfigError

PREFILL_COLUMN = "num_prefill_tokens"
DECODE_COLUMN = "num_decode_tokens"
ARXIV_SUMMARY_PATH = Path(__file__).with_name("arxiv_summary.json")


def read_length_trace(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The trace's prefill and decode columns as float64 (the reference scales them as floats).
    Read with the csv module: pandas' import alone would cost more than the whole read."""
    if path.is_dir():
        raise TraceFormatError(f"length trace {path} is a directory; pass "
                               "workload.lengths.path=<csv file>")
    if not path.is_file():
        raise TraceNotFoundError(f"length trace not found: {path}; pass "
                                 f"workload.lengths.path=<csv file> or place the file at {path}")
    fix = "fix the file or pass workload.lengths.path=<another csv>"
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            rows = [row for row in csv.reader(file) if row]  # blank lines skipped, as pandas does
    except (UnicodeDecodeError, csv.Error) as error:
        message = str(error).replace("\n", " ")
        raise TraceFormatError(f"{path}: not a readable CSV ({message}); {fix}") from error
    if not rows:
        raise TraceFormatError(f"{path}: not a readable CSV (no header line); {fix}")
    header = [name.strip() for name in rows[0]]
    missing = [c for c in (PREFILL_COLUMN, DECODE_COLUMN) if c not in header]
    if missing:
        raise TraceFormatError(f"{path}: missing column {missing[0]} (has: {', '.join(header)}); {fix}")
    data = rows[1:]
    if not data:
        raise TraceFormatError(f"{path}: no data rows; {fix}")
    for line, row in enumerate(data, start=2):
        if len(row) > len(header):
            raise TraceFormatError(f"{path}: not a readable CSV (line {line} has {len(row)} fields, the "
                                   f"header {len(header)}); {fix}")
    columns = []
    for column in (PREFILL_COLUMN, DECODE_COLUMN):
        i = header.index(column)
        cells = [row[i] if i < len(row) else "" for row in data]
        values = np.array([_number(cell) for cell in cells], dtype=np.float64)
        # Token counts are whole numbers: 100.5 is a broken file, not a length to truncate.
        bad = np.flatnonzero(~np.isfinite(values) | (values < 0) | (values != np.floor(values)))
        if bad.size:
            row = int(bad[0])
            # Line = data row + 1 for the header, counted from 1.
            raise TraceFormatError(f"{path}: column {column}, line {row + 2}: "
                                   f"{cells[row]!r} is not a whole number >= 0; {fix}")
        columns.append(values)
    return columns[0], columns[1]


def _number(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.nan


def shuffled_trace_rows(num_rows: int, num_requests: int, seed: int, path: Path) -> np.ndarray:
    """Trace row of each request: the reference's pandas `sample(frac=1, random_state=seed)`."""
    if num_requests > num_rows:
        raise WorkloadConfigError(
            f"workload.num_requests = {num_requests}: must be <= {num_rows}, the rows in {path}; "
            f"set workload.num_requests={num_rows} or use a larger trace")
    # pandas draws this permutation from its own RandomState(seed), not the global numpy state.
    return np.random.RandomState(seed).permutation(num_rows)[:num_requests]


@dataclass(frozen=True)
class ArxivSummary:
    """Committed joint length distribution of the arXiv trace (see summarize_arxiv.py)."""
    source: str
    prefill_quantiles: np.ndarray          # at probabilities evenly spaced over [0, 1]
    decode_quantiles_by_bin: np.ndarray    # row b: decode quantiles of prefill-rank bin b


def load_arxiv_summary(path: Path = ARXIV_SUMMARY_PATH) -> ArxivSummary:
    with open(path) as file:
        summary = json.load(file)
    return ArxivSummary(
        source=summary["source"],
        prefill_quantiles=np.asarray(summary["prefill_quantiles"], np.float64),
        decode_quantiles_by_bin=np.asarray(summary["decode_quantiles_by_prefill_bin"],
                                           np.float64),
    )


def arxiv_summary_lengths(summary: ArxivSummary, n: int,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-CDF sampling: prefill from its marginal, decode from its prefill bin's quantiles."""
    prefill_rank = rng.random(n)
    decode_rank = rng.random(n)
    knots = summary.prefill_quantiles
    prefill = np.interp(prefill_rank, np.linspace(0.0, 1.0, knots.size), knots)
    table = summary.decode_quantiles_by_bin
    num_bins, num_knots = table.shape
    # A request's bin is the slice of prefill ranks its own prefill came from.
    bins = np.minimum((prefill_rank * num_bins).astype(np.int64), num_bins - 1)
    # Linear interpolation on the evenly spaced knots, vectorised across bins.
    position = decode_rank * (num_knots - 1)
    left = np.minimum(position.astype(np.int64), num_knots - 2)
    weight = position - left
    decode = table[bins, left] * (1.0 - weight) + table[bins, left + 1] * weight
    return np.rint(prefill), np.rint(decode)


def uniform_lengths(n: int, min_prefill: int, max_prefill: int, min_decode: int,
                    max_decode: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Independent integers, bounds inclusive; all prefills are drawn first, then all decodes."""
    prefill = rng.integers(min_prefill, max_prefill, size=n, endpoint=True)
    decode = rng.integers(min_decode, max_decode, size=n, endpoint=True)
    return prefill, decode


def fixed_lengths(n: int, prefill: int, decode: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(n, prefill, np.int64), np.full(n, decode, np.int64)


def scale_and_clip(prefill: np.ndarray, decode: np.ndarray, prefill_scale: float,
                   decode_scale: float, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference-semantics §1 steps 1-3: scale and truncate, clip to max_tokens, clamp to >= 1.

    The clip removes ceil(E*P/T) prompt and ceil(E*D/T) output tokens, E = max(0, T - max_tokens),
    so it may remove one token more than E; no request is dropped. Lengths are per request, so
    the result does not depend on which requests are clipped together.
    """
    prefill = (np.asarray(prefill, np.float64) * prefill_scale).astype(np.int64)
    decode = (np.asarray(decode, np.float64) * decode_scale).astype(np.int64)
    total = prefill + decode
    over = total > max_tokens
    excess = total[over] - max_tokens
    # Ratio first, then times the excess: the reference's float order. E*(P/T) can land a hair
    # above an integer where E*P/T is exact, and then the ceil differs.
    prefill[over] -= np.ceil(excess * (prefill[over] / total[over])).astype(np.int64)
    decode[over] -= np.ceil(excess * (decode[over] / total[over])).astype(np.int64)
    np.maximum(prefill, 1, out=prefill)
    np.maximum(decode, 1, out=decode)
    # The reference asserts this. It fails only where a zero length, raised to 1, pushes a
    # request that sits at exactly max_tokens after the clip over it.
    too_long = np.flatnonzero(prefill + decode > max_tokens)
    if too_long.size:
        i = int(too_long[0])
        raise WorkloadConfigError(
            f"workload.max_tokens = {max_tokens}: request {i} has {prefill[i]} prompt + "
            f"{decode[i]} output tokens after a zero length was raised to 1; raise "
            "workload.max_tokens or drop zero-length rows from the trace")
    return prefill, decode
