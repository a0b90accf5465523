"""Per-operation laws fitted to a measured profile, chosen by k-fold cross-validation, cached by content.

A profile (`profiles/<dir>/profile.csv` + `metadata.json`, written by `python -m profiler`) holds the
median time of every backend operation at many shapes. Each operation is explained by a law in
physical features, so that it also prices shapes nobody measured (another model's widths, another
TP degree) and can be rescaled to another GPU (`profiler/transfer.py`):

    t = fixed + per_seq * sequences + sum over terms ((s_per_flop * FLOPs)^p + (s_per_byte * bytes)^p)^(1/p)

Families: "linear" is p = 1 (compute and memory time add up), an exact non-negative least-squares
fit; "roofline" frees p > 1 so that the larger of the two dominates, as on a real roofline
(nonlinear least squares started from the linear solution). Both minimise *relative* error, since
the target is the mean absolute percentage error (MAPE).

Law groups share one law: all GEMMs (the five linear layers and the probe shapes), because at any
one shape FLOPs and bytes grow in proportion and only several shapes tell them apart; attention
(prompt chunks, decodes and mixed calls; one term for the prompt part and one, memory-only, for the
decode part); and each bandwidth-bound op alone. At the shape it was measured at, an op may also
multiply its law by its measured residual (measured / law), interpolated over the token count:
"+residual" captures the GEMM tile and wave steps that no smooth law has.

Selection: k-fold cross-validation over each group's points; the group keeps the family with the
lower held-out MAPE, then each op keeps its residual if that lowers the op's own held-out MAPE.
Fits are cached under `.cache/fits/<hash>.json`, keyed by the profile's bytes and this file's source.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from simulator.core.model_spec import ModelSpec
from simulator.core.paths import REPO_ROOT

from .all_reduce import _isotonic

PROFILE_TABLE = "profile.csv"
PROFILE_METADATA = "metadata.json"

LINEAR_OPS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head")
LINEAR_PROBE = "linear_probe"  # F.linear at shapes no shard has; trains the GEMM law only
GEMM_OPS = LINEAR_OPS + (LINEAR_PROBE,)
STREAM_OPS = ("rmsnorm", "silu_mul", "rope", "kv_cache_write", "embedding", "rope_cos_sin",
              "final_norm", "sampling")
ATTENTION = "attention"
DECODER_LAYER = "decoder_layer"  # whole layers, measured to check that the op laws add up
ALL_REDUCE = "all_reduce"        # measured only with several GPUs; interpolated, not fitted
KNOWN_OPS = GEMM_OPS + STREAM_OPS + (ATTENTION, DECODER_LAYER, ALL_REDUCE)

SHAPE_COLUMNS = ("tokens", "k_in", "k_out", "width", "num_prefills", "num_prefill_tokens",
                 "prefill_kv_tokens", "prefill_attn_pairs", "num_decodes", "decode_kv_tokens",
                 "nbytes", "num_workers")
TIMING_COLUMNS = ("n_repeats", "median_ms", "p10_ms", "p90_ms")
COLUMNS = ("op", "kind") + SHAPE_COLUMNS + TIMING_COLUMNS

# Memory traffic of the bandwidth-bound ops: passes over the op's main tensor (reads plus writes of
# the backend's torch calls) and the element size (None: the model's dtype). The pass counts only
# fix the units of each op's own byte coefficient; what carries over to other models is that
# traffic grows with tokens x width.
_STREAM_TRAFFIC: dict[str, tuple[int, int | None]] = {
    "rmsnorm": (5, None),         # residual add (read 2, write 1), then RMSNorm (read 1, write 1)
    "silu_mul": (5, None),        # silu(gate) (read, write), then * up (read 2, write 1)
    "rope": (10, None),           # rotate-half (neg, cat), x*cos, rotated*sin, add: over q and k
    "kv_cache_write": (2, None),  # index_copy of K and V into their slots (read, write)
    "embedding": (2, None),       # row gather (read, write); 5 with TP: the mask multiply (read 2, write 1)
    "rope_cos_sin": (6, 4),       # fp32 angles, cat, cos and sin, cast (once per iteration)
    "final_norm": (4, None),      # gather the sampled rows (read, write), RMSNorm (read, write)
    "sampling": (1, 4),           # greedy argmax over the fp32 logits of the whole vocabulary
}
LOGIT_BYTES = 4  # the LM head's output is cast to fp32 before the gather and the argmax


# ---- one rank's shapes: shared with the analytical model (profiler/analytical.py) -------------------
def linear_shapes(model: ModelSpec, tp: int) -> dict[str, tuple[int, int]]:
    """(input width, output width) of each linear layer's shard on one rank (Megatron sharding)."""
    h, d = model.hidden_size, model.head_dim
    heads, kv_heads = model.heads_per_rank(tp), model.kv_heads_per_rank(tp)
    inter = model.intermediate_size // tp
    up = 2 * inter if model.gated_mlp else inter  # gate and up fused, or up alone
    return {"qkv_proj": (h, (heads + 2 * kv_heads) * d), "o_proj": (heads * d, h),
            "gate_up_proj": (h, up), "down_proj": (inter, h),
            "lm_head": (h, model.vocab_size // tp)}


def all_reduces_per_iteration(model: ModelSpec) -> int:
    """Per layer one after attention and one after the MLP (one when they run side by side), plus
    one for the vocab-parallel embedding."""
    return (1 if model.parallel_block else 2) * model.num_layers + 1


def gemm_flops_bytes(n: Any, k_in: Any, k_out: Any, dtype_bytes: int) -> tuple[Any, Any]:
    """FLOPs and bytes of `F.linear` over `n` tokens: weights read once, activations in and out."""
    return 2 * n * k_in * k_out, dtype_bytes * (k_in * k_out + n * (k_in + k_out))


def gathered_logits_bytes(model: ModelSpec, sampled: Any) -> Any:
    """Bytes of fp32 logits each rank holds after the LM head's all-gather across the TP ranks
    (`backend/model.py`): the whole vocabulary for each of the `sampled` tokens."""
    return sampled * model.vocab_size * LOGIT_BYTES


def stream_widths(model: ModelSpec, tp: int) -> dict[str, int]:
    """Elements per token of each bandwidth-bound op's main tensor on one rank."""
    d = model.head_dim
    heads, kv_heads = model.heads_per_rank(tp), model.kv_heads_per_rank(tp)
    return {"rmsnorm": model.hidden_size, "silu_mul": model.intermediate_size // tp,
            "rope": (heads + kv_heads) * d, "kv_cache_write": 2 * kv_heads * d,
            "embedding": model.hidden_size, "rope_cos_sin": d, "final_norm": model.hidden_size,
            "sampling": model.vocab_size}


@dataclass(frozen=True)
class AttentionUnits:
    """Per-unit features of one rank's attention call (one layer)."""
    flops_per_pair: float         # QK^T and PV: 2 FLOPs per multiply-add each, per query head
    bytes_per_kv_token: float     # K and V of this rank's KV heads
    bytes_per_query: float        # read the query, write the output

    @classmethod
    def of(cls, model: ModelSpec, tp: int) -> "AttentionUnits":
        d, b = model.head_dim, model.dtype_bytes
        heads, kv_heads = model.heads_per_rank(tp), model.kv_heads_per_rank(tp)
        return cls(4 * d * heads, 2 * kv_heads * d * b, 2 * heads * d * b)


@dataclass
class Features:
    """What a law reads: a sequence count and, per term, FLOPs and bytes (arrays over points)."""
    seqs: np.ndarray
    terms: dict[str, tuple[np.ndarray, np.ndarray]]


def features(op: str, cols: Mapping[str, Any], model: ModelSpec, tp: int) -> Features:
    """Physical features of `op` at the shapes in `cols` (arrays named as SHAPE_COLUMNS)."""
    c = {k: np.asarray(cols[k], dtype=float) for k in SHAPE_COLUMNS if k in cols}
    n = c["tokens"]
    b = model.dtype_bytes
    if op in GEMM_OPS:
        k_in, k_out = c["k_in"], c["k_out"]
        flops, nbytes = gemm_flops_bytes(n, k_in, k_out, b)
        if op == "lm_head":  # the .float() cast reads the bf16 logits and writes fp32 ones
            nbytes = nbytes + n * k_out * (b + LOGIT_BYTES)
        return Features(np.zeros_like(n), {"main": (flops, nbytes)})
    if op in STREAM_OPS:
        passes, element = _STREAM_TRAFFIC[op]
        if op == "embedding" and tp > 1:
            passes = 5
        return Features(np.zeros_like(n), {"main": (np.zeros_like(n), passes * n * c["width"] * (element or b))})
    if op == ATTENTION:
        u = AttentionUnits.of(model, tp)
        prefill_bytes = c["prefill_kv_tokens"] * u.bytes_per_kv_token + c["num_prefill_tokens"] * u.bytes_per_query
        decode_bytes = c["decode_kv_tokens"] * u.bytes_per_kv_token + c["num_decodes"] * u.bytes_per_query
        # Decodes do 2 FLOPs per query head per KV element read, far below any GPU's ridge point:
        # their term is memory-only, which also keeps FLOPs and bytes (proportional there) apart.
        return Features(c["num_prefills"] + c["num_decodes"],
                        {"prefill": (c["prefill_attn_pairs"] * u.flops_per_pair, prefill_bytes),
                         "decode": (np.zeros_like(n), decode_bytes)})
    raise ValueError(f"op={op!r} has no law; fitted ops are {GEMM_OPS + STREAM_OPS + (ATTENTION,)}")


def law_group(op: str) -> str:
    return "gemm" if op in GEMM_OPS else op


def op_shape(op: str, cols: Mapping[str, Any]) -> tuple[int, ...]:
    """The widths that identify an op's measured shape (GEMM: k_in, k_out; stream: width)."""
    keys = ("k_in", "k_out") if op in GEMM_OPS else ("width",)
    return tuple(int(cols[k]) for k in keys)


# ---- laws ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Roofline:
    """One term: compute time and memory time combined by a p-norm (p = 1: their sum)."""
    s_per_flop: float
    s_per_byte: float
    p: float

    def seconds(self, flops: Any, nbytes: Any) -> Any:
        compute, memory = self.s_per_flop * flops, self.s_per_byte * nbytes
        if self.p == 1.0:
            return compute + memory
        return (compute ** self.p + memory ** self.p) ** (1.0 / self.p)


@dataclass(frozen=True)
class Law:
    family: str  # "linear" or "roofline"
    fixed_s: float
    per_seq_s: float
    terms: dict[str, Roofline]

    def seconds(self, f: Features) -> np.ndarray:
        t = self.fixed_s + self.per_seq_s * f.seqs
        for name, (flops, nbytes) in f.terms.items():
            t = t + self.terms[name].seconds(flops, nbytes)
        return t

    def scaled(self, compute: float, memory: float) -> "Law":
        """The law with compute time multiplied by `compute` and memory time by `memory`."""
        return Law(self.family, self.fixed_s, self.per_seq_s,
                   {k: Roofline(r.s_per_flop * compute, r.s_per_byte * memory, r.p)
                    for k, r in self.terms.items()})

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Law":
        return cls(d["family"], d["fixed_s"], d["per_seq_s"],
                   {k: Roofline(**v) for k, v in d["terms"].items()})


class _Design:
    """A law's free coefficients as columns: fixed, per-sequence, and per term FLOPs and bytes.

    Columns whose feature is zero at every point are left out (their coefficient is 0)."""

    def __init__(self, f: Features):
        named = [("fixed", np.ones_like(f.seqs)), ("per_seq", f.seqs)]
        for term, (flops, nbytes) in f.terms.items():
            named += [(f"{term}.flops", flops), (f"{term}.bytes", nbytes)]
        self.names = [name for name, column in named if np.any(column > 0)]
        self.matrix = np.stack([column for name, column in named if name in self.names], axis=1)
        self.terms = list(f.terms)

    def law(self, family: str, coef: Mapping[str, float], p: Mapping[str, float]) -> Law:
        """The law with these coefficients (a left-out column's is 0) and p per term (default 1)."""
        def get(name: str) -> float:
            return float(coef.get(name, 0.0))
        return Law(family, get("fixed"), get("per_seq"),
                   {t: Roofline(get(f"{t}.flops"), get(f"{t}.bytes"), p.get(t, 1.0)) for t in self.terms})


def _linear_coefficients(design: _Design, seconds: np.ndarray) -> dict[str, float]:
    """Non-negative least squares of relative error: minimise sum ((X c - t) / t)^2, c >= 0."""
    from sklearn.linear_model import LinearRegression  # only a cache miss fits

    x = design.matrix / seconds[:, None]
    scale = x.max(axis=0)  # unit columns: the solver sees comparable magnitudes (1 vs 1e12 FLOPs)
    reg = LinearRegression(fit_intercept=False, positive=True).fit(x / scale, np.ones_like(seconds))
    return dict(zip(design.names, reg.coef_ / scale))


def fit_linear(f: Features, seconds: np.ndarray) -> Law:
    design = _Design(f)
    return design.law("linear", _linear_coefficients(design, seconds), {})


def fit_roofline(f: Features, seconds: np.ndarray) -> Law:
    """Relative least squares of the p-norm law, from the linear solution, coefficients in log space."""
    from scipy.optimize import least_squares  # only a cache miss fits

    design = _Design(f)
    linear = _linear_coefficients(design, seconds)
    # Log space cannot start at 0: a coefficient the linear fit zeroed restarts where its column
    # explains a thousandth of a typical time.
    typical = np.median(seconds)
    coef0 = [max(linear[name], 1e-3 * typical / np.median(column[column > 0]))
             for name, column in zip(design.names, design.matrix.T)]
    # p only where a term has both FLOPs and bytes; p = 1 + exp(q), q in [-6, 3]: p in (1, 21]
    p_terms = [t for t in design.terms if f"{t}.flops" in design.names and f"{t}.bytes" in design.names]
    theta0 = np.concatenate([np.log(coef0), np.zeros(len(p_terms))])
    lower = np.concatenate([np.full(len(coef0), -np.inf), np.full(len(p_terms), -6.0)])
    upper = np.concatenate([np.full(len(coef0), np.inf), np.full(len(p_terms), 3.0)])

    def law_of(theta: np.ndarray) -> Law:
        coef = dict(zip(design.names, np.exp(theta[:len(coef0)])))
        return design.law("roofline", coef, {t: 1.0 + math.exp(q) for t, q in zip(p_terms, theta[len(coef0):])})

    result = least_squares(lambda theta: law_of(theta).seconds(f) / seconds - 1.0, theta0,
                           bounds=(lower, upper), method="trf")
    return law_of(result.x)


FAMILIES = {"linear": fit_linear, "roofline": fit_roofline}


@dataclass(frozen=True)
class Residual:
    """measured / law at one op's measured shape, interpolated over log(tokens), clamped at the ends."""
    shape: tuple[int, ...]
    tokens: tuple[float, ...]
    ratio: tuple[float, ...]

    def at(self, tokens: Any) -> np.ndarray:
        return np.interp(np.log(np.maximum(np.asarray(tokens, dtype=float), 1.0)),
                         np.log(self.tokens), self.ratio)

    @classmethod
    def fit(cls, shape: tuple[int, ...], tokens: np.ndarray, ratio: np.ndarray) -> "Residual":
        by_tokens: dict[float, list[float]] = {}
        for n, r in zip(tokens, ratio):
            by_tokens.setdefault(float(n), []).append(float(r))
        keys = sorted(by_tokens)
        return cls(shape, tuple(keys), tuple(float(np.median(by_tokens[k])) for k in keys))


# ---- the profile ---------------------------------------------------------------------------------
@dataclass
class Profile:
    directory: Path
    table: Any  # pandas.DataFrame with COLUMNS
    metadata: dict[str, Any]
    model: ModelSpec
    tp: int
    content_hash: str

    def rows(self, op: str) -> Any:
        return self.table[self.table["op"] == op]


def _hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in (directory / PROFILE_TABLE, directory / PROFILE_METADATA, Path(__file__)):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def read_profile(directory: str | Path) -> Profile:
    """Load and validate a profile directory; every defect is one ValueError line."""
    import pandas as pd

    directory = Path(directory)
    for name in (PROFILE_TABLE, PROFILE_METADATA):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"profile {directory} has no {name}; measure one with "
                                    "`python -m profiler` (docs/profiler.md) or fix the path")
    table = pd.read_csv(directory / PROFILE_TABLE, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{directory / PROFILE_TABLE} lacks columns {missing}; re-measure it with "
                         "the current `python -m profiler`")
    unknown = sorted(set(table["op"]) - set(KNOWN_OPS))
    if unknown:
        raise ValueError(f"{directory / PROFILE_TABLE} has unknown ops {unknown}; known: {list(KNOWN_OPS)}")
    numeric = list(SHAPE_COLUMNS + TIMING_COLUMNS)
    values = table[numeric].apply(pd.to_numeric, errors="coerce")
    bad = values.isna() | (values < 0)
    if bad.any().any():
        row, col = map(int, np.argwhere(bad.to_numpy())[0])
        raise ValueError(f"{directory / PROFILE_TABLE} row {row + 2}: {numeric[col]}="
                         f"{table[numeric[col]].iloc[row]} is not a number >= 0; fix or re-measure")
    table[numeric] = values
    times = values[["p10_ms", "median_ms", "p90_ms"]].to_numpy()
    bad_rows = np.flatnonzero((times[:, 1] <= 0) | (times[:, 0] > times[:, 1]) | (times[:, 1] > times[:, 2]))
    if bad_rows.size:
        r = int(bad_rows[0])
        raise ValueError(f"{directory / PROFILE_TABLE} row {r + 2} ({table['op'].iloc[r]}): need "
                         f"0 < median_ms and p10_ms <= median_ms <= p90_ms, got {times[r].tolist()}")
    metadata = json.loads((directory / PROFILE_METADATA).read_text())
    for key in ("device", "device_kind", "date", "model", "tp", "hardware"):
        if key not in metadata:
            raise ValueError(f"{directory / PROFILE_METADATA} lacks {key!r}; re-measure with `python -m profiler`")
    model = ModelSpec.from_config(metadata["model"])
    return Profile(directory, table, metadata, model, int(metadata["tp"]), _hash(directory))


# ---- the fit -------------------------------------------------------------------------------------
@dataclass
class OpScore:
    """Held-out errors of one op (relative, over its cross-validation folds)."""
    op: str
    group: str
    points: int
    family: str             # the group's law family, "+residual" when the op keeps its residual
    mape_law: float
    mape_residual: float | None  # None: the op has no single measured shape to interpolate at
    mape: float              # of the chosen model
    p90_ape: float
    max_ape: float


@dataclass
class FittedProfile:
    directory: str
    content_hash: str
    metadata: dict[str, Any]
    laws: dict[str, Law]                # law group -> law
    residuals: dict[str, Residual]      # op -> residual, for ops that keep one
    scores: list[OpScore]
    held_out_ms: list[float | None]     # per profile row: the chosen model's out-of-fold prediction
    all_reduce: dict[str, dict[str, list[float]]]  # GPU count -> measured {nbytes, seconds}, if any
    fit_seconds: float
    from_cache: bool = field(default=False)

    @property
    def model(self) -> ModelSpec:
        return ModelSpec.from_config(self.metadata["model"])

    @property
    def tp(self) -> int:
        return int(self.metadata["tp"])

    def law(self, op: str) -> Law:
        return self.laws[law_group(op)]

    def seconds(self, op: str, cols: Mapping[str, Any], model: ModelSpec, tp: int,
                law: Law | None = None) -> np.ndarray:
        """`op`'s time at the shapes in `cols` for `model` at `tp` (per call, one layer).

        The residual applies only where the shape is the one measured; `law` replaces the
        op's fitted law (the transfer passes a rescaled one)."""
        law = law or self.law(op)
        t = law.seconds(features(op, cols, model, tp))
        residual = self.residuals.get(op)
        if residual is not None and op_shape(op, {k: np.ravel(cols[k])[0] for k in ("k_in", "k_out", "width")
                                                  if k in cols}) == residual.shape:
            t = t * residual.at(cols["tokens"])
        return t

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("from_cache")
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "FittedProfile":
        return cls(d["directory"], d["content_hash"], d["metadata"],
                   {k: Law.from_json(v) for k, v in d["laws"].items()},
                   {k: Residual(tuple(v["shape"]), tuple(v["tokens"]), tuple(v["ratio"]))
                    for k, v in d["residuals"].items()},
                   [OpScore(**s) for s in d["scores"]], d["held_out_ms"], d["all_reduce"], d["fit_seconds"],
                   from_cache=True)


def _ape(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    return np.abs(predicted / measured - 1.0)


def _columns(rows: Any) -> dict[str, np.ndarray]:
    return {k: rows[k].to_numpy(dtype=float) for k in SHAPE_COLUMNS}


def _stack(parts: list[Features], positions: list[np.ndarray], size: int) -> Features:
    """One Features over `size` rows from per-op Features placed at their row positions."""
    seqs, terms = np.zeros(size), {}
    for f, where in zip(parts, positions):
        seqs[where] = f.seqs
        for name, (flops, nbytes) in f.terms.items():
            fl, by = terms.setdefault(name, (np.zeros(size), np.zeros(size)))
            fl[where], by[where] = flops, nbytes
    return Features(seqs, terms)


def _select(f: Features, at: np.ndarray) -> Features:
    return Features(f.seqs[at], {k: (fl[at], by[at]) for k, (fl, by) in f.terms.items()})


def _residual_shape(op: str, rows: Any) -> tuple[int, ...] | None:
    """The op's measured shape if all its rows share one (probes span several: no residual)."""
    if op == LINEAR_PROBE or op == ATTENTION:
        return None
    shapes = {op_shape(op, r) for r in rows.to_dict("records")}
    return shapes.pop() if len(shapes) == 1 else None


def fit_profile(profile: Profile, folds: int = 5, seed: int = 0) -> FittedProfile:
    started = time.perf_counter()
    table = profile.table
    fitted_ops = [op for op in GEMM_OPS + STREAM_OPS + (ATTENTION,) if (table["op"] == op).any()]
    needed = [op for op in LINEAR_OPS + STREAM_OPS + (ATTENTION,) if op not in fitted_ops]
    if needed:
        raise ValueError(f"profile {profile.directory} has no rows for {needed}; re-measure it with "
                         "the full op set (`python -m profiler`)")
    groups: dict[str, list[str]] = {}
    for op in fitted_ops:
        groups.setdefault(law_group(op), []).append(op)

    laws: dict[str, Law] = {}
    residuals: dict[str, Residual] = {}
    scores: list[OpScore] = []
    held_out = np.full(len(table), np.nan)
    for group, ops in groups.items():
        rows = table[table["op"].isin(ops)]
        if len(rows) < 3:
            raise ValueError(f"profile {profile.directory}: law group {group!r} has {len(rows)} points; "
                             "need at least 3 (measure a larger grid)")
        fitted = _GroupFit(group, ops, rows, profile.model, profile.tp)
        laws[group] = fitted.select(folds, seed)
        residuals.update(fitted.residuals)
        scores += fitted.scores
        held_out[rows.index] = fitted.held_out * 1e3
    return FittedProfile(str(profile.directory), profile.content_hash, profile.metadata, laws, residuals,
                         scores, [None if np.isnan(v) else float(v) for v in held_out],
                         _all_reduce_curves(profile.rows(ALL_REDUCE)), time.perf_counter() - started)


class _GroupFit:
    """Cross-validation and the final fit of one law group (rows of one or several ops)."""

    def __init__(self, group: str, ops: list[str], rows: Any, model: ModelSpec, tp: int):
        self.group, self.ops = group, ops
        self.op_of = rows["op"].to_numpy()
        self.features = _stack([features(op, _columns(rows[self.op_of == op]), model, tp) for op in ops],
                               [np.flatnonzero(self.op_of == op) for op in ops], len(rows))
        self.measured = rows["median_ms"].to_numpy() * 1e-3
        self.tokens = rows["tokens"].to_numpy(dtype=float)
        self.shapes = {op: _residual_shape(op, rows[self.op_of == op]) for op in ops}
        # A group without FLOPs (bandwidth-bound ops) has nothing for p to combine.
        has_flops = any(np.any(flops > 0) for flops, _ in self.features.terms.values())
        self.families = list(FAMILIES) if has_flops else ["linear"]
        self.residuals: dict[str, Residual] = {}
        self.scores: list[OpScore] = []
        self.held_out = np.full(len(rows), np.nan)

    def _law(self, family: str, at: np.ndarray) -> Law:
        return FAMILIES[family](_select(self.features, at), self.measured[at])

    def _residual(self, op: str, law: Law, at: np.ndarray) -> Residual:
        """The op's residual measured / law over the rows `at` (all of them the op's)."""
        return Residual.fit(self.shapes[op], self.tokens[at],
                            self.measured[at] / law.seconds(_select(self.features, at)))

    def select(self, folds: int, seed: int) -> Law:
        """Held-out predictions of every family with and without residuals, the choices, and the
        chosen family's law fitted to all rows."""
        from sklearn.model_selection import KFold  # only a cache miss fits

        n = len(self.measured)
        law_only = {fam: np.zeros(n) for fam in self.families}
        with_residual = {fam: np.full(n, np.nan) for fam in self.families}
        for train, test in KFold(min(folds, n), shuffle=True, random_state=seed).split(self.measured):
            for fam in self.families:
                law = self._law(fam, train)
                law_only[fam][test] = law.seconds(_select(self.features, test))
                for op in self.ops:
                    tr, te = train[self.op_of[train] == op], test[self.op_of[test] == op]
                    if self.shapes[op] is not None and len(tr) and len(te):
                        with_residual[fam][te] = law_only[fam][te] * self._residual(op, law, tr).at(self.tokens[te])
        family = min(self.families, key=lambda fam: np.mean(_ape(law_only[fam], self.measured)))
        law = self._law(family, np.arange(n))
        for op in self.ops:
            mine = self.op_of == op
            law_ape = _ape(law_only[family][mine], self.measured[mine])
            res_ape = (None if self.shapes[op] is None or np.isnan(with_residual[family][mine]).any()
                       else _ape(with_residual[family][mine], self.measured[mine]))
            keep = res_ape is not None and res_ape.mean() < law_ape.mean()
            if keep:
                self.residuals[op] = self._residual(op, law, np.flatnonzero(mine))
            self.held_out[mine] = (with_residual if keep else law_only)[family][mine]
            chosen = res_ape if keep else law_ape
            self.scores.append(OpScore(op, self.group, int(mine.sum()), family + ("+residual" if keep else ""),
                                       float(law_ape.mean()), None if res_ape is None else float(res_ape.mean()),
                                       float(chosen.mean()), float(np.percentile(chosen, 90)), float(chosen.max())))
        return law


def _all_reduce_curves(rows: Any) -> dict[str, dict[str, list[float]]]:
    """Per GPU count: the median time per message size, made non-decreasing (as in all_reduce.py)."""
    curves = {}
    for workers, group in rows.groupby("num_workers"):
        medians = group.groupby("nbytes")["median_ms"].median().sort_index()
        curves[str(int(workers))] = {"nbytes": medians.index.astype(float).tolist(),
                                     "seconds": [t * 1e-3 for t in _isotonic(medians.tolist())]}
    return curves


def default_cache_dir() -> Path:
    return Path(os.environ.get("SCHED_SIM_CACHE", REPO_ROOT / ".cache" / "fits"))


def load_fit(profile_dir: str | Path, cache_dir: str | Path | None = None) -> FittedProfile:
    """The fit of a profile: from the cache when this profile (and this code) was fitted before."""
    profile_dir = Path(profile_dir)
    for name in (PROFILE_TABLE, PROFILE_METADATA):
        if not (profile_dir / name).is_file():
            raise FileNotFoundError(f"profile {profile_dir} has no {name}; measure one with "
                                    "`python -m profiler` (docs/profiler.md) or fix the path")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"{_hash(profile_dir)}.json"
    if path.is_file():
        cached = FittedProfile.from_json(json.loads(path.read_text()))
        cached.directory = str(profile_dir)  # the same bytes may have been fitted under another path
        return cached
    fitted = fit_profile(read_profile(profile_dir))
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # atomic: parallel simulations may fit at once
    tmp.write_text(json.dumps(fitted.to_json()))
    tmp.replace(path)
    return fitted
