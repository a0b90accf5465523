"""Seeded random weights for a model shard (no checkpoint is ever loaded).

Two ways to draw them, same distributions:
- "exact": every full-model matrix is drawn on the CPU from a generator seeded by (seed, matrix)
  and this rank keeps its slice, so the shards of a tp-way model are exactly the full model cut
  up. Costs a full matrix per part on the CPU: for tiny test configs and correctness checks.
- "per_rank": each rank draws only its shard, directly on its device, from a generator seeded by
  (seed, matrix, rank). Shards do not add up to one model, which does not matter for timing
  (kernel time does not depend on weight values): for Yi-34B-size runs.

Distributions: linear weights uniform in ±1/sqrt(fan_in) (activations stay O(1) through the
layers); norm weights uniform in [0.5, 1.5]; embedding rows unit normal.
"""
from __future__ import annotations

import torch

from .model import LlamaShard, Part, ShardedModule

WEIGHT_MODES = ("exact", "per_rank")


def _fill(t: torch.Tensor, part: Part, generator: torch.Generator) -> torch.Tensor:
    if part.init == "linear":
        bound = part.full_shape[1] ** -0.5
        return t.uniform_(-bound, bound, generator=generator)
    if part.init == "norm":
        return t.uniform_(0.5, 1.5, generator=generator)
    return t.normal_(0.0, 1.0, generator=generator)


def _seed(seed: int, index: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + index) * 1_009 + rank


@torch.no_grad()
def init_random_weights(model: LlamaShard, seed: int, mode: str) -> None:
    if mode not in WEIGHT_MODES:
        raise ValueError(f"weights mode {mode!r} must be one of {WEIGHT_MODES}")
    tp, rank = model.tp, model.rank
    index = 0  # one seed per full-model matrix, in a fixed order
    for module in model.modules():
        if not isinstance(module, ShardedModule):
            continue
        for name, parts in module.layout.items():
            param, row = getattr(module, name), 0
            for part in parts:
                shape = part.shard_shape(tp)
                target = param.narrow(0, row, shape[0])  # parts are stacked along dim 0
                row += shape[0]
                if mode == "exact":
                    gen = torch.Generator().manual_seed(_seed(seed, index))
                    full = _fill(torch.empty(part.full_shape), part, gen)
                    if part.shard_dim is not None:
                        size = shape[part.shard_dim]
                        full = full.narrow(part.shard_dim, rank * size, size)
                    target.copy_(full)
                else:
                    gen = torch.Generator(device=model.device).manual_seed(_seed(seed, index, rank))
                    _fill(target, part, gen)
                index += 1
