"""A distribution of many values (the time between tokens), per group and overall, built chunk by
chunk: exact where the values fit in memory, else a log-bucket sketch with a stated accuracy
(`ExactUntilFull` switches from one to the other when a run turns out too long).

- `ExactDistribution` keeps every value (values added with weights as (value, count) pairs):
  quantiles are numpy's (linear interpolation) bit for bit; for pairs, numpy's arithmetic on the
  order statistics found by sorting the pairs, without repeating each value its count times.
- `SketchDistribution` counts values in log-linear buckets (512 per octave); a quantile is the
  midpoint of the bucket holding the order statistic numpy's interpolation starts from, so it is
  within 0.098% (relative) of it -- as fine as the reference artifact's DDSketch (0.1%).
  Values below `MIN_VALUE` (or above `MAX_VALUE`) count in its bucket.
Count, mean and maximum are exact in both.
"""
from __future__ import annotations

import numpy as np

MIN_VALUE = 1e-6      # seconds: far below any modelled iteration
MAX_VALUE = 1e6       # seconds: eleven days
MANTISSA_BITS = 9                 # 512 buckets per octave: half a bucket is at most 2^-10 = 0.098%
_SHIFT = 52 - MANTISSA_BITS
RELATIVE_ACCURACY = 2.0 ** -(MANTISSA_BITS + 1)


def _bucket(values: np.ndarray) -> np.ndarray:
    """Positive float64s -> bucket numbers, increasing with the value."""
    return np.ascontiguousarray(values, dtype=np.float64).view(np.int64) >> _SHIFT


class Distribution:
    def __init__(self, num_groups: int = 1):
        self.num_groups = num_groups
        self.count = np.zeros(num_groups, dtype=np.int64)
        self.total = np.zeros(num_groups, dtype=np.float64)
        self.max = np.full(num_groups, -np.inf)

    def add(self, values: np.ndarray, groups: np.ndarray | None = None,
            weights: np.ndarray | None = None) -> None:
        """Add finite `values`; `groups[i]` (0..num_groups-1) is value i's group, all 0 if None;
        `weights[i]` (>= 1): how many times value i occurs, once each if None."""
        if not len(values):
            return
        if groups is None:
            groups = np.zeros(len(values), dtype=np.int64)
        if weights is None:
            self.count += np.bincount(groups, minlength=self.num_groups)
            self.total += np.bincount(groups, weights=values, minlength=self.num_groups)
        else:  # counts below 2^53: exact in float64
            self.count += np.bincount(groups, weights=weights, minlength=self.num_groups).astype(np.int64)
            self.total += np.bincount(groups, weights=values * weights, minlength=self.num_groups)
        np.maximum.at(self.max, groups, values)
        self._add(values, groups, weights)

    def _add(self, values: np.ndarray, groups: np.ndarray, weights: np.ndarray | None) -> None:
        raise NotImplementedError

    def quantiles(self, qs: np.ndarray, group: int | None = None) -> np.ndarray:
        raise NotImplementedError

    def stats(self, quantiles: dict[str, float], group: int | None = None) -> dict[str, float | None]:
        """count, the named quantiles, mean and max of one group (None: every value)."""
        count = int(self.count.sum() if group is None else self.count[group])
        if not count:
            return {"count": 0, **{k: None for k in quantiles}, "mean": None, "max": None}
        values = self.quantiles(np.array(list(quantiles.values())), group)
        total = self.total.sum() if group is None else self.total[group]
        top = self.max.max() if group is None else self.max[group]
        return {"count": count, **{k: float(v) for k, v in zip(quantiles, values)},
                "mean": float(total / count), "max": float(top)}


class ExactDistribution(Distribution):
    """Every value, kept as (value, how many times) where the caller adds them so: a decode batch's
    cohort is one pair, not one value per token."""
    accuracy = "exact"

    def __init__(self, num_groups: int = 1):
        super().__init__(num_groups)
        self._values: list[np.ndarray] = []
        self._weights: list[np.ndarray | None] = []
        self._groups: list[np.ndarray] = []

    def _add(self, values: np.ndarray, groups: np.ndarray, weights: np.ndarray | None) -> None:
        self._values.append(values)
        self._weights.append(None if weights is None else np.asarray(weights, dtype=np.int64))
        if self.num_groups > 1:
            self._groups.append(groups)

    def _pairs(self, group: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(values, weights) of one group (None: all); weights None when every value counts once."""
        if len(self._values) > 1:  # one array from here on: later calls pay nothing
            weighted = any(w is not None for w in self._weights)
            self._weights = [np.concatenate([np.ones(len(v), np.int64) if w is None else w
                                             for v, w in zip(self._values, self._weights)])
                             if weighted else None]
            self._values = [np.concatenate(self._values)]
            if self._groups:
                self._groups = [np.concatenate(self._groups)]
        if not self._values:
            return np.empty(0), None
        values, weights = self._values[0], self._weights[0]
        if group is None:
            return values, weights
        mine = self._groups[0] == group
        return values[mine], None if weights is None else weights[mine]

    def to_sketch(self) -> SketchDistribution:
        """A sketch of the values held (the caller keeps count, total and maximum)."""
        sketch = SketchDistribution(self.num_groups)
        for i, (values, weights) in enumerate(zip(self._values, self._weights)):
            groups = self._groups[i] if self._groups else np.zeros(len(values), dtype=np.int64)
            sketch._add(values, groups, weights)
        return sketch

    def values(self, group: int | None = None) -> np.ndarray:
        """Every value, once per time it was added."""
        values, weights = self._pairs(group)
        return values if weights is None else np.repeat(values, weights)

    def quantiles(self, qs: np.ndarray, group: int | None = None) -> np.ndarray:
        values, weights = self._pairs(group)
        return linear_quantiles(values, qs, weights) if len(values) else np.full(len(qs), np.nan)


def linear_quantiles(values: np.ndarray, qs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """`np.quantile(values, qs)` (method "linear", finite values; value i repeated weights[i] times),
    the same floats: numpy's index and interpolation arithmetic on the sorted pairs' order statistics."""
    if weights is None:
        return np.quantile(values, qs)
    n = int(weights.sum())
    qs = np.asarray(qs, dtype=np.float64)
    virtual = (n - 1) * qs
    below = np.floor(virtual)
    at_top = virtual >= n - 1
    lo = np.where(at_top, n - 1, below).astype(np.int64)
    hi = np.where(at_top, n - 1, below + 1).astype(np.int64)
    ranks, where = np.unique(np.concatenate((lo, hi)), return_inverse=True)
    picked = weighted_order_statistics(values, weights, ranks)[where]
    a, b = picked[:len(qs)], picked[len(qs):]
    t = virtual - below
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)  # numpy's _lerp


def weighted_order_statistics(values: np.ndarray, weights: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """`np.sort(np.repeat(values, weights))[ranks]`, sorting the pairs only."""
    order = np.argsort(values)
    ends = np.cumsum(weights[order])  # sorted value i fills ranks ends[i-1] .. ends[i] - 1
    return values[order[np.searchsorted(ends, ranks, side="right")]]


class SketchDistribution(Distribution):
    """Counts per bucket; a bucket is an octave [2^e, 2^(e+1)) cut into 2^MANTISSA_BITS equal
    parts, read straight from a float's bits (as HDR histograms do): one shift per value."""
    accuracy = f"sketch: each quantile within {RELATIVE_ACCURACY:.2%} (relative) of an exact order statistic"

    def __init__(self, num_groups: int = 1):
        super().__init__(num_groups)
        self._first = _bucket(np.array([MIN_VALUE]))[0]
        self.num_buckets = int(_bucket(np.array([MAX_VALUE]))[0] - self._first + 1)
        self.buckets = np.zeros((num_groups, self.num_buckets), dtype=np.int64)

    def _add(self, values: np.ndarray, groups: np.ndarray, weights: np.ndarray | None) -> None:
        flat = groups * self.num_buckets + (_bucket(np.clip(values, MIN_VALUE, MAX_VALUE)) - self._first)
        counts = np.bincount(flat, weights=weights, minlength=self.buckets.size)
        if weights is not None:
            counts = counts.astype(np.int64)
        self.buckets += counts.reshape(self.buckets.shape)

    def quantiles(self, qs: np.ndarray, group: int | None = None) -> np.ndarray:
        counts = self.buckets.sum(axis=0) if group is None else self.buckets[group]
        total = counts.sum()
        if not total:
            return np.full(len(qs), np.nan)
        # the bucket of the order statistic of rank floor(q (n - 1)), where numpy's interpolation starts
        ranks = np.floor(np.asarray(qs) * (total - 1))
        bucket = np.searchsorted(np.cumsum(counts), ranks, side="right") + self._first
        low = (bucket << _SHIFT).view(np.float64)
        high = ((bucket + 1) << _SHIFT).view(np.float64)
        return (low + high) / 2


class ExactUntilFull(Distribution):
    """Exact while it holds at most `max_exact` values or (value, count) pairs; past that, all it
    holds moves into a sketch, which takes every later value: memory stays bounded whatever the
    run's length, and `accuracy` says which one answered."""

    def __init__(self, num_groups: int, max_exact: int):
        super().__init__(num_groups)
        self.max_exact = max_exact
        self.inner: ExactDistribution | SketchDistribution = ExactDistribution(num_groups)
        self._held = 0

    @property
    def accuracy(self) -> str:
        return self.inner.accuracy

    def _add(self, values: np.ndarray, groups: np.ndarray, weights: np.ndarray | None) -> None:
        if isinstance(self.inner, ExactDistribution):
            self._held += len(values)
            if self._held > self.max_exact:
                self.inner = self.inner.to_sketch()
        self.inner._add(values, groups, weights)

    def quantiles(self, qs: np.ndarray, group: int | None = None) -> np.ndarray:
        return self.inner.quantiles(qs, group)
