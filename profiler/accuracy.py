"""How well the fitted laws predict what was measured: held-out errors per op, and a plot.

`python -m profiler.accuracy source=public` prints the calibration on public measurements instead
(`profiler/public_accuracy.py`). `python -m profiler.accuracy profiles/<dir> [--html report.html]`
prints, per op of a profile measured with `python -m profiler`, the held-out
(k-fold, out-of-fold) MAPE of the law and of the law with its residual, the chosen model's MAPE,
p90 and worst error, the fitted rates (what the laws say the GPU reaches), whether the targets
(linear layers <= 3 %, attention <= 6 %) are met, and the composition check: whole decoder layers
measured against the sum of their ops' predictions. `--html` also writes a self-contained plotly
page of measured vs held-out predicted times per op.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .fit import (ATTENTION, DECODER_LAYER, GEMM_OPS, LINEAR_OPS, LINEAR_PROBE, SHAPE_COLUMNS, STREAM_OPS,
                  FittedProfile, Profile, linear_shapes, load_fit, read_profile, stream_widths)
from .fitted import LAYER_OPS
from .hardware import HardwareSpec

TARGETS = {**{op: 0.03 for op in LINEAR_OPS}, ATTENTION: 0.06}  # held-out MAPE the issue asks for


def error_table(fit: FittedProfile) -> str:
    lines = [f"{'op':<15} {'points':>6}  {'model':<18} {'law':>7} {'+resid':>7} {'chosen':>7} "
             f"{'p90':>7} {'max':>7}  target"]
    for s in fit.scores:
        target = TARGETS.get(s.op)
        verdict = "" if target is None else f"<= {target:.0%} " + ("met" if s.mape <= target else "MISSED")
        residual = "-" if s.mape_residual is None else f"{s.mape_residual:.2%}"
        lines.append(f"{s.op:<15} {s.points:>6}  {s.family:<18} {s.mape_law:>7.2%} {residual:>7} "
                     f"{s.mape:>7.2%} {s.p90_ape:>7.2%} {s.max_ape:>7.2%}  {verdict}")
    return "\n".join(lines)


def rates_table(fit: FittedProfile) -> str:
    """The fitted laws in readable units: what each says the device reaches, and which share of
    the datasheet peaks of the hardware the profile was measured for that is."""
    hardware = HardwareSpec.from_config(fit.metadata["hardware"])
    lines = [f"fitted rates (datasheet {hardware.name}: {hardware.peak_bf16_tflops:g} TFLOP/s bf16, "
             f"{hardware.mem_bandwidth_gbps:g} GB/s)"]
    for group, law in fit.laws.items():
        parts = [f"fixed {law.fixed_s * 1e6:.2f} us"]
        if law.per_seq_s:
            parts.append(f"{law.per_seq_s * 1e6:.3f} us/sequence")
        for term, r in law.terms.items():
            name = "" if term == "main" else f"{term}: "
            rate = [f"{1 / r.s_per_flop / 1e12:.0f} TFLOP/s ({1 / r.s_per_flop / hardware.peak_flops:.0%})"
                    if r.s_per_flop else "",
                    f"{1 / r.s_per_byte / 1e9:.0f} GB/s ({1 / r.s_per_byte / hardware.mem_bandwidth:.0%})"
                    if r.s_per_byte else "",
                    f"p={r.p:.2f}" if r.s_per_flop and r.s_per_byte else ""]
            parts.append(name + ", ".join(x for x in rate if x))
        lines.append(f"  {group:<15} {law.family:<9} " + "; ".join(parts))
    return "\n".join(lines)


def layer_predictions(fit: FittedProfile, profile: Profile) -> tuple[Any, np.ndarray]:
    """The decoder-layer rows and, for each, the sum of its ops' predictions (all-reduce omitted,
    as the profiler runs one shard with the collectives omitted)."""
    rows = profile.rows(DECODER_LAYER)
    model, tp = profile.model, profile.tp
    shapes = {**{op: {"k_in": s[0], "k_out": s[1]} for op, s in linear_shapes(model, tp).items()},
              **{op: {"width": w} for op, w in stream_widths(model, tp).items()}}
    n = rows["tokens"].to_numpy(dtype=float)
    total = fit.seconds(ATTENTION, {k: rows[k].to_numpy(dtype=float) for k in SHAPE_COLUMNS}, model, tp)
    for op, count in LAYER_OPS.items():
        total = total + count * fit.seconds(op, {"tokens": n, **shapes[op]}, model, tp)
    return rows, total * 1e3


def composition_summary(fit: FittedProfile, profile: Profile) -> str:
    rows, predicted = layer_predictions(fit, profile)
    if not len(rows):
        return "composition: no decoder_layer rows in this profile"
    ape = np.abs(predicted / rows["median_ms"].to_numpy() - 1)
    lines = [f"composition: {len(rows)} whole decoder layers vs the sum of their ops' predictions: "
             f"MAPE {ape.mean():.2%}, worst {ape.max():.2%}"]
    for (_, row), p, e in zip(rows.iterrows(), predicted, ape):
        lines.append(f"  {row['kind']:<14} tokens {int(row['tokens']):>6}  measured {row['median_ms']:9.4f} ms  "
                     f"predicted {p:9.4f} ms  ({e:.1%})")
    return "\n".join(lines)


def report_text(fit: FittedProfile, profile: Profile) -> str:
    m = fit.metadata
    source = "from the cache" if fit.from_cache else "fitted now"
    return "\n\n".join([
        f"profile {fit.directory}: {m['device']} ({m['device_kind']}), {m['date']}, {m['model']['name']} "
        f"TP={m['tp']}; laws {source} (fit took {fit.fit_seconds:.1f} s); errors are held-out (k-fold)",
        error_table(fit), rates_table(fit), composition_summary(fit, profile)])


def write_html(fit: FittedProfile, profile: Profile, path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    table = profile.table.assign(held_out_ms=fit.held_out_ms)
    layer_rows, layer_predicted = layer_predictions(fit, profile)
    # Ops over token counts get curves; attention, the probes and whole layers vary in more than
    # the token count, so they get parity plots (predicted against measured).
    curves = [op for op in GEMM_OPS + STREAM_OPS if op != LINEAR_PROBE and (table["op"] == op).any()]
    parities = {op: (rows["median_ms"], rows["held_out_ms"], rows["kind" if op == ATTENTION else "k_out"])
                for op in (LINEAR_PROBE, ATTENTION) if len(rows := table[table["op"] == op])}
    if len(layer_rows):
        parities[DECODER_LAYER] = (layer_rows["median_ms"], layer_predicted, layer_rows["kind"])
    panels = curves + list(parities)
    scores = {s.op: s for s in fit.scores}
    titles = [f"{op} (held-out MAPE {scores[op].mape:.1%})" if op in scores else f"{op} (sum of its ops)"
              for op in panels]
    cols = 3
    fig = make_subplots(rows=math.ceil(len(panels) / cols), cols=cols, subplot_titles=titles)
    for i, op in enumerate(panels):
        at = dict(row=i // cols + 1, col=i % cols + 1)
        legend = i == 0
        if op in parities:
            measured, predicted, hover = parities[op]
            fig.add_trace(go.Scatter(x=measured, y=predicted, mode="markers", text=hover, name="held-out prediction",
                                     marker=dict(color="firebrick", size=5), showlegend=False), **at)
            ends = [float(min(measured.min(), np.min(predicted))), float(max(measured.max(), np.max(predicted)))]
            fig.add_trace(go.Scatter(x=ends, y=ends, mode="lines", line=dict(color="grey", dash="dot"),
                                     showlegend=False), **at)
            fig.update_xaxes(type="log", title_text="measured ms", **at)
            fig.update_yaxes(type="log", title_text="predicted ms", **at)
            continue
        rows = table[table["op"] == op].sort_values("tokens")
        fig.add_trace(go.Scatter(
            x=rows["tokens"], y=rows["median_ms"], mode="markers", name="measured (median, p10-p90)",
            error_y=dict(type="data", symmetric=False, array=rows["p90_ms"] - rows["median_ms"],
                         arrayminus=rows["median_ms"] - rows["p10_ms"]),
            marker=dict(color="black", size=4), showlegend=legend), **at)
        fig.add_trace(go.Scatter(x=rows["tokens"], y=rows["held_out_ms"], mode="markers",
                                 name="held-out prediction", marker=dict(color="firebrick", symbol="x", size=5),
                                 showlegend=legend), **at)
        fitted = fit.seconds(op, {k: rows[k].to_numpy(dtype=float) for k in SHAPE_COLUMNS},
                             profile.model, profile.tp) * 1e3
        fig.add_trace(go.Scatter(x=rows["tokens"], y=fitted, mode="lines", name="fitted to all points",
                                 line=dict(color="royalblue"), showlegend=legend), **at)
        fig.update_xaxes(type="log", title_text="tokens", **at)
        fig.update_yaxes(type="log", title_text="ms", **at)
    fig.update_layout(height=300 * math.ceil(len(panels) / cols), width=1400,
                      title=f"Profile {fit.directory}: measured vs predicted per operation")
    text = report_text(fit, profile).replace("&", "&amp;").replace("<", "&lt;")
    path.write_text(f"<html><head><meta charset='utf-8'><title>Profile accuracy</title></head><body>"
                    f"<pre>{text}</pre>{fig.to_html(full_html=False, include_plotlyjs=True)}</body></html>")


def main() -> None:
    if any(arg.startswith("source=") for arg in sys.argv[1:]):  # the public-measurement calibration
        from simulator.core.paths import DEFAULT_SHARED_DATA_DIR

        from . import public_accuracy

        try:
            sys.exit(public_accuracy.main(sys.argv[1:], DEFAULT_SHARED_DATA_DIR))
        except (ValueError, FileNotFoundError) as exc:
            raise SystemExit(f"error: {exc}")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile_dir", type=Path)
    parser.add_argument("--html", type=Path, help="also write a self-contained plotly page here")
    parser.add_argument("--cache-dir", type=Path, help="fitted-law cache (default .cache/fits)")
    args = parser.parse_args()
    try:
        fit = load_fit(args.profile_dir, args.cache_dir)
        profile = read_profile(args.profile_dir)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}")
    print(report_text(fit, profile))
    if args.html:
        write_html(fit, profile, args.html)
        print(f"\nwrote {args.html}")


if __name__ == "__main__":
    main()
