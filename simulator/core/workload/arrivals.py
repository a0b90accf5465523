"""Arrival times: each request arrives one inter-arrival gap after the previous one.

arrival_i = arrival_{i-1} + gap_i with arrival_{-1} = 0, so the first request arrives at gap_0
(reference-semantics §1). Gaps come from the generators the reference draws them from, seeded the
same way, so the times match it bit for bit.
"""
from __future__ import annotations

import math
import random

import numpy as np


def static_arrivals(n: int) -> np.ndarray:
    """Every gap is 0: one burst at t = 0."""
    return np.zeros(n, np.float64)


def poisson_arrivals(n: int, qps: float, rng: random.Random) -> np.ndarray:
    """Exponential gaps with mean 1/qps, each capped at 3/qps (the cap truncates ~5% of gaps).

    Drawn one by one from Python's `random` with `math.log`, as the reference does: numpy's
    vectorised log may differ in the last bit.
    """
    # Same float operations as the reference (cap = (1/qps) * 3, not 3/qps).
    cap = (1.0 / qps) * 3.0
    gaps = [min(-math.log(1.0 - rng.random()) / qps, cap) for _ in range(n)]
    return _accumulate(np.asarray(gaps, np.float64))


def gamma_arrivals(n: int, qps: float, cv: float, rng: np.random.RandomState) -> np.ndarray:
    """Gamma gaps with mean 1/qps and coefficient of variation cv (shape 1/cv², scale 1/(qps·shape)).

    The reference calls scipy's `gamma.rvs(shape, scale=scale)` per request, which draws
    `standard_gamma(shape) * scale` from numpy's global RandomState; `rng` stands in for that
    state, and one vectorised call yields the same sequence.
    """
    shape = 1.0 / (cv ** 2)
    scale = 1.0 / (qps * shape)
    return _accumulate(rng.standard_gamma(shape, size=n) * scale)


def _accumulate(gaps: np.ndarray) -> np.ndarray:
    # cumsum adds left to right, like the reference's running `current_time + gap`.
    return np.cumsum(gaps)
