"""Fit one GPU's cross-model laws to the public measurements, score them on held-out models, commit them.

    python -m profiler.calibrate                 # every public GPU -> profiler/calibration/public_<gpu>.json
    python -m profiler.calibrate gpu=a100        # one GPU
    python -m profiler.calibrate transfer        # then: each GPU's fit carried to the others -> transfer.json
    python -m profiler.calibrate gpu=a100 models=llama_2_7b,phi_2 out=/tmp/cal   # some models only, elsewhere

Per GPU, one law per group over every public model measured on it (`profiler/public_profiles.py`):
the four linear layers share one GEMM law (a GEMM is a GEMM: M, N and K tell them apart); each
bandwidth-bound op (norm, activation, RoPE, embedding) has its own. Each law is scored by
leave-one-model-out: fitted on all models but one, it predicts the one left out, which is how it
will price a model nobody measured (Yi-34B). The group keeps the learned correction
(`profiler/cross_model.py`) only if that held-out error (the mean of its errors below and from 64
tokens, as the goals judge it) is lower with it; a group measured on one
model only chooses its correction's minimum leaf size, and whether to keep it, by cross-validation
over its token counts instead (`TOKEN_FOLDS`, `LEAF_GRID`). The final law is fitted
to every model and written, with its provenance and errors, to `profiler/calibration/`, so runs
without `../shared` give the same numbers. `python -m profiler.accuracy source=public` prints
the same scores from those files.
"""
from __future__ import annotations

import datetime
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulator.core.paths import DEFAULT_SHARED_DATA_DIR, REPO_ROOT

from .cross_model import BOOSTING, GEMM_BOOSTING, ShapeLaw, fit_shape_law
from .hardware import HardwareSpec
from .fit import _STREAM_TRAFFIC, gemm_flops_bytes
from .public_profiles import PUBLIC_GPUS, SOURCE, PublicGPU, model_files, read_public

CALIBRATION_DIR = REPO_ROOT / "profiler" / "calibration"
GEMM_GROUP = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
# GELU reads and writes once; LayerNorm (with its residual add) moves what RMSNorm does
STREAM_PASSES = {**{op: passes for op, (passes, _) in _STREAM_TRAFFIC.items()}, "gelu": 2,
                 "layernorm": _STREAM_TRAFFIC["rmsnorm"][0]}
SMALL = 64  # token counts below this are scored apart: launch- and bandwidth-bound, their own goal
TOKEN_BINS = (1, 16, 64, 256, 1024, 4096, 1 << 20)  # held-out error against token count, per bin
# The token ranges over which `best_other_model_error` rescales a curve: wide enough that a
# rescaled curve must match a shape, not a point or two
YARDSTICK_BINS = (1, SMALL, 256, 1024, 1 << 20)
# Ops as wide as the hidden state whatever the TP, whose correction sees the TP degree as its k.
# Their shape is the same at every TP, yet the public times differ by TP run (Llama-2-7B's input
# norm on A100 at 2,240 tokens: 60/50/47/44 us at TP 1/2/4/8; the vocab-parallel embedding masks
# its ids only when TP > 1), so from shape alone no law gets under 3.4% in-sample (A100 norm; 3.3%
# embedding). With TP, leave-one-model-out error drops too (A100 norm 4.2 -> 2.7%, embedding
# 4.2 -> 2.4%). The SiLU's width already shrinks with TP; TP as its k too raised its held-out
# error below 64 tokens (H100 8.0 -> 9.9%), so it is not here.
TP_AS_K = ("rmsnorm", "layernorm", "embedding")
# A group measured on one model only (Phi-2's GELU and LayerNorm) cannot be held out by model, so
# its correction's minimum leaf size is chosen by cross-validation over its token counts: the rows
# sorted by tokens and dealt round-robin into TOKEN_FOLDS folds (each fold spans 1-4,096 tokens and
# its points lie between training points, as the token counts the simulator prices lie between
# the measured ones), each leaf size in LEAF_GRID, and the roofline alone, scored out of fold; the
# lowest error wins (a tie goes to the larger leaves). Before its floor (FLOOR_GROUPS), A40's GELU
# roofline missed the 1-16-token points by up to 28x (a flat ~2 us there) and leaves of 20 could
# not single those points out (out-of-fold 10.0%, in-sample 6.6%; leaves of 10: 6.7%, 3.8%).
TOKEN_FOLDS = 5
LEAF_GRID = (5, 10, 20, 40)
# Laws whose roofline has a floor (`cross_model.fit_roofline`): the time of the kernel's first small
# grid, which streaming then hides instead of adding to (t = fixed + (floor^p + ...)^(1/p)). A40's
# GELU is ~2 us flat up to 16 tokens and then bandwidth-bound, which a fixed time plus bytes cannot
# be (least squares puts the fixed time at ~8 ns and leaves the floor to the trees): with the floor
# its token-fold CV falls from 6.7% to 1.3% (H100 3.1 -> 2.9%, A100 2.5 -> 2.3%), LayerNorm's from
# 1.9 to 1.3% (H100 1.6 -> 1.4%, A100 1.6 -> 1.6%); RoPE's, see `rope_terms`. For the fused norm
# and SiLU kernels and the embedding a floor was measured and not kept: held out it helps on some
# GPUs and hurts on others (H100 RMSNorm from 64 tokens 3.1 -> 3.5%, SiLU below 64 8.0 -> 8.5%).
FLOOR_GROUPS = ("rope", "gelu", "layernorm")


def group_of(op: str) -> str:
    return "gemm" if op in GEMM_GROUP else op


def shape_features(op: str, tokens: Any, k_in: Any, k_out: Any, width: Any, dtype_bytes: int = 2,
                   head_dim: Any = None, tp: Any = None, heads: Any = None,
                   gpu: PublicGPU | None = None) -> dict[str, Any]:
    """What a law reads for `op`: tokens, its widths (n, k) and its FLOPs and bytes. RoPE needs
    `head_dim` and the query `heads` on this rank (its `width` is (heads + kv heads) x head_dim) and
    the `gpu` whose law prices it (`rope_terms`), the hidden-wide ops `tp` (`TP_AS_K`)."""
    tokens = np.asarray(tokens, dtype=float)
    if op in GEMM_GROUP:
        flops, nbytes = gemm_flops_bytes(tokens, np.asarray(k_in, float), np.asarray(k_out, float), dtype_bytes)
        return {"tokens": tokens, "n": k_out, "k": k_in, "flops": flops, "nbytes": nbytes}
    width = np.asarray(width, float)
    nbytes = STREAM_PASSES[op] * tokens * width * dtype_bytes
    if op == "rope":
        return {"tokens": tokens, **rope_terms(tokens, width, head_dim, heads, gpu), "nbytes": nbytes}
    if op in TP_AS_K:
        if tp is None:
            raise ValueError(f"{op}'s law needs the tensor-parallel degree")
        return {"tokens": tokens, "n": width, "k": tp, "flops": np.zeros_like(tokens), "nbytes": nbytes}
    return {"tokens": tokens, "n": width, "k": 1, "flops": np.zeros_like(tokens), "nbytes": nbytes}


def rope_terms(tokens: np.ndarray, width: np.ndarray, head_dim: Any, heads: Any,
               gpu: PublicGPU | None) -> dict[str, np.ndarray]:
    """RoPE's kernel (vLLM's `rotary_embedding`, which the public rows time) runs one thread block
    per token of min(heads x head_dim/2, 512) threads; each thread loops over its share of the query
    heads' head_dim/2 rotations, then of the KV heads'. A block's time is its loop length, and
    the GPU holds SMs x (resident threads / block size, at most its block limit) blocks at once, so
    the law's first term, FLOPs for a GEMM, is here the loop iterations of a block times the waves
    of blocks: over a few tokens the call takes time in proportion to its loop (1 token: ~2 us at
    2 iterations, ~9 us at 16 on H100), which bytes alone cannot say, and the waves step where the
    GPU's residency says (A40: 1,536 threads per SM, 3 blocks of 512: 11 -> 18 us from 256 to 264
    tokens for Llama-2-70B). Leave-one-model-out MAPE below / from 64 tokens, in-sample, with the
    row width as this term (no floor, selection by all points) -> with this term and a floor
    (FLOOR_GROUPS): A40 13.5 / 9.4%, 2.3% -> 11.3 / 8.3%, 2.2%; A100 9.6 / 6.8%, 2.6% -> 7.4 /
    5.0%, 2.1%; H100 11.0 / 8.3%, 8.1% (roofline alone) -> 7.9 / 7.9%, 2.4% (the correction kept
    by `halves_mape`: roofline alone 11.1 / 7.5%). The floor matters on A40 (without it 12.1 / 8.4%).
    The correction sees heads and head size as its n and k. Vidur's profiler rotates whole heads
    (`rotary_dim=head_dim`), Phi-2's too, so the loop counts head_dim/2 pairs."""
    if head_dim is None or heads is None:
        raise ValueError("rope's law needs the model's head_dim and its query heads per rank")
    if gpu is None:
        raise ValueError("rope's law needs the GPU whose law prices it (its SMs and residency)")
    shape = np.shape(tokens)
    head_dim = np.broadcast_to(np.asarray(head_dim, float), shape)
    rows = np.broadcast_to(np.asarray(width, float), shape) / head_dim  # query + KV heads on this rank
    heads = np.broadcast_to(np.asarray(heads, float), shape)
    pairs = head_dim / 2
    block = np.minimum(heads * pairs, 512)
    loop = np.ceil(heads * pairs / block) + np.ceil((rows - heads) * pairs / block)
    resident = np.minimum(gpu.threads_per_sm // block, gpu.blocks_per_sm)
    waves = np.ceil(np.maximum(tokens, 1) / (gpu.num_sms * resident))
    return {"n": rows, "k": head_dim, "flops": loop * waves}


def row_features(rows: Any, gpu: PublicGPU) -> dict[str, np.ndarray]:
    """`shape_features` of public rows (`read_public`: they carry `model`, whose head_dim and heads
    RoPE needs, and `tp`), priced by the law of `gpu`."""
    from .public_profiles import model_spec

    def rope_shape(g: Any) -> dict[str, Any]:
        if "model" not in g:
            return {}
        specs = {m: model_spec(m) for m in g["model"].unique()}
        return {"head_dim": g["model"].map({m: s.head_dim for m, s in specs.items()}).to_numpy(float),
                "heads": np.array([specs[m].heads_per_rank(int(tp)) for m, tp in zip(g["model"], g["tp"])], float),
                "gpu": gpu}

    parts = [shape_features(op, g["tokens"], g["k_in"], g["k_out"], g["width"],
                            tp=g["tp"].to_numpy(float) if "tp" in g else None,
                            **(rope_shape(g) if op == "rope" else {})) for op, g in rows.groupby("op", sort=False)]
    index = np.concatenate([g.index.to_numpy() for _, g in rows.groupby("op", sort=False)])
    order = np.argsort(index)
    return {k: np.concatenate([np.broadcast_to(np.asarray(p[k], float), p["tokens"].shape) for p in parts])[order]
            for k in parts[0]}


def law_seconds(law: ShapeLaw, f: dict[str, np.ndarray]) -> np.ndarray:
    """`law` at the points of `shape_features` / `row_features`."""
    return law.seconds(f["tokens"], f["n"], f["k"], f["flops"], f["nbytes"])


def _fit(f: dict[str, np.ndarray], seconds: np.ndarray, at: np.ndarray, num_sms: int, correct: bool,
         boosting: dict[str, Any] = BOOSTING, floor: bool = False) -> ShapeLaw:
    return fit_shape_law(*(f[k][at] for k in ("tokens", "n", "k", "flops", "nbytes")), seconds[at], num_sms, correct,
                         boosting, floor)


def _mape(ape: np.ndarray) -> float | None:
    return float(ape.mean()) if ape.size else None


@dataclass
class GroupFit:
    group: str
    law: ShapeLaw
    corrected: bool
    held_out: np.ndarray | None  # per row: out-of-model prediction (seconds); None: one model only
    in_sample: np.ndarray        # per row: the final law's prediction
    held_out_mape: dict[str, float | None]  # "roofline", "roofline+correction": `halves_mape`
    token_cv: dict[str, Any] | None = None  # one model only: the leaf size chosen over token folds


def halves_mape(ape: np.ndarray, tokens: np.ndarray) -> float:
    """The mean of the MAPEs below and from SMALL tokens, as the goals judge a law: by all points
    alone the few-token ones (a twentieth of the rows, but most decode iterations) would hardly count."""
    small = np.asarray(tokens) < SMALL
    return float(np.mean([ape[part].mean() for part in (small, ~small) if part.any()]))


def token_folds(tokens: np.ndarray, folds: int = TOKEN_FOLDS) -> list[np.ndarray]:
    """Row indices of each fold: the rows sorted by token count, dealt round-robin."""
    order = np.argsort(np.asarray(tokens), kind="stable")
    return [order[i::folds] for i in range(folds)]


def choose_leaf_size(f: dict[str, np.ndarray], seconds: np.ndarray, tokens: np.ndarray, num_sms: int,
                     boosting: dict[str, Any], floor: bool = False) -> dict[str, Any]:
    """Out-of-fold MAPE over `token_folds` of the roofline alone and of the corrected law at each
    `LEAF_GRID` minimum leaf size; the lowest wins (ties: the larger leaves)."""
    folds = token_folds(tokens)

    def out_of_fold(correct: bool, settings: dict[str, Any]) -> float:
        pred = np.zeros(len(seconds))
        for test in folds:
            train = np.setdiff1d(np.arange(len(seconds)), test)
            pred[test] = law_seconds(_fit(f, seconds, train, num_sms, correct, settings, floor),
                                     {k: v[test] for k, v in f.items()})
        return float(np.mean(np.abs(pred / seconds - 1)))

    by_leaf = {leaf: out_of_fold(True, {**boosting, "min_samples_leaf": leaf}) for leaf in LEAF_GRID}
    best = min(LEAF_GRID, key=lambda leaf: (by_leaf[leaf], -leaf))
    roofline = out_of_fold(False, boosting)
    return {"folds": len(folds), "roofline": roofline, "min_samples_leaf": {str(k): v for k, v in by_leaf.items()},
            "chosen_min_samples_leaf": best, "correction": by_leaf[best] < roofline}


def fit_group(group: str, rows: Any, gpu: PublicGPU, log=print) -> GroupFit:
    f = row_features(rows, gpu)
    seconds = rows["median_ms"].to_numpy() * 1e-3
    models = rows["model"].to_numpy()
    names = sorted(set(models))
    num_sms, floor = gpu.num_sms, group in FLOOR_GROUPS
    boosting = GEMM_BOOSTING if group == "gemm" else BOOSTING
    held, token_cv = {}, None
    if len(names) > 1:
        for correct in (False, True):
            pred = np.zeros(len(seconds))
            for name in names:
                test = models == name
                pred[test] = law_seconds(_fit(f, seconds, np.flatnonzero(~test), num_sms, correct, boosting, floor),
                                         {k: v[test] for k, v in f.items()})
            held[correct] = pred
        mape = {c: halves_mape(np.abs(p / seconds - 1), rows["tokens"].to_numpy()) for c, p in held.items()}
        corrected = mape[True] < mape[False]
    else:  # one model: nothing to hold out by model; the leaf size and the correction by token folds
        mape = {}
        token_cv = choose_leaf_size(f, seconds, rows["tokens"].to_numpy(), num_sms, boosting, floor)
        corrected = token_cv["correction"]
        boosting = {**boosting, "min_samples_leaf": token_cv["chosen_min_samples_leaf"]}
    law = _fit(f, seconds, np.arange(len(seconds)), num_sms, corrected, boosting, floor)
    if mape:
        how = (f"held-out MAPE (mean of <{SMALL}, >={SMALL} tokens) roofline {mape[False]:.2%}, "
               f"+correction {mape[True]:.2%} -> "
               f"{'kept' if corrected else 'dropped'}")
    else:
        leaves = ", ".join(f"{k} {v:.2%}" for k, v in token_cv["min_samples_leaf"].items())
        how = (f"one model; {token_cv['folds']}-fold token CV MAPE roofline {token_cv['roofline']:.2%}, "
               f"+correction by min leaf {leaves} -> "
               + (f"leaf {token_cv['chosen_min_samples_leaf']}" if corrected else "dropped"))
    log(f"  {group:<12} {len(seconds):>6} rows, {len(names)} models: {how}")
    return GroupFit(group, law, corrected, held.get(corrected), law_seconds(law, f),
                    {"roofline": mape.get(False), "roofline+correction": mape.get(True)}, token_cv)


def best_other_model_error(rows: Any) -> np.ndarray:
    """Per row, a yardstick for the held-out error: how close the single most similar curve of
    another model comes, given the answer. A curve is one (op, model, TP)'s times over the token
    counts; per `YARDSTICK_BINS` range, every curve of the group's other models (any op, any TP) is
    rescaled by the factor that fits this curve's own times there (the median ratio), and the one
    with the lowest MAPE gives the row its error. No law fitted without the model can pick that
    curve or that factor, and averaging several curves could beat it, so it is not a bound; but where
    it misses a goal, the public measurements hold no model shaped like the one left out, and no
    cross-model law can be expected to meet it (`python -m profiler.accuracy source=public`)."""
    ape = np.full(len(rows), np.nan)
    tokens, models = rows["tokens"].to_numpy(), rows["model"].to_numpy()
    log_ms = np.log(rows["median_ms"].to_numpy())
    curves = {key: g.index.to_numpy() for key, g in rows.groupby(["op", "model", "tp"], sort=True)}
    by_tokens = {key: dict(zip(tokens[at], log_ms[at])) for key, at in curves.items()}
    for key, at in curves.items():
        for lo, hi in zip(YARDSTICK_BINS, YARDSTICK_BINS[1:]):
            mine = at[(tokens[at] >= lo) & (tokens[at] < hi)]
            if not len(mine):  # a curve not measured in this range
                continue
            best = None
            for other, times in by_tokens.items():
                if other[1] == key[1] or not all(t in times for t in tokens[mine]):
                    continue
                ratio = log_ms[mine] - np.array([times[t] for t in tokens[mine]])
                err = np.abs(np.exp(np.median(ratio) - ratio) - 1)
                if best is None or err.mean() < best.mean():
                    best = err
            if best is not None:
                ape[mine] = best
    return ape


def op_scores(rows: Any, fit: GroupFit) -> list[dict[str, Any]]:
    """Per op: points, models, held-out (leave-one-model-out) and in-sample MAPE, below and from SMALL tokens."""
    seconds = rows["median_ms"].to_numpy() * 1e-3
    small = rows["tokens"].to_numpy() < SMALL
    yardstick = best_other_model_error(rows) if fit.held_out is not None else None
    out = []
    for op in rows["op"].unique():
        mine = (rows["op"] == op).to_numpy()
        ins = np.abs(fit.in_sample[mine] / seconds[mine] - 1)
        score = {"op": op, "group": fit.group, "points": int(mine.sum()),
                 "models": sorted(rows.loc[mine, "model"].unique()),
                 "in_sample_mape": float(ins.mean()),
                 "held_out_mape_small": None, "held_out_mape_large": None, "held_out_by_model": None,
                 "best_other_model_mape_small": None, "best_other_model_mape_large": None,
                 "held_out_by_tokens": None}
        if fit.held_out is not None:
            ape = np.abs(fit.held_out / seconds - 1)
            score["held_out_mape_small"] = _mape(ape[mine & small])
            score["held_out_mape_large"] = _mape(ape[mine & ~small])
            covered = mine & ~np.isnan(yardstick)
            score["best_other_model_mape_small"] = _mape(yardstick[covered & small])
            score["best_other_model_mape_large"] = _mape(yardstick[covered & ~small])
            score["held_out_by_model"] = {m: _mape(ape[mine & (rows["model"] == m).to_numpy()])
                                          for m in score["models"]}
            tokens = rows["tokens"].to_numpy()
            score["held_out_by_tokens"] = {f"{lo}-{hi - 1}": _mape(ape[mine & (tokens >= lo) & (tokens < hi)])
                                           for lo, hi in zip(TOKEN_BINS, TOKEN_BINS[1:])}
        out.append(score)
    return out


def check_models(data_dir: Path, gpu: str, models: list[str] | None) -> None:
    """One ValueError line unless every one of `models` (None: all) is measured on `gpu`."""
    if models is None:
        return
    measured = sorted(model_files(data_dir, gpu))
    if not models:
        raise ValueError(f"models= names no model; choose from {','.join(measured)} ({gpu})")
    unknown = sorted(set(models) - set(measured))
    if unknown:
        raise ValueError(f"models={','.join(unknown)}: not measured on {gpu}; choose from {','.join(measured)}")


def calibrate_gpu(gpu: str, data_dir: Path, log=print, models: list[str] | None = None) -> dict[str, Any]:
    """`models`: only these of the GPU's public models (all of them: None)."""
    import sklearn

    info = PUBLIC_GPUS[gpu]
    check_models(data_dir, gpu, models)
    table = read_public(data_dir, gpu)
    if models is not None:
        table = table[table["model"].isin(models)].reset_index(drop=True)
    log(f"{info.name} ({gpu}): {len(table)} rows, models {sorted(table['model'].unique())}")
    laws, scores, selection = {}, [], {}
    for group, rows in table.groupby(table["op"].map(group_of), sort=True):
        rows = rows.reset_index(drop=True)
        fit = fit_group(group, rows, info, log)
        laws[group] = fit.law.to_json()
        selection[group] = {"correction": fit.corrected, "held_out_mape": fit.held_out_mape}
        if fit.token_cv is not None:
            selection[group]["token_cv"] = fit.token_cv
        scores += op_scores(rows, fit)
    return {
        "gpu": gpu, "name": info.name, "num_sms": info.num_sms, "source": SOURCE, "dtype": "fp16",
        "created": datetime.date.today().isoformat(),
        "command": " ".join(["python -m profiler.calibrate", *sys.argv[1:]]),
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__},
        "models": sorted(table["model"].unique()), "tp": sorted(int(t) for t in table["tp"].unique()),
        "rows": int(len(table)), "groups": {op: group_of(op) for op in table["op"].unique()},
        "selection": selection, "scores": scores, "laws": laws,
    }


def datasheet(gpu: str, conf_dir: Path = REPO_ROOT / "conf" / "hardware") -> HardwareSpec:
    """The hardware config whose `public_fit` is `gpu`: the datasheet a transfer scales by."""
    from .cost_model import hardware_configs

    for cfg in hardware_configs(conf_dir):
        spec = HardwareSpec.from_config(cfg)
        if spec.public_fit == gpu:
            return spec
    raise ValueError(f"no conf/hardware config has public_fit: {gpu}; add one to transfer from or to it")


def transfer_scores(data_dir: Path, directory: Path = CALIBRATION_DIR, log=print) -> dict[str, Any]:
    """Leave-one-GPU-out: each GPU's laws, scaled by datasheet ratios to another public GPU, against
    that GPU's measurements, with and without the source's learned correction. The features are the
    source's (its SMs and residency for RoPE's waves), as `profiler/public.py` prices a transfer."""
    from .public import scaled_law

    gpus = [g for g in PUBLIC_GPUS if calibration_path(g, directory).is_file()]
    tables = {g: read_public(data_dir, g) for g in gpus}
    pairs = []
    for source in gpus:
        laws = {k: ShapeLaw.from_json(v) for k, v in json.loads(calibration_path(source, directory).read_text())["laws"].items()}
        src = datasheet(source)
        for target in gpus:
            if target == source:
                continue
            tgt = datasheet(target)
            compute, memory = src.peak_flops / tgt.peak_flops, src.mem_bandwidth / tgt.mem_bandwidth
            table = tables[target]
            table = table[table["op"].map(group_of).isin(laws)].reset_index(drop=True)
            seconds = table["median_ms"].to_numpy() * 1e-3
            f = row_features(table, PUBLIC_GPUS[source])
            groups = table["op"].map(group_of).to_numpy()
            result = {"source": source, "target": target, "compute_scale": compute, "memory_scale": memory}
            for keep in (False, True):
                pred = np.zeros(len(seconds))
                for group, law in laws.items():
                    at = groups == group
                    pred[at] = law_seconds(scaled_law(law, compute, memory, keep), {k: v[at] for k, v in f.items()})
                ape = np.abs(pred / seconds - 1)
                linear = table["op"].isin(GEMM_GROUP).to_numpy()
                result["with_correction" if keep else "roofline_only"] = {
                    "all": float(ape.mean()), "linear": float(ape[linear].mean()),
                    "elementwise": float(ape[~linear].mean())}
            log(f"  {source} -> {target}: MAPE roofline only {result['roofline_only']['all']:.1%}, "
                f"with the source's correction {result['with_correction']['all']:.1%}")
            pairs.append(result)
    keep = float(np.mean([p["with_correction"]["all"] for p in pairs])) < float(np.mean([p["roofline_only"]["all"] for p in pairs]))
    return {"created": datetime.date.today().isoformat(), "command": "python -m profiler.calibrate transfer",
            "keep_correction": bool(keep), "pairs": pairs}


def calibration_path(gpu: str, directory: Path = CALIBRATION_DIR) -> Path:
    return Path(directory) / f"public_{gpu}.json"


def main(argv: list[str]) -> int:
    options = dict(arg.split("=", 1) for arg in argv if "=" in arg)
    words = [a for a in argv if "=" not in a]
    unknown = sorted(set(options) - {"gpu", "models", "shared_data_dir", "out"}) + [a for a in words if a != "transfer"]
    if unknown:
        print(f"error: unknown arguments {unknown}; use [transfer] gpu=<{','.join(PUBLIC_GPUS)}> "
              "models=<m1,m2,...> shared_data_dir=<dir> out=<dir>", file=sys.stderr)
        return 2
    gpus = options.get("gpu", ",".join(PUBLIC_GPUS)).split(",")
    data_dir = Path(options.get("shared_data_dir", DEFAULT_SHARED_DATA_DIR))
    out = Path(options.get("out", CALIBRATION_DIR))
    try:
        if "transfer" in words:  # after the GPUs' own calibrations: how well each carries over
            path = out / "transfer.json"
            path.write_text(json.dumps(transfer_scores(data_dir, out), indent=1))
            print(f"wrote {path}")
            return 0
        models = [m for m in options["models"].split(",") if m] if "models" in options else None
        for gpu in gpus:  # every GPU's models checked before any file is written
            check_models(data_dir, gpu, models)
        for gpu in gpus:
            calibration = calibrate_gpu(gpu, data_dir, models=models)
            out.mkdir(parents=True, exist_ok=True)
            path = calibration_path(gpu, out)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(calibration, separators=(",", ":")))
            tmp.replace(path)
            print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} KB)")
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
