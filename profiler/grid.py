"""The grid the profiler measures: the points (op, shape) of one TP rank's forward pass.

`plan` lists them for a grid of `conf/profiler.yaml`; tests use it to build synthetic profiles of
the same shape. Plain numpy, so it (and the fits it feeds) needs no torch; `profiler/ops.py`
builds the callables that time each point.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from simulator.core.model_spec import ModelSpec

from .fit import ATTENTION, DECODER_LAYER, LINEAR_PROBE, linear_shapes, stream_widths

_SAMPLED_OPS = ("lm_head", "final_norm", "sampling")  # run over sampled tokens, not all tokens


@dataclass(frozen=True)
class Point:
    op: str
    kind: str                      # attention and layers: prefill | prefill_multi | decode | decode_uneven | mixed
    shape: dict[str, int]          # the profile's shape columns that apply to this op
    seqs: tuple[tuple[int, int], ...] = ()  # attention and layers: (cached tokens, query tokens) per sequence


def token_counts(dense: int, maximum: int, log_points: int) -> list[int]:
    """Every count 1..dense, then `log_points` log-spaced counts up to `maximum`."""
    logs = np.round(np.geomspace(dense, maximum, log_points + 1)[1:]).astype(int)
    return sorted(set(range(1, dense + 1)) | {int(n) for n in logs if n > dense})


def batch_shape(seqs: tuple[tuple[int, int], ...]) -> dict[str, int]:
    """The aggregate columns of an attention call (as simulator.core.batch.Batch counts them):
    sequences with one query token are decodes, longer ones prompt chunks."""
    chunks = [(s, n) for s, n in seqs if n > 1]
    decodes = [(s, n) for s, n in seqs if n == 1]
    return {"tokens": sum(n for _, n in seqs),
            "num_prefills": len(chunks), "num_prefill_tokens": sum(n for _, n in chunks),
            "prefill_kv_tokens": sum(s + n for s, n in chunks),
            "prefill_attn_pairs": sum(n * s + n * (n + 1) // 2 for s, n in chunks),
            "num_decodes": len(decodes), "decode_kv_tokens": sum(s + 1 for s, _ in decodes)}


def plan(model: ModelSpec, tp: int, grid: Mapping[str, Any], seed: int) -> list[Point]:
    """Every point of `grid` (a conf/profiler.yaml `profiler.grids` entry), grouped by op."""
    rng = np.random.default_rng(seed)
    tokens = token_counts(grid["dense_tokens"], grid["max_tokens"], grid["log_points"])
    sampled = [n for n in tokens if n <= grid["max_sampled"]]
    points: list[Point] = []
    for op, (k_in, k_out) in linear_shapes(model, tp).items():
        counts = sampled if op in _SAMPLED_OPS else tokens
        points += [Point(op, "", {"tokens": n, "k_in": k_in, "k_out": k_out}) for n in counts]
    for k_in, k_out in grid["probe_shapes"]:
        points += [Point(LINEAR_PROBE, "", {"tokens": n, "k_in": k_in, "k_out": k_out})
                   for n in grid["probe_tokens"] if n <= grid["max_tokens"]]
    for op, width in stream_widths(model, tp).items():
        counts = sampled if op in _SAMPLED_OPS else tokens
        points += [Point(op, "", {"tokens": n, "width": width}) for n in counts]
    points += [Point(ATTENTION, kind, batch_shape(seqs), seqs) for kind, seqs in _attention_batches(grid, rng)]
    points += [Point(DECODER_LAYER, kind, batch_shape(seqs), seqs)
               for kind, seqs in _layer_batches(grid, rng, grid["layer_points"])]
    return points


def _attention_batches(grid: Mapping[str, Any], rng: np.random.Generator):
    """(kind, sequences) of every attention point: prompt chunks over earlier context, decode
    batches (even and uneven KV lengths), and mixed calls; none holds more than max_kv_tokens."""
    cap = grid["max_kv_tokens"]
    chunks, starts = grid["prefill_chunks"], grid["prefill_starts"]
    contexts, batches = grid["decode_contexts"], grid["decode_batches"]
    for chunk in chunks:
        for start in starts:
            if chunk + start <= cap:
                yield "prefill", ((start, chunk),)
    for _ in range(grid["multi_chunk_points"]):
        seqs = tuple((int(rng.choice(starts)), int(rng.choice(chunks))) for _ in range(rng.integers(2, 5)))
        if sum(s + n for s, n in seqs) <= cap:
            yield "prefill_multi", seqs
    for batch in batches:
        for context in contexts:
            if batch * context <= cap:
                yield "decode", ((context - 1, 1),) * batch
    longest = max(contexts)
    for _ in range(grid["uneven_decode_points"]):
        batch = int(rng.choice(batches))
        lengths = np.exp(rng.uniform(np.log(min(16, longest)), np.log(longest), batch)).astype(int)
        lengths = np.maximum(1, (lengths * min(1.0, cap / lengths.sum())).astype(int))
        yield "decode_uneven", tuple((int(n) - 1, 1) for n in lengths)
    yield from _mixed_batches(grid, rng, grid["mixed_points"])


def _mixed_batches(grid: Mapping[str, Any], rng: np.random.Generator, count: int):
    """One or two prompt chunks and a decode batch in one call (chunked prefill's batches)."""
    cap = grid["max_kv_tokens"]
    made = 0
    while made < count:
        seqs = tuple((int(rng.choice(grid["prefill_starts"])), int(rng.choice(grid["prefill_chunks"])))
                     for _ in range(rng.integers(1, 3)))
        context = int(rng.choice(grid["decode_contexts"]))
        seqs += ((context - 1, 1),) * int(rng.choice(grid["decode_batches"]))
        if sum(s + n for s, n in seqs) <= cap:
            made += 1
            yield "mixed", seqs


def _layer_batches(grid: Mapping[str, Any], rng: np.random.Generator, count: int):
    """Whole-layer points: a third each of prompt chunks, decode batches and mixed batches."""
    for i in range(count):
        if i % 3 == 0:
            yield "prefill", ((int(rng.choice(grid["prefill_starts"])), int(rng.choice(grid["prefill_chunks"]))),)
        elif i % 3 == 1:
            batch, context = int(rng.choice(grid["decode_batches"])), int(rng.choice(grid["decode_contexts"]))
            if batch * context <= grid["max_kv_tokens"]:
                yield "decode", ((context - 1, 1),) * batch
        else:
            yield from _mixed_batches(grid, rng, 1)
