"""Sim-vs-real validation on one GPU: `python -m experiments.validate` (docs/validation.md).

Serves one workload for real with each scheduler (`backend.run.run_real_all`), then simulates the
identical runs: the same model override (`real.num_layers`), the same request list (same workload
config and seed), the same tensor parallelism (one GPU runs one rank's shard and spins for each
all-reduce; the cost model prices the same all-reduce from the same table), and the KV block count
each real run measured. Then it compares:

- per iteration: the cost model's time for the shape of every real batch against the batch's
  measured duration (end - start: scheduling, input preparation, forward pass and sampling);
- per scheduler: sim against real for P50 and P99 TBT, P50 and P90 TTFT and the makespan.

It writes `validation.json` (every error, the thresholds, pass/fail per figure, what ran where and
how it was invoked), `iterations.parquet` (one row per real batch: shape, measured, predicted) and
`validation_report.html` next to the run directories, and prints a table. It exits 0 whenever it
ran, thresholds met or not: a validation is a measurement, and the JSON says what missed.
"""
from __future__ import annotations

import copy
import html
import json
import math
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from omegaconf import DictConfig
from plotly.subplots import make_subplots

from profiler.cost_model import ENGINE_OPS, CostModel
from simulator.cli import command, run_command, to_dict
from simulator.core.batch import BatchShape
from simulator.core.paths import REPO_ROOT
from simulator.run import prepare, run_simulation

from .fig1 import RUN_KEYS, run_label, scheduler_config
from .report import (TEMPLATE, RunRef, cdf_section, decode_completion_section, fig_html, html_table,
                     page_header, runs_section, write_page)

# figure -> (summary key, quantile or None); each compared as the relative error of sim vs real.
RUN_FIGURES = {
    "tbt_p50": ("tbt_s", "p50"),
    "tbt_p99": ("tbt_s", "p99"),
    "ttft_p50": ("ttft_s", "p50"),
    "ttft_p90": ("ttft_s", "p90"),
    "makespan": ("makespan_s", None),
}
FIGURE_NAMES = {"iteration_mape": "per-iteration MAPE", "tbt_p50": "P50 TBT", "tbt_p99": "P99 TBT",
                "ttft_p50": "P50 TTFT", "ttft_p90": "P90 TTFT", "makespan": "makespan"}
_SCHEDULER_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


@dataclass
class Pair:
    """One scheduler's real run and the simulation of the same run."""
    scheduler: str
    label: str          # e.g. "sarathi (chunk 1536)"
    real_cfg: dict[str, Any]
    sim_cfg: dict[str, Any]

    @property
    def refs(self) -> tuple[RunRef, RunRef]:
        """(real, sim) as the report draws them: same colour, the real run dashed."""
        return (RunRef(Path(self.real_cfg["output_dir"]), f"{self.label}, real", "", None, "real"),
                RunRef(Path(self.sim_cfg["output_dir"]), f"{self.label}, sim", "", None, "sim"))


# ---------------------------------------------------------------------------------------------
# Errors


def relative_error(sim: float | None, real: float | None) -> float | None:
    """(sim - real) / real; None where either is missing or real is not a positive number."""
    if sim is None or real is None or not math.isfinite(sim) or not math.isfinite(real) or real <= 0:
        return None
    return (sim - real) / real


def iteration_errors(measured: np.ndarray, predicted: np.ndarray) -> dict[str, float | int]:
    """How well per-batch predictions match measured batch times (seconds, same order)."""
    measured, predicted = np.asarray(measured, dtype=float), np.asarray(predicted, dtype=float)
    if measured.shape != predicted.shape or not len(measured):
        raise ValueError(f"{len(measured)} measured vs {len(predicted)} predicted batch times; "
                         "need the same, non-zero count")
    if (measured <= 0).any():
        raise ValueError("a measured batch time is <= 0 s: the real run's batches table is broken")
    signed = (predicted - measured) / measured
    absolute = np.abs(signed)
    return {"count": int(len(measured)), "mape": float(absolute.mean()),
            "median_ape": float(np.median(absolute)), "p90_ape": float(np.quantile(absolute, 0.9)),
            "bias": float(signed.mean())}


def judge(error: float | None, threshold: float) -> dict[str, Any]:
    """A figure's verdict: passes when its error is known and within ±threshold."""
    return {"error": error, "threshold": threshold, "pass": error is not None and abs(error) <= threshold}


def run_figures(real: Mapping[str, Any], sim: Mapping[str, Any], threshold: float) -> dict[str, dict]:
    """Each run-level figure of two summaries: real value, sim value, relative error, verdict."""
    out = {}
    for figure, (key, quantile) in RUN_FIGURES.items():
        r = real[key] if quantile is None else real[key][quantile]
        s = sim[key] if quantile is None else sim[key][quantile]
        out[figure] = {"real": r, "sim": s, **judge(relative_error(s, r), threshold)}
    return out


# ---------------------------------------------------------------------------------------------
# Planning and checks (everything that can be wrong is raised before the GPU does any work)


def plan_pairs(config: Mapping[str, Any]) -> list[Pair]:
    val, real = config["validate"], config["real"]
    root = Path(config["output_dir"])
    workload = copy.deepcopy(config["workload"])
    workload.update(num_requests=int(val["num_requests"]), max_tokens=int(val["max_tokens"]))
    workload["arrival"].update(val["arrival"])
    model = copy.deepcopy(config["model"])
    layers = real.get("num_layers")
    if layers is not None:
        # The simulated model is the one the GPU runs, named as the real summary names it.
        model.update(name=f"{model['name']} ({layers} of {model['num_layers']} layers)", num_layers=int(layers))
    if not val["schedulers"]:
        raise ValueError("validate.schedulers is empty; name at least one, e.g. validate.schedulers={vllm: {}}")
    pairs = []
    for name, overrides in val["schedulers"].items():
        scheduler = scheduler_config(name, overrides, int(val["max_tokens"]), "validate.schedulers")
        base = {k: copy.deepcopy(config[k]) for k in RUN_KEYS}
        base.update(scheduler=scheduler, workload=copy.deepcopy(workload))
        real_cfg = {**copy.deepcopy(base), "output_dir": str(root / f"real_{name}")}
        sim_cfg = {**copy.deepcopy(base), "model": copy.deepcopy(model), "output_dir": str(root / f"sim_{name}")}
        label = run_label(scheduler)
        pairs.append(Pair(name, label, real_cfg, sim_cfg))
    return pairs


def thresholds(config: Mapping[str, Any]) -> dict[str, float]:
    given = config["validate"]["thresholds"]
    for key in ("iteration_mape", "relative_error"):
        if not isinstance(given.get(key), (int, float)) or given[key] <= 0:
            raise ValueError(f"validate.thresholds.{key}={given.get(key)!r} must be a positive "
                             "fraction, e.g. 0.05 for 5%")
    return {"iteration_mape": float(given["iteration_mape"]), "relative_error": float(given["relative_error"])}


def real_section(config: Mapping[str, Any], argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`config.real`, checked, with its device resolved, and the hardware config of that device
    (on a GPU: the GPU's own config, unless `argv` chose another one, which is refused)."""
    real = dict(config["real"])
    if real.get("emulation") == "omit":
        raise ValueError("real.emulation=omit drops the all-reduces the simulation prices; "
                         "use real.emulation=modelled")
    layers, total = real.get("num_layers"), int(config["model"]["num_layers"])
    if layers is not None and not (isinstance(layers, int) and 1 <= layers <= total):
        raise ValueError(f"real.num_layers={layers} must be an integer from 1 to model.num_layers={total}; "
                         "lower it, or set null for the whole model")
    real["device"] = resolve_device(str(real.get("device", "auto")), config["hardware"]["name"])
    from backend.gpus import hardware_for_device

    return real, hardware_for_device(real["device"], config["hardware"], argv[1:])


def resolve_device(device: str, hardware_name: str) -> str:
    """The device the real runs use. A CPU run must be asked for: on a machine without a GPU,
    `auto` is an error, not a silent fallback, since numbers measured on a CPU validate nothing
    about the hardware the simulation models."""
    try:
        import torch
    except ModuleNotFoundError:
        raise ValueError("the validation runs the real backend, which needs torch: "
                         "pip install -e '.[cpu]' here, or run it where torch is installed") from None
    has_gpu = torch.cuda.is_available()
    if device == "auto":
        if not has_gpu:
            raise ValueError(f"real.device=auto found no GPU, and the validation is of {hardware_name}: "
                             "run it on that GPU, or set real.device=cpu for a CPU smoke test")
        device = "cuda"
    if device == "cpu":
        return device
    if not device.startswith("cuda"):
        raise ValueError(f"real.device={device!r} is unknown; use auto, cuda or cpu")
    if not has_gpu:
        raise ValueError(f"real.device={device} but torch sees no GPU; run on a GPU machine or set real.device=cpu")
    return device


# ---------------------------------------------------------------------------------------------
# The validation


def predict_iterations(cost_model: CostModel, batches: pd.DataFrame) -> pd.DataFrame:
    """The cost model's time for every batch of a real run, next to what was measured."""
    columns = {k: batches[k].to_numpy() for k in BatchShape.FIELDS}
    ops = cost_model.breakdown(columns)
    predicted = np.sum(list(ops.values()), axis=0)
    out = batches[["batch_id", "num_prefill_tokens", "num_decode_tokens", "num_prefills"]].copy()
    out["measured_s"] = (batches["end"] - batches["start"]).to_numpy(float)
    out["predicted_s"] = predicted
    out["relative_error"] = (out["predicted_s"] - out["measured_s"]) / out["measured_s"]
    # The split that says where a miss comes from: the forward pass (timed on the device) against
    # the prediction less its engine term (CPU time), and the measured CPU time against that term.
    overhead = np.broadcast_to(sum(ops.get(op, 0.0) for op in ENGINE_OPS), predicted.shape)
    out["measured_forward_s"] = batches["gpu_time"].to_numpy(float)
    out["predicted_forward_s"] = predicted - overhead
    out["measured_cpu_s"] = batches["cpu_time"].to_numpy(float)
    out["predicted_cpu_s"] = overhead
    return out


def compare(pair: Pair, cost_model: CostModel, real: Mapping[str, Any], sim: Mapping[str, Any],
            limits: Mapping[str, float]) -> tuple[dict[str, Any], pd.DataFrame]:
    """One scheduler's errors and verdicts, and its per-iteration table."""
    batches = pd.read_parquet(Path(pair.real_cfg["output_dir"]) / "batches.parquet")
    table = predict_iterations(cost_model, batches)
    table.insert(0, "scheduler", pair.scheduler)
    stats = iteration_errors(table["measured_s"], table["predicted_s"])
    forward = iteration_errors(table["measured_forward_s"], table["predicted_forward_s"])
    stats.update(forward_mape=forward["mape"], forward_bias=forward["bias"],
                 measured_cpu_median_s=float(table["measured_cpu_s"].median()),
                 predicted_cpu_s=float(table["predicted_cpu_s"].median()))
    figures = {"iteration_mape": judge(stats["mape"], limits["iteration_mape"]),
               **run_figures(real, sim, limits["relative_error"])}
    result = {"label": pair.label, "real_dir": pair.real_cfg["output_dir"], "sim_dir": pair.sim_cfg["output_dir"],
              "kv_cache_blocks": real["kv_cache_blocks"], "kv_cache_note": real["kv_cache_note"],
              "batches": {"real": real["num_batches"], "sim": sim["num_batches"]},
              "iterations": stats, "figures": figures}
    return result, table


def run_validation(config: Mapping[str, Any], argv: list[str], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run everything, write the outputs; returns what validation.json holds."""
    limits = thresholds(config)
    real, hardware = real_section(config, argv)
    if hardware != config["hardware"]:
        log(f"hardware config: {hardware['name']} (the GPU's), not {config['hardware']['name']}")
        config = {**config, "hardware": hardware}
    pairs = plan_pairs(config)
    # Build every simulation's pieces now, so a bad cost model or scheduler fails before the GPU works.
    cost_models = [prepare(p.sim_cfg).cost_model for p in pairs]
    from backend.run import run_real_all  # imports torch: only after the checks above

    started = time.perf_counter()
    real_summaries = run_real_all([p.real_cfg for p in pairs], {**config, "real": real}, log=log)
    real_wall = time.perf_counter() - started
    sim_summaries = []
    for pair, summary in zip(pairs, real_summaries):
        pair.sim_cfg["engine"]["num_blocks"] = summary["kv_cache_blocks"]  # the cache the GPU had
        sim_summaries.append(run_simulation(pair.sim_cfg, pair.sim_cfg["output_dir"], log=log))

    schedulers, tables = {}, []
    for pair, cost_model, real_s, sim_s in zip(pairs, cost_models, real_summaries, sim_summaries):
        schedulers[pair.scheduler], table = compare(pair, cost_model, real_s, sim_s, limits)
        tables.append(table)

    out_dir = Path(config["output_dir"])
    iterations = pd.concat(tables, ignore_index=True)
    iterations.to_parquet(out_dir / "iterations.parquet", index=False)
    first_real, first_sim = real_summaries[0], sim_summaries[0]
    misses = [f"{name} {FIGURE_NAMES[f]}" for name, s in schedulers.items()
              for f, v in s["figures"].items() if not v["pass"]]
    result = {
        "pass": not misses,
        "misses": misses,
        "thresholds": limits,
        "schedulers": schedulers,
        "iterations": iteration_errors(iterations["measured_s"], iterations["predicted_s"]),
        "device": first_real["device"],
        "executor": first_real["executor"],
        "timing": first_real.get("timing"),    # what gpu_time and cpu_time measure
        "gpu_spin": first_real.get("gpu_spin"),  # the spin rate behind the emulated all-reduce and the timer lead
        "hardware": first_real["hardware"],
        "model": first_real["model"],
        "model_override": {"num_layers": config["real"].get("num_layers"),
                           "of": config["model"]["num_layers"]},
        "tp": first_real["tp"],
        "cost_model": first_sim["cost_model"],
        "workload": first_real["workload"],
        "versions": _versions(first_real["versions"], config["validate"].get("git_commit")),
        "date": date.today().isoformat(),
        "command": "python -m experiments.validate " + shlex.join(argv[1:]),
        "argv": list(argv),
        "wall_s": {"real": real_wall, "total": time.perf_counter() - started},
    }
    (out_dir / "validation.json").write_text(json.dumps(_finite(result), indent=2) + "\n")
    write_validation_report(out_dir / "validation_report.html", result, pairs, iterations)
    return result


def _versions(real: Mapping[str, Any], git_commit: str | None) -> dict[str, Any]:
    """What measured and simulated: the real run's torch/CUDA/Python, Triton, and this code's
    commit (`validate.git_commit`, else asked of git here)."""
    out = dict(real)
    try:
        out["triton"] = metadata.version("triton")
    except metadata.PackageNotFoundError:
        out["triton"] = None
    out["code"] = str(git_commit) if git_commit else _git_describe()  # hydra reads "1234567" as an int
    out["platform"] = platform.platform()
    return out


def _git_describe() -> str | None:
    """The checkout's commit (+ "-dirty"); None where there is no git or no .git (the device's
    copy of the working tree has none: pass validate.git_commit there)."""
    try:
        git = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True)
    except OSError:
        return None
    return git.stdout.strip() if git.returncode == 0 else None


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Output: the table on stdout and the page


ERROR_COLUMNS = ["scheduler", "figure", "real (s)", "sim (s)", "error", "threshold", "verdict"]


def error_rows(result: Mapping[str, Any]) -> list[list[str]]:
    """One row of text per figure, in ERROR_COLUMNS' order."""
    rows = []
    for s in result["schedulers"].values():
        for figure, v in s["figures"].items():
            # A MAPE is unsigned; a relative error's sign says whether the simulation is slower.
            sign = "+" if "real" in v else ""
            error = "n/a" if v["error"] is None else format(v["error"], f"{sign}.1%")
            rows.append([s["label"], FIGURE_NAMES[figure], _number(v.get("real")), _number(v.get("sim")),
                         error, f"±{v['threshold']:.0%}", "pass" if v["pass"] else "MISS"])
    return rows


def format_table(result: Mapping[str, Any]) -> str:
    header = f"{'scheduler':<22} {'figure':<19} {'real (s)':>9} {'sim (s)':>9} {'error':>8} {'limit':>6}  verdict"
    lines = [header]
    for label, figure, real, sim, error, limit, verdict in error_rows(result):
        lines.append(f"{label:<22} {figure:<19} {real:>9} {sim:>9} {error:>8} {limit:>6}  {verdict}")
    if result["misses"]:
        lines.append(f"MISSED their threshold: {', '.join(result['misses'])}")
    else:
        lines.append("every figure is within its threshold")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def write_validation_report(out_path: Path, result: Mapping[str, Any], pairs: list[Pair],
                            iterations: pd.DataFrame) -> Path:
    refs = [ref for pair in pairs for ref in pair.refs]
    verdict = ("every figure within its threshold" if result["pass"]
               else "missed: " + ", ".join(result["misses"]))
    notes = [
        f"Measured on {result['device']} ({result['executor']}), {result['date']}; hardware config "
        f"{result['hardware']}.",
        f"Model {result['model']}, tensor parallel {result['tp']}; simulated with the same layers, "
        "requests, all-reduce model and KV block count.",
        f"Cost model: {result['cost_model']}.",
        f"Workload: {result['workload']}.",
        f"Versions: {json.dumps(result['versions'])}.",
        f"Command: {result['command']}",
    ]
    sections = [
        page_header("Sim-vs-real validation", notes),
        f"<p class='headline'>{html.escape(verdict)}</p>",
        "<h2>Errors</h2>" + html_table(ERROR_COLUMNS, error_rows(result)),
        "<h2>Per-iteration errors</h2>" + _iteration_table(result),
        "<h2>Runs</h2>" + runs_section(refs),
        "<h2>Decode tokens completed over time</h2>" + decode_completion_section(refs),
        "<h2>TTFT distribution</h2>" + cdf_section(refs, "ttft"),
        "<h2>TBT distribution</h2>" + cdf_section(refs, "tbt"),
        "<h2>Per iteration: predicted vs measured</h2>" + _prediction_scatter(iterations, pairs),
        "<h2>Per-iteration error vs batch composition</h2>" + _error_vs_composition(iterations, pairs),
    ]
    return write_page(out_path, "Sim-vs-real validation", sections)


def _iteration_table(result: Mapping[str, Any]) -> str:
    """Per scheduler and over all batches; the forward-pass and CPU columns say where a miss comes
    from (the device's work, or the per-iteration CPU overhead the cost model assumes)."""
    columns = ["scheduler", "batches", "MAPE", "median APE", "P90 APE", "mean signed error",
               "forward-pass MAPE", "measured CPU time, median (ms)", "modelled CPU overhead (ms)"]
    rows = []
    for s in result["schedulers"].values():
        it = s["iterations"]
        rows.append([s["label"], it["count"], f"{it['mape']:.1%}", f"{it['median_ape']:.1%}",
                     f"{it['p90_ape']:.1%}", f"{it['bias']:+.1%}", f"{it['forward_mape']:.1%}",
                     f"{it['measured_cpu_median_s'] * 1e3:.3g}", f"{it['predicted_cpu_s'] * 1e3:.3g}"])
    it = result["iterations"]
    rows.append(["all", it["count"], f"{it['mape']:.1%}", f"{it['median_ape']:.1%}", f"{it['p90_ape']:.1%}",
                 f"{it['bias']:+.1%}", "", "", ""])
    return html_table(columns, rows)


def _prediction_scatter(iterations: pd.DataFrame, pairs: list[Pair]) -> str:
    fig = go.Figure()
    for i, pair in enumerate(pairs):
        mine = iterations[iterations["scheduler"] == pair.scheduler]
        fig.add_trace(go.Scattergl(
            x=mine["measured_s"] * 1e3, y=mine["predicted_s"] * 1e3, mode="markers", name=pair.label,
            marker=dict(size=4, opacity=0.6, color=_SCHEDULER_COLORS[i % len(_SCHEDULER_COLORS)]),
            customdata=mine[["num_prefill_tokens", "num_decode_tokens"]].to_numpy(),
            hovertemplate="measured %{x:.2f} ms<br>predicted %{y:.2f} ms<br>"
                          "%{customdata[0]} prompt + %{customdata[1]} decode tokens"))
    low = float(min(iterations["measured_s"].min(), iterations["predicted_s"].min())) * 1e3
    high = float(max(iterations["measured_s"].max(), iterations["predicted_s"].max())) * 1e3
    fig.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", name="predicted = measured",
                             line=dict(color="#888", dash="dot")))
    # Batch times span a decode's milliseconds to a long prompt's tenths of a second: log axes.
    fig.update_xaxes(title_text="measured batch time (ms, log scale)", type="log")
    fig.update_yaxes(title_text="predicted batch time (ms, log scale)", type="log")
    fig.update_layout(template=TEMPLATE, height=520, legend_title_text="scheduler")
    return fig_html(fig)


def _error_vs_composition(iterations: pd.DataFrame, pairs: list[Pair]) -> str:
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True,
                        subplot_titles=("vs prompt tokens in the batch", "vs decode tokens in the batch"))
    for i, pair in enumerate(pairs):
        mine = iterations[iterations["scheduler"] == pair.scheduler]
        color = _SCHEDULER_COLORS[i % len(_SCHEDULER_COLORS)]
        for col, x in enumerate(("num_prefill_tokens", "num_decode_tokens"), start=1):
            fig.add_trace(go.Scattergl(x=mine[x], y=mine["relative_error"] * 100, mode="markers",
                                       name=pair.label, legendgroup=pair.label, showlegend=col == 1,
                                       marker=dict(size=4, opacity=0.6, color=color)),
                          row=1, col=col)
    fig.update_xaxes(title_text="prompt tokens", row=1, col=1)
    fig.update_xaxes(title_text="decode tokens", row=1, col=2)
    fig.update_yaxes(title_text="(predicted - measured) / measured (%)", row=1, col=1)
    fig.update_layout(template=TEMPLATE, height=450, legend_title_text="scheduler")
    return fig_html(fig)


@command("validate")
def main(cfg: DictConfig) -> None:
    config = to_dict(cfg)
    result = run_validation(config, sys.argv)
    print(format_table(result))
    print(f"report: {Path(config['output_dir']) / 'validation_report.html'}")
    print(f"errors and pass/fail: {Path(config['output_dir']) / 'validation.json'}")


if __name__ == "__main__":
    run_command(main)
