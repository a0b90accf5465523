"""`python -m profiler.accuracy source=public [gpu=a100,h100,a40] [html=accuracy_public.html]`

How well the committed public-measurement calibration predicts: per GPU and op, the
leave-one-model-out error (the law fitted without a model, predicting it: how a never-measured model
such as Yi-34B is priced) below and from 64 tokens, and the in-sample error, against the goals;
the transfer of each GPU's fit to the others; and the engine term fitted to the artifact's whole
iterations. Everything is read from `profiler/calibration/`, so it prints without `../shared`;
the HTML page adds predicted-vs-measured points when `../shared/data` is there.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .calibrate import CALIBRATION_DIR, GEMM_GROUP, calibration_path, group_of, law_seconds, row_features
from .cross_model import ShapeLaw
from .engine_fit import NAME as ENGINE_NAME
from .engine_fit import engine_fit_text
from .engine_model import engine_fit_path
from .public_profiles import PUBLIC_GPUS, read_public

GOALS = {"linear_large": 0.05, "linear_small": 0.08, "elementwise": 0.10, "in_sample": 0.03}


def _pct(value: float | None) -> str:
    return "    -" if value is None else f"{value:6.1%}"


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "MISSED")


def _chosen_cv(cv: dict[str, Any]) -> float:
    """The token-fold CV error of what a one-model group kept (`profiler.calibrate.choose_leaf_size`)."""
    return cv["min_samples_leaf"][str(cv["chosen_min_samples_leaf"])] if cv["correction"] else cv["roofline"]


YARDSTICK_NOTE = ("best other: the held-out curve's most similar curve of another model, rescaled per token range\n"
                  "  with the held-out curve's own times (profiler.calibrate.best_other_model_error): a goal below\n"
                  "  it asks for more than the public measurements hold")


def gpu_table(c: dict[str, Any]) -> str:
    lines = [f"{c['name']} ({c['gpu']}): {c['rows']} rows, models {', '.join(c['models'])}, TP {c['tp']}; "
             f"fitted {c['created']} by `{c['command']}`",
             f"  {'op':<13}{'points':>7}{'held-out <64':>14}{'>=64':>8}{'in-sample':>11}{'best other <64':>16}{'>=64':>8}"
             "  goals (held-out; in-sample <= 3%)"]
    for s in c["scores"]:
        linear = s["op"] in GEMM_GROUP
        small, large, ins = s["held_out_mape_small"], s["held_out_mape_large"], s["in_sample_mape"]
        other = (s.get("best_other_model_mape_small"), s.get("best_other_model_mape_large"))
        if large is None:
            cv = c["selection"].get(s["group"], {}).get("token_cv")
            cv_text = f"token-fold CV {_chosen_cv(cv):.1%}; " if cv else ""
            goal = f"one model, no held-out model; {cv_text}in-sample {_verdict(ins <= GOALS['in_sample'])}"
        elif linear:
            goal = (f"<=8% {_verdict(small <= GOALS['linear_small'])}, <=5% {_verdict(large <= GOALS['linear_large'])}"
                    f", in-sample {_verdict(ins <= GOALS['in_sample'])}")
        else:
            held = np.mean([v for v in (small, large) if v is not None])
            goal = f"<=10% {_verdict(held <= GOALS['elementwise'])}, in-sample {_verdict(ins <= GOALS['in_sample'])}"
        lines.append(f"  {s['op']:<13}{s['points']:>7}{_pct(small):>14}{_pct(large):>8}{_pct(ins):>11}"
                     f"{_pct(other[0]):>16}{_pct(other[1]):>8}  {goal}")
    for group, sel in c["selection"].items():
        held = sel["held_out_mape"]
        if held["roofline"] is not None:
            lines.append(f"  law {group:<10} held-out MAPE (mean of <64, >=64): roofline alone {held['roofline']:.1%}, "
                         f"with the learned correction {held['roofline+correction']:.1%} -> correction "
                         f"{'kept' if sel['correction'] else 'dropped'}")
        elif sel.get("token_cv"):
            cv = sel["token_cv"]
            leaves = ", ".join(f"{leaf} {v:.1%}" for leaf, v in cv["min_samples_leaf"].items())
            lines.append(f"  law {group:<10} one model, {cv['folds']}-fold CV over token counts, MAPE: roofline alone "
                         f"{cv['roofline']:.1%}, with the correction by min leaf size {leaves} -> "
                         + (f"leaf {cv['chosen_min_samples_leaf']}" if sel["correction"] else "correction dropped"))
    return "\n".join(lines)


def transfer_table(t: dict[str, Any]) -> str:
    lines = [f"transfer (each GPU's fit scaled by datasheet ratios to another, against its measurements; "
             f"`{t['command']}`): the source's learned correction is {'kept' if t['keep_correction'] else 'dropped'}",
             f"  {'source -> target':<18}{'compute x':>10}{'memory x':>10}{'roofline only':>15}{'with correction':>17}"
             f"{'linear':>8}{'elementwise':>12}"]
    for p in t["pairs"]:
        chosen = p["with_correction" if t["keep_correction"] else "roofline_only"]
        lines.append(f"  {p['source'] + ' -> ' + p['target']:<18}{p['compute_scale']:>10.3g}{p['memory_scale']:>10.3g}"
                     f"{p['roofline_only']['all']:>15.1%}{p['with_correction']['all']:>17.1%}"
                     f"{chosen['linear']:>8.1%}{chosen['elementwise']:>12.1%}")
    return "\n".join(lines)


def load(directory: Path, gpus: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any] | None]:
    calibrations = []
    for gpu in gpus:
        path = calibration_path(gpu, directory)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; make it with `python -m profiler.calibrate gpu={gpu}`")
        calibrations.append(json.loads(path.read_text()))
    transfer = directory / "transfer.json"
    engine = engine_fit_path(ENGINE_NAME, directory)
    return (calibrations, json.loads(transfer.read_text()) if transfer.is_file() else None,
            json.loads(engine.read_text()) if engine.is_file() else None)


def report_text(directory: Path, gpus: list[str]) -> str:
    calibrations, transfer, engine = load(directory, gpus)
    parts = [gpu_table(c) for c in calibrations] + [YARDSTICK_NOTE]
    parts.append(transfer_table(transfer) if transfer else "transfer: not measured (`python -m profiler.calibrate transfer`)")
    parts.append(engine_fit_text(engine) if engine else "engine term: not fitted (`python -m profiler.engine_fit`)")
    return "\n\n".join(parts)


def write_html(path: Path, directory: Path, gpus: list[str], data_dir: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    calibrations, _, _ = load(directory, gpus)
    ops = list(dict.fromkeys(s["op"] for c in calibrations for s in c["scores"]))
    cols = 3
    rows = math.ceil(len(ops) / cols)
    fig = make_subplots(rows=2 * rows, cols=cols, vertical_spacing=0.05,
                        subplot_titles=[f"{op}: predicted vs measured" for op in ops] + [""] * (rows * cols - len(ops))
                        + [f"{op}: held-out error vs tokens" for op in ops])
    colors = dict(zip(PUBLIC_GPUS, ("royalblue", "firebrick", "seagreen")))
    have_data = (Path(data_dir) / "public_profiles").is_dir()
    for c in calibrations:
        gpu, laws = c["gpu"], {k: ShapeLaw.from_json(v) for k, v in c["laws"].items()}
        table = read_public(data_dir, gpu) if have_data else None
        for i, op in enumerate(ops):
            at = dict(row=i // cols + 1, col=i % cols + 1)
            if table is not None and (table["op"] == op).any():
                mine = table[table["op"] == op].reset_index(drop=True)
                predicted = law_seconds(laws[group_of(op)], row_features(mine, PUBLIC_GPUS[gpu])) * 1e3
                fig.add_trace(go.Scattergl(x=mine["median_ms"], y=predicted, mode="markers", name=c["name"],
                                           legendgroup=gpu, showlegend=i == 0, text=mine["model"],
                                           marker=dict(color=colors[gpu], size=3, opacity=0.5)), **at)
                fig.update_xaxes(type="log", title_text="measured ms", **at)
                fig.update_yaxes(type="log", title_text="predicted ms", **at)
            score = next((s for s in c["scores"] if s["op"] == op), None)
            if score and score.get("held_out_by_tokens"):
                bins = [b for b, v in score["held_out_by_tokens"].items() if v is not None]
                at = dict(row=rows + i // cols + 1, col=i % cols + 1)
                fig.add_trace(go.Scatter(x=bins, y=[100 * score["held_out_by_tokens"][b] for b in bins],
                                         mode="lines+markers", name=c["name"], legendgroup=gpu, showlegend=False,
                                         line=dict(color=colors[gpu])), **at)
                fig.update_xaxes(title_text="tokens", type="category", **at)
                fig.update_yaxes(title_text="held-out MAPE %", rangemode="tozero", **at)
    fig.update_layout(height=330 * 2 * rows, width=1400, margin=dict(t=60),
                      title="Public-measurement calibration: predicted vs measured (fit to all models), "
                            "and leave-one-model-out error against token count")
    note = "" if have_data else "<p>Measured points need ../shared/data/public_profiles; errors come from the committed calibration.</p>"
    text = report_text(directory, gpus).replace("&", "&amp;").replace("<", "&lt;")
    path.write_text(f"<html><head><meta charset='utf-8'><title>Calibration accuracy</title></head><body>"
                    f"<pre style='white-space: pre-wrap'>{text}</pre>{note}{fig.to_html(full_html=False, include_plotlyjs=True)}</body></html>")


def main(argv: list[str], data_dir: Path) -> int:
    options = dict(arg.split("=", 1) for arg in argv if "=" in arg)
    unknown = sorted(set(options) - {"source", "gpu", "html", "calibration_dir"}) + [a for a in argv if "=" not in a]
    if unknown:
        raise ValueError(f"unknown arguments {unknown}; use source=public [gpu=a100,h100,a40] [html=<file>]")
    if options.get("source") != "public":
        raise ValueError(f"source={options.get('source')!r}: only `public` (or give a profile directory instead)")
    gpus = options.get("gpu", ",".join(PUBLIC_GPUS)).split(",")
    bad = [g for g in gpus if g not in PUBLIC_GPUS]
    if bad:
        raise ValueError(f"gpu={','.join(bad)} has no public calibration; choose from {','.join(PUBLIC_GPUS)}")
    directory = Path(options.get("calibration_dir", CALIBRATION_DIR))
    print(report_text(directory, gpus))
    if "html" in options:
        write_html(Path(options["html"]), directory, gpus, data_dir)
        print(f"\nwrote {options['html']}")
    return 0
