"""Laws that price an op at shapes nobody measured: a roofline in FLOPs and bytes, times a learned
correction for the steps a smooth law cannot have.

One `ShapeLaw` is fitted per GPU and op group over every model measured on that GPU, so a model
never measured (Yi-34B on the public data) is priced from its shard shapes alone:

    t = (fixed + (floor^p + (FLOPs / flop_rate)^p + (bytes / byte_rate)^p)^(1/p)) * exp(correction(shape))

The roofline carries the physics (a GEMM is bandwidth-bound at a few tokens and compute-bound at
thousands, p sets how sharply; a small kernel cannot finish faster than its floor, the time of
its first small grid, which streaming then hides rather than adds to: `fit_roofline`'s `floor`).
The correction is a small gradient-boosted tree ensemble over
features a GEMM kernel's time really depends on besides FLOPs and bytes: M, N and K themselves,
how much of the last row tile is padding (tiles of 16 to 256 rows), and how full the last wave of
thread blocks is on this GPU's SMs for typical cuBLAS tile shapes. Those are the staircases the
measurements show (a 160-token GEMM can take 1.5x a 128-token one). Cross-validation over held-out
models decides whether a group keeps its correction (`profiler/calibrate.py`).

Fitting needs scikit-learn; a fitted law is plain numbers (`to_json`), and predicting from it
needs only numpy, so runs that load a committed calibration give the same numbers everywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

ROW_TILES = (16, 32, 64, 128, 256)
BLOCK_TILES = ((64, 64), (64, 128), (128, 128), (128, 256), (256, 128))
# Boosting settings: enough trees to learn the staircases, small enough to commit (~1 MB a GPU).
BOOSTING = dict(max_iter=250, learning_rate=0.15, max_leaf_nodes=15, min_samples_leaf=20, random_state=0)
# The GEMM law sees four ops' staircases over many (M, N, K): somewhat larger trees lower its
# leave-one-model-out error on every public GPU (A100 4.02 -> 3.94%, H100 5.78 -> 5.70%, A40
# 6.33 -> 6.17%) and its in-sample error to <= 2.9%; the element-wise laws gain nothing from them.
GEMM_BOOSTING = {**BOOSTING, "max_iter": 300, "max_leaf_nodes": 23}
DIGITS = 9  # significant digits of the committed leaf values (thresholds are kept exact)


def correction_features(tokens: Any, n: Any, k: Any, flops: Any, nbytes: Any, num_sms: int) -> np.ndarray:
    """Columns the correction reads, one row per point. `n`, `k`: a GEMM's output and input widths
    (a bandwidth-bound op passes its width as `n` and 1 as `k`)."""
    m = np.maximum(np.asarray(tokens, dtype=float), 1.0)
    n, k = np.broadcast_to(np.asarray(n, dtype=float), m.shape), np.broadcast_to(np.asarray(k, dtype=float), m.shape)
    cols = [np.log(m), np.log(n), np.log(k), np.log(np.maximum(flops, 1.0)), np.log(nbytes)]
    for tm, tn in BLOCK_TILES:
        tiles = np.ceil(m / tm) * np.ceil(n / tn)
        waves = np.ceil(tiles / num_sms)
        cols += [tiles / (waves * num_sms), np.log(waves)]
    cols += [np.ceil(m / tm) * tm / m for tm in ROW_TILES]
    return np.stack(cols, axis=1)


@dataclass(frozen=True)
class Roofline:
    fixed_s: float
    s_per_flop: float
    s_per_byte: float
    p: float
    floor_s: float = 0.0  # combined with compute and memory time, not added (`fit_roofline`'s floor)

    def seconds(self, flops: Any, nbytes: Any) -> np.ndarray:
        compute, memory = self.s_per_flop * np.asarray(flops, float), self.s_per_byte * np.asarray(nbytes, float)
        return self.fixed_s + (self.floor_s ** self.p + compute ** self.p + memory ** self.p) ** (1.0 / self.p)


@dataclass(frozen=True)
class Trees:
    """A boosted ensemble as arrays: per node its feature, threshold, children and leaf value."""
    baseline: float
    feature: tuple[tuple[int, ...], ...]
    threshold: tuple[tuple[float, ...], ...]
    left: tuple[tuple[int, ...], ...]
    right: tuple[tuple[int, ...], ...]
    value: tuple[tuple[float, ...], ...]  # a node is a leaf where its left child is 0 (the root's index)

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.full(len(x), self.baseline)
        rows = np.arange(len(x))
        for feat, thr, left, right, value in zip(self.feature, self.threshold, self.left, self.right, self.value):
            feat, thr, value = np.array(feat), np.array(thr), np.array(value)
            left, right = np.array(left), np.array(right)
            leaf = left == 0
            node = np.zeros(len(x), dtype=int)
            while not leaf[node].all():
                go_left = x[rows, feat[node]] <= thr[node]
                node = np.where(leaf[node], node, np.where(go_left, left[node], right[node]))
            out += value[node]
        return out

    @classmethod
    def from_sklearn(cls, reg: Any) -> "Trees":
        """Read a fitted `HistGradientBoostingRegressor`'s trees (its `_predictors` node arrays)."""
        def short(v: float) -> float:
            return float(f"{v:.{DIGITS}g}")

        fields: dict[str, list] = {k: [] for k in ("feature", "threshold", "left", "right", "value")}
        for (predictor,) in reg._predictors:
            nodes = predictor.nodes
            leaf = nodes["is_leaf"].astype(bool)
            fields["feature"].append(tuple(int(v) for v in np.where(leaf, 0, nodes["feature_idx"])))
            # Thresholds exactly as fitted: they can equal a measured feature value.
            fields["threshold"].append(tuple(float(v) for v in np.where(leaf, 0.0, nodes["num_threshold"])))
            fields["left"].append(tuple(int(v) for v in np.where(leaf, 0, nodes["left"])))
            fields["right"].append(tuple(int(v) for v in np.where(leaf, 0, nodes["right"])))
            fields["value"].append(tuple(short(v) if is_leaf else 0.0 for v, is_leaf in zip(nodes["value"], leaf)))
        return cls(short(float(np.ravel(reg._baseline_prediction)[0])), **{k: tuple(v) for k, v in fields.items()})


@dataclass(frozen=True)
class ShapeLaw:
    roofline: Roofline
    correction: Trees | None  # None: cross-validation found the roofline alone better
    num_sms: int

    def seconds(self, tokens: Any, n: Any, k: Any, flops: Any, nbytes: Any) -> np.ndarray:
        t = self.roofline.seconds(flops, nbytes)
        if self.correction is not None:
            t = t * np.exp(self.correction.predict(correction_features(tokens, n, k, flops, nbytes, self.num_sms)))
        return t

    def to_json(self) -> dict[str, Any]:
        r = self.roofline
        trees = None
        if self.correction is not None:
            c = self.correction
            trees = {"baseline": c.baseline, "trees": [
                {"feature": f, "threshold": t, "left": lf, "right": rt, "value": v}
                for f, t, lf, rt, v in zip(c.feature, c.threshold, c.left, c.right, c.value)]}
        return {"roofline": {"fixed_s": r.fixed_s, "s_per_flop": r.s_per_flop, "s_per_byte": r.s_per_byte,
                             "p": r.p, "floor_s": r.floor_s}, "correction": trees, "num_sms": self.num_sms}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ShapeLaw":
        c = d["correction"]
        trees = None if c is None else Trees(
            c["baseline"], *(tuple(tuple(t[key]) for t in c["trees"]) for key in ("feature", "threshold", "left",
                                                                                   "right", "value")))
        return cls(Roofline(**d["roofline"]), trees, int(d["num_sms"]))


def fit_roofline(flops: np.ndarray, nbytes: np.ndarray, seconds: np.ndarray, floor: bool = False) -> Roofline:
    """Relative least squares of the roofline, coefficients in log space. Without FLOPs (a
    bandwidth-bound op) and without a `floor`, p has nothing to combine and stays 1."""
    from scipy.optimize import least_squares  # only fitting needs scipy

    has_flops = bool(np.any(flops > 0))
    typical = float(np.median(seconds))
    theta0 = [math.log(0.1 * typical), math.log(typical / max(np.median(nbytes), 1.0) / 2)]
    if has_flops:
        theta0 += [math.log(typical / np.median(flops[flops > 0]) / 2)]
    if floor:
        theta0 += [math.log(float(np.min(seconds)))]
    if has_flops or floor:
        theta0 += [0.0]

    def law(theta: np.ndarray) -> Roofline:
        fixed, per_byte = math.exp(theta[0]), math.exp(theta[1])
        if not (has_flops or floor):
            return Roofline(fixed, 0.0, per_byte, 1.0)
        per_flop = math.exp(theta[2]) if has_flops else 0.0
        floor_s = math.exp(theta[2 + has_flops]) if floor else 0.0
        return Roofline(fixed, per_flop, per_byte, 1.0 + math.exp(min(theta[-1], 3.0)), floor_s)

    result = least_squares(lambda th: law(th).seconds(flops, nbytes) / seconds - 1.0, np.array(theta0))
    return law(result.x)


def fit_shape_law(tokens: np.ndarray, n: np.ndarray, k: np.ndarray, flops: np.ndarray, nbytes: np.ndarray,
                  seconds: np.ndarray, num_sms: int, correct: bool = True,
                  boosting: Mapping[str, Any] = BOOSTING, floor: bool = False) -> ShapeLaw:
    roofline = fit_roofline(flops, nbytes, seconds, floor)
    if not correct:
        return ShapeLaw(roofline, None, num_sms)
    from sklearn.ensemble import HistGradientBoostingRegressor  # only fitting needs scikit-learn

    x = correction_features(tokens, n, k, flops, nbytes, num_sms)
    target = np.log(seconds / roofline.seconds(flops, nbytes))
    reg = HistGradientBoostingRegressor(**boosting).fit(x, target)
    trees = Trees.from_sklearn(reg)
    # The node arrays are scikit-learn internals: prove they predict what scikit-learn predicts
    # (to the committed digits).
    if not np.allclose(trees.predict(x), reg.predict(x), rtol=0, atol=1e-6):
        raise RuntimeError("reading scikit-learn's boosted trees gave other predictions than "
                           "scikit-learn; this scikit-learn version is not supported by profiler/cross_model.py")
    return ShapeLaw(roofline, trees, num_sms)
