"""Fit an engine term (`profiler/engine_model.py`) to whole-iteration times a real engine measured.

    python -m profiler.engine_fit          # -> profiler/calibration/engine_sarathi_artifact_a100.json

The published Sarathi-Serve artifact timed whole iterations on Figure 1's setup (Yi-34B, TP-2,
A100-80GB PCIe pairs, its Ray-based engine): one prompt of 128 to 16,384 tokens alone, and decode
batches of 1 to 128 requests at about 1,024 tokens of context (`../shared/data/
artifact_a100_yi34b_tp2/`). What the kernel model (`cost_model=auto` for that setup, with no engine
term) does not explain is the engine's. Candidate forms, each with one attention factor:

    per_request:                a + b R
    per_request+per_token:      a + b R + c T
    decode_steps:               a + s(D)
    decode_steps+per_request:   a + b R + s(D)
    decode_steps+per_token:     a + s(D) + c T

with R the requests in the batch, D its decodes, T its tokens; s(D) is piecewise linear over
log D with one knot per measured decode count, 0 without decodes (the measured decode batches
step up by ~20 ms between 4 and 8 requests, which no smooth term in R follows); all coefficients
>= 0 (non-negative least squares of relative error). The attention factor multiplies the kernel model's prompt attention: the
long prompts show the analytical attention is too fast there; its fitted value becomes the A100's
`efficiency.attention` (divided by it), reported here. The form is chosen by leave-one-out error
over the measured iterations, not assumed; the first batch of the run (the 256-token prompt, a
warm-up) is excluded. `python -m profiler.accuracy source=public` prints the result.

The 1,024-token prompt stays about 7% under its measurement, and no honest term closes that gap.
The artifact measured 2,048 tokens at 1.71x 1,024 tokens, while the kernel model gives 1.96x.
Each prompt row is a single iteration, with no repeats to show its noise. Nothing public supports
a ratio that low. On the public A100 data, the 70B-class models and InternLM-20B at TP 1/2/4 take
1.79-2.04x as long at 2,048 tokens as at 1,024 for every op but attention. Attention only raises
the ratio, since its share doubles. Two kernel-side fixes were checked and rejected:
- The GEMM law, fitted without each of those models (TP 2/4), is on average 1.3% too fast at
  M=1,024 per op (2.0% over a layer's four GEMMs) and 0.5% too fast at M=2,048. Removing that
  bias leaves the row at -5.5%; passing would need +3% at M=1,024 alone. Wave quantisation is
  already one of the law's features.
- FlashAttention wave quantisation (28 heads x 128-row tiles on 108 SMs) makes 1,024 and 2,048
  tokens slower alike. After refitting, 1,024 moves to -5.8% but 2,048 moves to +5.5..6.8%.
"""
from __future__ import annotations

import datetime
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulator.core.batch import BatchShape
from simulator.core.paths import DEFAULT_SHARED_DATA_DIR, REPO_ROOT

from .engine_model import EngineModel, engine_fit_path

ARTIFACT_DIR = "artifact_a100_yi34b_tp2"
ARTIFACT_FILES = ("prefill_batch_times.csv", "decode_batch_times.csv")
ARTIFACT_SOURCE = ("microsoft/sarathi-serve branch osdi-sarathi-serve @ceaa066, osdi-experiments/figure-2/"
                   "{prefill,decode}.csv (Apache-2.0), via ../shared/data/artifact_a100_yi34b_tp2")
DECODE_CONTEXT = 1024  # "decode-only batches ... at about 1,024 tokens of context"
FORMS = ("per_request", "per_request+per_token", "decode_steps", "decode_steps+per_request", "decode_steps+per_token")
NAME = "sarathi_artifact_a100"
REQUIRED = ("batch_num_tokens", "batch_num_decode_tokens", "batch_num_prefill_tokens", "batch_size",
            "batch_execution_time", "Batch Id")


@dataclass
class Iterations:
    """Measured iterations: their shapes, request, decode and token counts, and seconds."""
    kind: list[str]
    shapes: list[BatchShape]
    requests: np.ndarray
    tokens: np.ndarray
    seconds: np.ndarray
    excluded: list[str]

    @property
    def decodes(self) -> np.ndarray:
        return np.where(np.array(self.kind) == "decode", self.requests, 0.0)


def read_iterations(data_dir: Path) -> Iterations:
    """The artifact's measured iterations; every defect of a file is one ValueError line."""
    import pandas as pd

    kinds, shapes, requests, tokens, seconds, excluded = [], [], [], [], [], []
    for name in ARTIFACT_FILES:
        path = Path(data_dir) / ARTIFACT_DIR / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the artifact's iteration times live in "
                                    f"../shared/data/{ARTIFACT_DIR} (set shared_data_dir to the folder holding it)")
        try:
            table = pd.read_csv(path)
        except Exception as error:
            raise ValueError(f"{path}: cannot be read as a CSV ({type(error).__name__}: {error})") from None
        missing = [c for c in REQUIRED if c not in table.columns]
        if missing:
            raise ValueError(f"{path} lacks columns {missing}; expected the artifact's batch-time CSV")
        values = table[list(REQUIRED)].apply(pd.to_numeric, errors="coerce")
        bad = values.isna() | (values < 0) | (values["batch_execution_time"] <= 0).to_numpy()[:, None]
        if bad.any().any():
            row, col = map(int, np.argwhere(bad.to_numpy())[0])
            raise ValueError(f"{path} row {row + 2}: {REQUIRED[col]}={table[REQUIRED[col]].iloc[row]!r} "
                             "is not a valid number (times > 0, counts >= 0)")
        for _, r in values.iterrows():
            p, d, size = int(r["batch_num_prefill_tokens"]), int(r["batch_num_decode_tokens"]), int(r["batch_size"])
            if p and d:
                raise ValueError(f"{path}: a batch mixes {p} prompt and {d} decode tokens; expected prompt-only "
                                 "or decode-only batches")
            if r["Batch Id"] == 0:  # the run's first batch: a warm-up
                excluded.append(f"{name}: {p or d} tokens, batch id 0 (the run's first batch: warm-up)")
                continue
            if p:
                shape = BatchShape(p, 0, size, 0, p, p * (p + 1) // 2)
            else:
                shape = BatchShape(0, d, 0, d * (DECODE_CONTEXT + 1), 0, 0)
            kinds.append("prefill" if p else "decode")
            shapes.append(shape)
            requests.append(size)
            tokens.append(p + d)
            seconds.append(float(r["batch_execution_time"]))
    return Iterations(kinds, shapes, np.array(requests, float), np.array(tokens, float), np.array(seconds), excluded)


def _columns(form: str, requests: np.ndarray, decodes: np.ndarray, tokens: np.ndarray,
             knots: np.ndarray) -> np.ndarray:
    """Design columns of an engine form (without the attention columns)."""
    cols = [np.ones_like(requests)]
    if "per_request" in form:
        cols.append(requests)
    if form.startswith("decode_steps"):  # hat functions over log D: s(D) = sum_k s_k * hat_k(D)
        x, xs = np.log(np.maximum(decodes, 1.0)), np.log(knots)
        for k in range(len(knots)):
            unit = np.zeros(len(knots))
            unit[k] = 1.0
            cols.append(np.where(decodes > 0, np.interp(x, xs, unit), 0.0))
    if form.endswith("per_token"):
        cols.append(tokens)
    return np.stack(cols, axis=1)


def fit_form(form: str, residual: np.ndarray, attention: np.ndarray, requests: np.ndarray, decodes: np.ndarray,
             tokens: np.ndarray, seconds: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """(engine coefficients, attention factor, knots): non-negative least squares of relative
    error of `residual = measured - kernel` by the form's columns plus (factor - 1) x attention."""
    from scipy.optimize import nnls  # only fitting needs scipy

    knots = np.unique(decodes[decodes > 0])
    engine = _columns(form, requests, decodes, tokens, knots)
    design = np.column_stack([engine, attention, -attention]) / seconds[:, None]
    coef, _ = nnls(design, residual / seconds)
    return coef[:engine.shape[1]], 1.0 + coef[-2] - coef[-1], knots


def predict_form(form: str, coef: np.ndarray, factor: float, knots: np.ndarray, kernel: np.ndarray,
                 attention: np.ndarray, requests: np.ndarray, decodes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    return kernel + (factor - 1.0) * attention + _columns(form, requests, decodes, tokens, knots) @ coef


def engine_model_of(form: str, coef: np.ndarray, knots: np.ndarray, label: str) -> EngineModel:
    per_request = float(coef[1]) if "per_request" in form else 0.0
    per_token = float(coef[-1]) if form.endswith("per_token") else 0.0
    if not form.startswith("decode_steps"):
        return EngineModel(NAME, label, float(coef[0]), per_token, per_request)
    steps = coef[1 + ("per_request" in form):][:len(knots)]
    return EngineModel(NAME, label, float(coef[0]), per_token, per_request,
                       tuple(float(k) for k in knots), tuple(float(s) for s in steps))


@dataclass
class EngineFit:
    form: str
    engine: EngineModel
    attention_factor: float
    loo_mape: dict[str, float]
    rows: list[dict[str, Any]]


def fit_engine(it: Iterations, kernel: np.ndarray, attention: np.ndarray, label: str) -> EngineFit:
    """Every form's leave-one-out error, the best form fitted to all iterations, and per-row errors.
    The decode-step forms need decode batches of at least two sizes."""
    residual, decodes = it.seconds - kernel, it.decodes
    forms = [f for f in FORMS if not f.startswith("decode_steps") or len(np.unique(decodes[decodes > 0])) >= 2]
    loo: dict[str, np.ndarray] = {}
    for form in forms:
        pred = np.zeros(len(it.seconds))
        for i in range(len(it.seconds)):
            train, one = np.arange(len(it.seconds)) != i, slice(i, i + 1)
            coef, factor, knots = fit_form(form, residual[train], attention[train], it.requests[train],
                                           decodes[train], it.tokens[train], it.seconds[train])
            pred[i] = predict_form(form, coef, factor, knots, kernel[one], attention[one], it.requests[one],
                                   decodes[one], it.tokens[one])[0]
        loo[form] = pred
    loo_mape = {form: float(np.mean(np.abs(p / it.seconds - 1))) for form, p in loo.items()}
    form = min(forms, key=loo_mape.get)
    coef, factor, knots = fit_form(form, residual, attention, it.requests, decodes, it.tokens, it.seconds)
    fitted = predict_form(form, coef, factor, knots, kernel, attention, it.requests, decodes, it.tokens)
    rows = [{"kind": k, "tokens": int(t), "requests": int(r), "measured_s": float(m), "kernel_s": float(kn),
             "predicted_s": float(f), "error": float(f / m - 1), "loo_error": float(loo[form][i] / m - 1)}
            for i, (k, t, r, m, kn, f) in enumerate(zip(it.kind, it.tokens, it.requests, it.seconds, kernel, fitted))]
    return EngineFit(form, engine_model_of(form, coef, knots, label), factor, loo_mape, rows)


def kernel_times(iterations: Iterations, data_dir: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    """The kernel model's seconds (no engine term) of each iteration, its prompt-attention part,
    and the model: `cost_model=auto` for Yi-34B TP-2 on A100-80GB PCIe."""
    from omegaconf import OmegaConf

    from simulator.core.model_spec import ModelSpec

    from .cost_model import cost_model_for

    conf = REPO_ROOT / "conf"
    model = ModelSpec.from_config(OmegaConf.to_container(OmegaConf.load(conf / "model" / "yi_34b.yaml")))
    hardware = OmegaConf.to_container(OmegaConf.load(conf / "hardware" / "a100_80gb_pcie_nvlink.yaml"))
    cost = cost_model_for(model, hardware, 2, "auto", data_dir=data_dir, engine=EngineModel("none", "none"))
    columns = {k: np.array([getattr(s, k) for s in iterations.shapes], dtype=float) for k in BatchShape.FIELDS}
    ops = cost.breakdown(columns)
    return np.sum(list(ops.values()), axis=0), ops["attn_prefill"], cost


def calibrate(data_dir: Path) -> dict[str, Any]:
    iterations = read_iterations(data_dir)
    kernel, attention, cost = kernel_times(iterations, data_dir)
    label = ("Sarathi-Serve artifact's engine on its A100 host, fitted to its measured iterations "
             "(profiler/calibration/engine_sarathi_artifact_a100.json)")
    fit = fit_engine(iterations, kernel, attention, label)
    e = fit.engine
    efficiency = cost.hardware.efficiency.attention
    return {
        "name": NAME, "label": label, "source": ARTIFACT_SOURCE,
        "created": datetime.date.today().isoformat(), "command": "python -m profiler.engine_fit",
        "kernel_model": cost.label, "rows_used": len(iterations.seconds), "excluded": iterations.excluded,
        "form": fit.form, "loo_mape": fit.loo_mape,
        "term": {"per_iteration_s": e.per_iteration_s, "per_token_s": e.per_token_s, "per_request_s": e.per_request_s,
                 "step_decodes": list(e.step_decodes), "step_seconds": list(e.step_seconds)},
        "attention": {"factor": fit.attention_factor, "efficiency_in_kernel_model": efficiency,
                      "efficiency_fitted": efficiency / fit.attention_factor},
        "rows": fit.rows,
    }


def main(argv: list[str]) -> int:
    options = dict(arg.split("=", 1) for arg in argv if "=" in arg)
    unknown = sorted(set(options) - {"shared_data_dir", "out"}) + [a for a in argv if "=" not in a]
    if unknown:
        print(f"error: unknown arguments {unknown}; use shared_data_dir=<dir> out=<dir>", file=sys.stderr)
        return 2
    try:
        result = calibrate(Path(options.get("shared_data_dir", DEFAULT_SHARED_DATA_DIR)))
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    path = engine_fit_path(NAME, Path(options["out"]) if "out" in options else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(engine_fit_text(result))
    print(f"wrote {path}")
    return 0


def engine_fit_text(result: dict[str, Any]) -> str:
    """The fit as the accuracy command prints it: each measured iteration, predicted vs measured."""
    a = result["attention"]
    lines = [f"engine term {result['name']}: form {result['form']} (leave-one-out MAPE "
             + ", ".join(f"{f} {m:.1%}" for f, m in result["loo_mape"].items()) + ")",
             f"  attention factor {a['factor']:.3f}: efficiency.attention {a['efficiency_in_kernel_model']:g} "
             f"-> {a['efficiency_fitted']:.3g} fits the long prompts",
             f"  excluded: {'; '.join(result['excluded']) or 'none'}",
             f"  {'kind':<8}{'tokens':>7}{'reqs':>6}{'measured ms':>13}{'kernel ms':>11}{'predicted ms':>14}"
             f"{'error':>8}{'LOO':>8}"]
    for r in result["rows"]:
        lines.append(f"  {r['kind']:<8}{r['tokens']:>7}{r['requests']:>6}{r['measured_s'] * 1e3:>13.1f}"
                     f"{r['kernel_s'] * 1e3:>11.1f}{r['predicted_s'] * 1e3:>14.1f}{r['error']:>8.1%}{r['loo_error']:>8.1%}")
    worst = max(abs(r["error"]) for r in result["rows"])
    lines.append(f"  worst in-sample error {worst:.1%} (goal <= 5%)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
