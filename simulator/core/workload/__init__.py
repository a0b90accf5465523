"""The workload: when each request arrives and how many prompt and output tokens it has.

Seeding follows the reference (reference-semantics §1), which seeds Python's `random` and numpy's
global state with `seed` right before generating; here private generators stand in for those
states, so nothing global is touched and the results equal the reference's:

- Poisson gaps: `random.Random(seed)`; gamma gaps: `np.random.RandomState(seed)` (the state that
  scipy's `gamma.rvs` draws from); trace shuffle: its own `np.random.RandomState(seed)`.
- Synthetic lengths (arxiv summary, uniform) have no reference counterpart. They come from
  `np.random.default_rng(seed)`, a different bit generator from the gaps', so lengths and gaps are
  independent and each can be drawn in one vectorised call.

The reference draws each request's gap before its lengths; because no two of these draw from the
same stream, drawing all gaps and then all lengths gives the same numbers.
"""
from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arrivals import gamma_arrivals, poisson_arrivals, static_arrivals
from .config import ArrivalSpec, LengthSpec, WorkloadSpec, parse_workload_config
from ..paths import DEFAULT_SHARED_DATA_DIR
from .errors import TraceFormatError, TraceNotFoundError, WorkloadConfigError
from .lengths import (arxiv_summary_lengths, fixed_lengths, load_arxiv_summary,
                      read_length_trace, scale_and_clip, shuffled_trace_rows, uniform_lengths)

__all__ = ["Workload", "workload_from_config",
           "WorkloadConfigError", "TraceFormatError", "TraceNotFoundError"]


@dataclass(frozen=True, eq=False)  # eq=False: `==` on numpy arrays has no single truth value
class Workload:
    arrival: np.ndarray   # float64 seconds, non-decreasing, length n
    prefill: np.ndarray   # int64 >= 1 (prompt tokens)
    decode: np.ndarray    # int64 >= 1 (output tokens)
    description: str      # one human line

    def __post_init__(self) -> None:
        if not len(self.arrival) == len(self.prefill) == len(self.decode):
            raise ValueError(f"workload arrays differ in length: {len(self.arrival)} arrivals, "
                             f"{len(self.prefill)} prefills, {len(self.decode)} decodes")
        for array in (self.arrival, self.prefill, self.decode):
            array.setflags(write=False)  # frozen means the contents too

    def __len__(self) -> int:
        return len(self.arrival)


def workload_from_config(cfg: Mapping,
                         shared_data_dir: str | os.PathLike | None = None) -> Workload:
    """Build the workload a `workload` config group describes (see conf/workload/*.yaml)."""
    spec = parse_workload_config(cfg)
    data_dir = Path(shared_data_dir) if shared_data_dir is not None else DEFAULT_SHARED_DATA_DIR
    raw_prefill, raw_decode, length_text = _raw_lengths(spec, data_dir)
    lengths = spec.lengths
    prefill, decode = scale_and_clip(raw_prefill, raw_decode, lengths.prefill_scale,
                                     lengths.decode_scale, spec.max_tokens)
    if lengths.prefill_scale != 1.0 or lengths.decode_scale != 1.0:
        length_text += (f" scaled x{lengths.prefill_scale} prefill, "
                        f"x{lengths.decode_scale} decode")
    arrival, arrival_text = _arrivals(spec.num_requests, spec.arrival, spec.seed)
    description = (f"{length_text}, {arrival_text}, {spec.num_requests} requests, "
                   f"seed {spec.seed}, max_tokens {spec.max_tokens}")
    return Workload(arrival=arrival, prefill=prefill, decode=decode, description=description)


def _raw_lengths(spec: WorkloadSpec, data_dir: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-request lengths before scaling and clipping (which act on each request alone)."""
    lengths: LengthSpec = spec.lengths
    n = spec.num_requests
    if lengths.kind == "trace":
        path = data_dir / Path(lengths.path).expanduser()  # an absolute path replaces data_dir
        prefill, decode = read_length_trace(path)
        rows = shuffled_trace_rows(len(prefill), n, spec.seed, path)
        return prefill[rows], decode[rows], f"trace {path.name} ({len(prefill):,} rows, shuffled)"
    if lengths.kind == "fixed":
        return (*fixed_lengths(n, lengths.prefill, lengths.decode),
                f"fixed lengths prefill {lengths.prefill}, decode {lengths.decode}")
    rng = np.random.default_rng(spec.seed)
    if lengths.kind == "uniform":
        return (*uniform_lengths(n, lengths.min_prefill, lengths.max_prefill,
                                 lengths.min_decode, lengths.max_decode, rng),
                f"uniform lengths prefill {lengths.min_prefill}-{lengths.max_prefill}, "
                f"decode {lengths.min_decode}-{lengths.max_decode}")
    return (*arxiv_summary_lengths(load_arxiv_summary(), n, rng),
            "arXiv-summarization (committed summary of the public 4,096-token trace)")


def _arrivals(n: int, arrival: ArrivalSpec, seed: int) -> tuple[np.ndarray, str]:
    if arrival.kind == "static":
        return static_arrivals(n), "all arriving at t=0"
    if arrival.kind == "poisson":
        return poisson_arrivals(n, arrival.qps, random.Random(seed)), f"Poisson {arrival.qps} QPS"
    times = gamma_arrivals(n, arrival.qps, arrival.cv, np.random.RandomState(seed))
    return times, f"gamma {arrival.qps} QPS, cv {arrival.cv}"
