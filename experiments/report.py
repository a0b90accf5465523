"""HTML reports of finished runs: the Figure 1 page and a hydra-multirun comparison page.

Both pages, and the validation page built from the sections and page-assembly helpers here, are
single files that open offline: plotly.js is inlined once in the page head and every figure is a
bare `<div>` that calls it. Plotted series are thinned to a fixed number of points (CDFs by
quantiles, step curves and batch timelines by time bins), so a 10,000-request run gives a page of
the same order of size as a 128-request one.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

RUN_FILES = ("summary.json", "requests.csv", "tokens.parquet", "batches.parquet",
             "decode_completion_time_series.csv")
# Under compat: reference these come from the artifact's files, as its notebooks read them.
ARTIFACT_FILES = {"decode_completion_time_series.csv": "replica_0/plots/decode_completion_time_series.csv",
                  "tbt_sketch": "replica_0/plots/decode_token_execution_plus_preemption_time.csv"}
STALL_REPORT_S = 1.0  # prompt-only stretches at least this long are counted in the 1a headline
MAX_CDF_POINTS = 5_000
MAX_STEP_POINTS = 5_000
MAX_TIMELINE_BATCHES = 20_000
KV_BOUND_PANEL = "1a-kv"  # the 1a burst with longer prompts, so that it overflows the KV cache
PANELS = ("1a", KV_BOUND_PANEL, "1b", "")
_GROUP_ORDER = {"1a": 0, KV_BOUND_PANEL: 1, "1b": 2, "": 3}
MODES = ("sim", "real")

# Colours follow the label base, so "sarathi" and "sarathi, real" share one; the mode sets the dash.
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_PROMPT_COLOR, _DECODE_COLOR = "#ff7f0e", "#1f77b4"
_MODE_SUFFIX = re.compile(r"[\s,;:\-(\[]*\b(real|sim)\b[)\]]?\s*$", re.IGNORECASE)
TEMPLATE = "plotly_white"


@dataclass(frozen=True)
class RunRef:
    run_dir: Path
    label: str         # legend name, e.g. "vllm", "sarathi (chunk 1536)", "sarathi, real"
    panel: str         # "1a" (static burst) | "1a-kv" (KV-bound burst) | "1b" (Poisson QPS sweep) | ""
    qps: float | None  # the 1b group the run belongs to
    mode: str          # "sim" | "real"


@dataclass(frozen=True)
class _Run:
    """A checked RunRef with its summary and how it is drawn."""
    ref: RunRef
    summary: dict[str, Any]
    color: str

    @property
    def dash(self) -> str:
        return "dash" if self.ref.mode == "real" else "solid"

    @property
    def group(self) -> str:
        """Runs compared in one subplot: the 1a burst, one 1b QPS, or the free-form runs."""
        if self.ref.panel == "1b":
            return f"1b, QPS {self.ref.qps:g}"
        return {"1a": "1a (static burst)", KV_BOUND_PANEL: "1a, KV-bound burst"}.get(self.ref.panel, "other runs")

    @property
    def title(self) -> str:
        return f"{self.ref.label} [{self.group}]"

    @property
    def compat(self) -> str:
        return self.summary.get("compat", "corrected")

    def read(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        path = Path(self.ref.run_dir) / (ARTIFACT_FILES.get(name, name) if self.compat == "reference" else name)
        if name.endswith(".parquet"):
            return pd.read_parquet(path, columns=columns)
        return pd.read_csv(path, usecols=columns)


# ---------------------------------------------------------------------------------------------
# Figure 1 report


def write_fig1_report(runs: list[RunRef], out_path: Path, title: str, notes: list[str]) -> Path:
    """Write the Figure 1 page (header and table, 1a, 1b, CDFs, batch timelines) to `out_path`."""
    loaded = _load_runs(runs)
    sections = [
        page_header(title, notes),
        "<h2>Runs</h2>" + _runs_table(loaded) + _config_details(loaded),
        _figure_1a(loaded),
        _figure_1b(loaded),
        "<h2>TTFT distribution</h2>" + _cdf_figure(loaded, "ttft"),
        "<h2>TBT distribution</h2>" + _cdf_figure(loaded, "tbt"),
        "<h2>Batch timeline</h2>" + _timeline_figure(loaded),
    ]
    return write_page(Path(out_path), title, sections)


def _load_runs(refs: list[RunRef]) -> list[_Run]:
    if not refs:
        raise ValueError("no runs to report")
    seen: set[tuple[str, float | None, str]] = set()
    colors: dict[str, str] = {}
    runs = []
    for ref in refs:
        _check_ref(ref)
        key = (ref.panel, ref.qps, ref.label)
        if key in seen:  # would draw two bars on one spot and two same-named curves
            raise ValueError(f"two runs labelled {ref.label!r} in panel {ref.panel!r} at QPS {ref.qps}")
        seen.add(key)
        summary = _read_summary(Path(ref.run_dir), ["summary.json"])
        artifact = summary.get("compat") == "reference"
        _read_summary(Path(ref.run_dir), [ARTIFACT_FILES.get(f, f) if artifact else f for f in RUN_FILES])
        if summary.get("mode") != ref.mode:
            raise ValueError(f"{ref.run_dir}: summary.json says mode {summary.get('mode')!r}, "
                             f"the run is listed as {ref.mode!r}")
        base = _MODE_SUFFIX.sub("", ref.label) or ref.label
        color = colors.setdefault(base, _PALETTE[len(colors) % len(_PALETTE)])
        runs.append(_Run(ref, summary, color))
    return runs


def _check_ref(ref: RunRef) -> None:
    if ref.panel not in PANELS:
        raise ValueError(f"{ref.run_dir}: panel {ref.panel!r} is not one of {PANELS}")
    if ref.mode not in MODES:
        raise ValueError(f"{ref.run_dir}: mode {ref.mode!r} is not one of {MODES}")
    if ref.panel == "1b" and ref.qps is None:
        raise ValueError(f"{ref.run_dir}: a panel-1b run needs its qps")


def _read_summary(run_dir: Path, required: Iterable[str]) -> dict[str, Any]:
    """Check the files up front, so a bad run fails before any figure is built."""
    for name in required:
        if not (run_dir / name).is_file():
            raise ValueError(f"run {run_dir} has no {name}")
    return json.loads((run_dir / "summary.json").read_text())


def page_header(title: str, notes: list[str]) -> str:
    items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    return f"<h1>{html.escape(title)}</h1>" + (f"<ul class='notes'>{items}</ul>" if items else "")


def _runs_table(runs: list[_Run]) -> str:
    columns = ["run", "panel", "QPS", "mode", "compat", "P50 TBT (s)", "P99 TBT (s)", "P50 TTFT (s)",
               "P99 TTFT (s)", "longest generation stall (s)", "makespan (s)", "preemptions",
               "conservation ok"]
    rows = []
    for run in runs:
        s = run.summary
        qps = "-" if run.ref.qps is None else f"{run.ref.qps:g}"
        rows.append([run.ref.label, run.ref.panel or "-", qps, run.ref.mode, run.compat,
                     s["tbt_s"]["p50"], s["tbt_s"]["p99"], s["ttft_s"]["p50"], s["ttft_s"]["p99"],
                     s["longest_generation_stall_s"], s["makespan_s"], s["preemptions"],
                     s["conservation"]["ok"]])
    return html_table(columns, rows)


def _config_details(runs: list[_Run]) -> str:
    columns = ["run", "scheduler", "scheduler config", "model", "TP", "hardware", "cost model",
               "workload", "KV blocks", "requests", "batches", "directory"]
    rows = []
    for run in runs:
        s = run.summary
        config = ", ".join(f"{k}={v}" for k, v in s.get("scheduler_config", {}).items())
        rows.append([run.ref.label, s.get("scheduler"), config, s.get("model"), s.get("tp"),
                     s.get("hardware"), s.get("cost_model"), s.get("workload"),
                     s.get("kv_cache_blocks"), s["num_requests"], s["num_batches"],
                     str(run.ref.run_dir)])
    return "<details><summary>Configuration of each run</summary>" + html_table(columns, rows) + "</details>"


def _figure_1a(runs: list[_Run]) -> str:
    """The burst with the paper's settings and, beside it, the KV-bound burst (when it ran)."""
    heading = "<h2>Figure 1a: decode tokens completed over time (static burst)</h2>"
    panels = {title: [r for r in runs if r.ref.panel == panel] for panel, title in (
        ("1a", "the paper's settings (public 4,096-token trace)"),
        (KV_BOUND_PANEL, "KV-bound burst: longer prompts overflow the KV cache"))}
    panels = {title: members for title, members in panels.items() if members}
    if not panels:
        return heading + "<p>No panel-1a runs.</p>"
    headlines = "".join(_stall_headlines(members, title if len(panels) > 1 else "")
                        for title, members in panels.items())
    return heading + headlines + fig_html(_completion_figure(panels))


def _completion_figure(panels: dict[str, list[_Run]]) -> go.Figure:
    """Cumulative decode tokens over time, one step curve per run, one subplot per entry."""
    titles = list(panels) if len(panels) > 1 else None
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=titles, horizontal_spacing=0.08)
    shown: set[str] = set()
    for col, runs in enumerate(panels.values(), start=1):
        for run in runs:
            series = run.read("decode_completion_time_series.csv")
            # Start the curve at the origin: nothing is decoded before the first prompt finishes.
            t = np.r_[0.0, series["Time (sec)"].to_numpy(float)]
            done = np.r_[0.0, series["decode_completion"].to_numpy(float)]
            t, done = _thin_step_series(t, done, MAX_STEP_POINTS)
            fig.add_trace(go.Scatter(x=_compact(t), y=_compact(done), name=run.ref.label, mode="lines",
                                     legendgroup=run.ref.label, showlegend=run.ref.label not in shown,
                                     line=dict(shape="hv", color=run.color, dash=run.dash)), row=1, col=col)
            shown.add(run.ref.label)
    fig.update_xaxes(title_text="time since the first arrival (s)")
    fig.update_yaxes(title_text="decode tokens completed", col=1)
    fig.update_layout(template=TEMPLATE, height=450, legend_title_text="run", margin=_margin(bool(titles)))
    return fig


def _stall_headlines(burst: list[_Run], panel_title: str = "") -> str:
    """"longest generation stall: vllm X s vs sarathi Y s", per mode, from the summaries; every
    1a run's stall too when some run is in no such pair (another scheduler, a second chunk size)."""
    lines, paired = [], 0
    for mode in MODES:
        by_scheduler: dict[str, _Run] = {}
        for run in burst:
            if run.ref.mode == mode:
                by_scheduler.setdefault(run.summary.get("scheduler", ""), run)
        if "vllm" not in by_scheduler or "sarathi" not in by_scheduler:
            continue
        vllm, sarathi = by_scheduler["vllm"], by_scheduler["sarathi"]
        v, s = vllm.summary["longest_generation_stall_s"], sarathi.summary["longest_generation_stall_s"]
        ratio = f" ({v / s:.1f}× longer)" if s > 0 else ""
        lines.append(f"longest generation stall ({mode}): {vllm.ref.label} {v:.2f} s vs "
                     f"{sarathi.ref.label} {s:.2f} s{ratio}; prompt-only stretches of "
                     f"{STALL_REPORT_S:g} s or more: {_prompt_only_stretches(vllm)} vs "
                     f"{_prompt_only_stretches(sarathi)}")
        paired += 2
    if paired < len(burst):
        stalls = "; ".join(f"{r.ref.label}: {r.summary['longest_generation_stall_s']:.2f} s" for r in burst)
        lines.append(f"longest generation stall of each 1a run: {stalls}")
    prefix = f"{panel_title}: " if panel_title else ""
    return "".join(f"<p class='headline'>{html.escape(prefix + line)}</p>" for line in lines)


def _prompt_only_stretches(run: _Run) -> int:
    """How often the engine ran only prompts, no decode, for STALL_REPORT_S or longer in a row:
    one long stall, or stalls that recur as the KV cache refills."""
    bat = run.read("batches.parquet", ["start", "end", "num_prefill_tokens", "num_decode_tokens"])
    prompt_only = ((bat["num_decode_tokens"] == 0) & (bat["num_prefill_tokens"] > 0)).to_numpy()
    # stretch boundaries: where a prompt-only run of batches starts and ends
    edges = np.flatnonzero(np.diff(np.r_[0, prompt_only.astype(np.int8), 0]))
    starts, ends = edges[::2], edges[1::2] - 1
    durations = bat["end"].to_numpy(float)[ends] - bat["start"].to_numpy(float)[starts]
    return int((durations >= STALL_REPORT_S).sum())


def _thin_step_series(t: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first and last point of each of max_points/2 equal time bins (t ascending).

    A step curve drawn through these points is off by at most one bin, and any flat stretch
    longer than a bin (a generation stall) stays flat.
    """
    if len(t) <= max_points:
        return t, y
    bins = _time_bins(t, max_points // 2)
    change = bins[1:] != bins[:-1]
    keep = np.r_[True, change] | np.r_[change, True]
    return t[keep], y[keep]


def _time_bins(t: np.ndarray, num_bins: int) -> np.ndarray:
    span = t[-1] - t[0]
    if span <= 0:
        return np.zeros(len(t), dtype=int)
    return np.minimum(((t - t[0]) / span * num_bins).astype(int), num_bins - 1)


def _figure_1b(runs: list[_Run]) -> str:
    sweep = [r for r in runs if r.ref.panel == "1b"]
    heading = "<h2>Figure 1b: P99 time between tokens under Poisson arrivals</h2>"
    if not sweep:
        return heading + "<p>No panel-1b runs.</p>"
    qps_values = sorted({r.ref.qps for r in sweep})
    fig = go.Figure()
    for label in dict.fromkeys(r.ref.label for r in sweep):
        mine = sorted((r for r in sweep if r.ref.label == label), key=lambda r: r.ref.qps)
        p99 = [_p99_tbt(r) for r in mine]
        fig.add_trace(go.Bar(
            x=[f"QPS {r.ref.qps:g}" for r in mine], y=p99, name=label,
            text=[_bar_text(v) for v in p99], textposition="outside",
            marker=dict(color=mine[0].color, pattern_shape="/" if mine[0].ref.mode == "real" else "")))
    fig.update_layout(template=TEMPLATE, height=450, barmode="group", yaxis_title="P99 TBT (s)", margin=_margin(False),
                      legend_title_text="run", uniformtext_minsize=9,
                      xaxis=dict(categoryorder="array", categoryarray=[f"QPS {q:g}" for q in qps_values]))
    return heading + fig_html(fig)


def _p99_tbt(run: _Run) -> float | None:
    """P99 TBT; under compat reference as the artifact's notebook takes it from its 1,001-row
    sketch file (pandas quantile 0.99 of the value column)."""
    if run.compat != "reference":
        return run.summary["tbt_s"]["p99"]
    return float(run.read("tbt_sketch").iloc[:, 1].quantile(0.99))


def _bar_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def _cdf_figure(runs: list[_Run], metric: str) -> str:
    """One subplot per group of runs (1a, each 1b QPS, free-form), one curve per run."""
    groups = _groups(runs)
    cols = grid_columns(len(groups))
    rows = math.ceil(len(groups) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(groups), vertical_spacing=0.3 / rows)
    shown: set[str] = set()
    all_values = []
    for i, (group, members) in enumerate(groups.items()):
        for run in members:
            if metric == "ttft":
                values = run.read("requests.csv", ["ttft"])["ttft"].to_numpy(float)
            elif run.compat == "reference":  # the sketch's 1,001 evenly spaced quantiles
                values = run.read("tbt_sketch").iloc[:, 1].to_numpy(float)
            else:
                values = run.read("tokens.parquet", ["tbt"])["tbt"].to_numpy(float)
            x, p = _cdf_points(values, MAX_CDF_POINTS)
            all_values.append(x)
            fig.add_trace(go.Scatter(x=_compact(x), y=_compact(p), name=run.ref.label,
                                     legendgroup=run.ref.label, showlegend=run.ref.label not in shown,
                                     mode="lines",
                                     line=dict(color=run.color, dash=run.dash)),
                          row=i // cols + 1, col=i % cols + 1)
            shown.add(run.ref.label)
    if metric == "ttft":
        fig.update_xaxes(title_text="TTFT (s)")
    else:  # tens of milliseconds (decodes) to seconds (stalls): a log axis shows both
        fig.update_xaxes(title_text="TBT (log scale)", type="log", **log_time_ticks(all_values))
    fig.update_yaxes(title_text="fraction", range=[0, 1.02])
    fig.update_layout(template=TEMPLATE, height=340 * rows + 60, legend_title_text="run", margin=_margin(True))
    return fig_html(fig)


def grid_columns(num_panels: int) -> int:
    """Columns of a subplot grid, at most 4, chosen so that no row holds a lone panel."""
    if num_panels <= 3:
        return max(num_panels, 1)
    return next(c for c in (3, 2, 4) if num_panels % c != 1)


def log_time_ticks(values: list[np.ndarray]) -> dict[str, Any]:
    """Tick positions 1-2-5 (or 1-3, or 1) per decade over the data, labelled in ms or s ("20 ms", "1.5 s"),
    instead of plotly's bare mantissas ("2", "5") on a log axis."""
    data = np.concatenate(values) if values else np.array([])
    data = data[np.isfinite(data) & (data > 0)]
    if not len(data):
        return {}
    low, high = math.floor(math.log10(data.min())), math.ceil(math.log10(data.max()))
    for mantissas in ((1, 2, 5), (1, 3), (1,)):  # the finest steps that give a panel <= 8 labels
        ticks = [m * 10.0 ** e for e in range(low, high + 1) for m in mantissas]
        ticks = [t for t in ticks if data.min() / 2 <= t <= data.max() * 2]
        if len(ticks) <= 8:
            break
    labels = [f"{t * 1e3:g} ms" if t < 1 else f"{t:g} s" for t in ticks]
    return {"tickvals": ticks, "ticktext": labels}


def _margin(has_titles: bool) -> dict[str, int]:
    # Plotly reserves 100 px above a figure for a title none of these have: keep room for
    # subplot titles only.
    return dict(t=40 if has_titles else 20, b=50, l=70, r=30)


def _groups(runs: list[_Run]) -> dict[str, list[_Run]]:
    groups: dict[str, list[_Run]] = {}
    for run in sorted(runs, key=lambda r: (_GROUP_ORDER[r.ref.panel], r.ref.qps or 0.0)):
        groups.setdefault(run.group, []).append(run)
    return groups


def _cdf_points(values: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(value, cumulative fraction): every point when few, else max_points evenly spaced quantiles."""
    values = np.sort(values[~np.isnan(values)])
    if len(values) <= max_points:
        return values, np.arange(1, len(values) + 1) / max(len(values), 1)
    p = np.linspace(0.0, 1.0, max_points)
    return np.quantile(values, p), p


def _timeline_figure(runs: list[_Run]) -> str:
    """Prompt and decode tokens of every batch over time: 1a, free-form, and the highest 1b QPS."""
    sweep = [r for r in runs if r.ref.panel == "1b"]
    top_qps = max((r.ref.qps for r in sweep), default=None)
    chosen = [r for r in runs if r.ref.panel != "1b" or r.ref.qps == top_qps]
    titles = []
    for run in chosen:
        n = run.summary["num_batches"]
        thinned = f", {n:,} batches thinned to the first and the most-prompt batch per time bin" \
            if n > MAX_TIMELINE_BATCHES else ""
        titles.append(run.title + thinned)
    # Decode batches hold tens of tokens, prompt chunks thousands: each gets its own axis (decode
    # on the right), or the decodes would be a line on the floor of the prompt spikes.
    fig = make_subplots(rows=len(chosen), cols=1, subplot_titles=titles, vertical_spacing=0.3 / len(chosen),
                        specs=[[{"secondary_y": True}] for _ in chosen])
    for i, run in enumerate(chosen):
        t, prompt, decode = _timeline_points(run.read(
            "batches.parquet", ["start", "end", "num_prefill_tokens", "num_decode_tokens"]))
        # Prompt tokens as a fill without outlines: where batches are denser than pixels, outlines'
        # vertical strokes paint over everything, while a bare fill's shade stays proportional to
        # the time it covers. Decode tokens as a line over it.
        fig.add_trace(go.Scatter(x=_compact(t), y=_compact(prompt), name="prompt tokens (left axis)",
                                 legendgroup="prompt", showlegend=i == 0, mode="lines", fill="tozeroy",
                                 line=dict(shape="hv", color=_PROMPT_COLOR, width=0)),
                      row=i + 1, col=1, secondary_y=False)
        fig.add_trace(go.Scatter(x=_compact(t), y=_compact(decode), name="decode tokens (right axis)",
                                 legendgroup="decode", showlegend=i == 0, mode="lines",
                                 line=dict(shape="hv", color=_DECODE_COLOR, width=1)),
                      row=i + 1, col=1, secondary_y=True)
        fig.update_yaxes(title_text="prompt tokens", title_font_color=_PROMPT_COLOR, rangemode="tozero",
                         row=i + 1, col=1, secondary_y=False)
        # tickmode auto: the template would align these ticks to the left axis' grid (odd values)
        fig.update_yaxes(title_text="decode tokens", title_font_color=_DECODE_COLOR, rangemode="tozero",
                         showgrid=False, tickmode="auto", nticks=5, row=i + 1, col=1, secondary_y=True)
    fig.update_xaxes(title_text="time (s)")
    fig.update_layout(template=TEMPLATE, height=300 * len(chosen) + 100, margin=dict(_margin(True), t=70),
                      # above the first subplot's title, in the top margin
                      legend=dict(orientation="h", yref="container", y=1.0, yanchor="top", xanchor="left", x=0.0))
    return fig_html(fig)


def _timeline_points(batches: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step-curve points: each batch from its start, and a zero where the engine goes idle after it."""
    batches = batches.sort_values("start", kind="stable").reset_index(drop=True)
    start = batches["start"].to_numpy(float)
    end = batches["end"].to_numpy(float)
    prompt = batches["num_prefill_tokens"].to_numpy(float)
    decode = batches["num_decode_tokens"].to_numpy(float)
    idle_after = np.r_[start[1:], np.inf] > end  # from the full table, before any thinning
    if len(start) > MAX_TIMELINE_BATCHES:
        # Per time bin keep the first batch (the decode level) and the one with the most prompt
        # tokens, so prefill spikes, the cause of the stalls, survive the thinning.
        bins = pd.Series(_time_bins(start, MAX_TIMELINE_BATCHES // 2))
        by_bin = pd.Series(prompt).groupby(bins.to_numpy())
        keep = np.union1d(bins.drop_duplicates().index.to_numpy(), by_bin.idxmax().to_numpy())
        start, end, prompt, decode, idle_after = (a[keep] for a in (start, end, prompt, decode, idle_after))
    t = np.r_[start, end[idle_after]]
    zeros = np.zeros(int(idle_after.sum()))
    order = np.argsort(t, kind="stable")
    return t[order], np.r_[prompt, zeros][order], np.r_[decode, zeros][order]


# ---------------------------------------------------------------------------------------------
# Sections for other pages (experiments/validate.py): run references in, HTML out, drawn as in
# the Figure 1 page (colour per label base, real runs dashed)


def runs_section(refs: list[RunRef]) -> str:
    """The table of key metrics per run, with each run's configuration folded below it."""
    runs = _load_runs(refs)
    return _runs_table(runs) + _config_details(runs)


def decode_completion_section(refs: list[RunRef]) -> str:
    """Cumulative decode tokens over time, one curve per run, in one figure."""
    return fig_html(_completion_figure({"": _load_runs(refs)}))


def cdf_section(refs: list[RunRef], metric: str) -> str:
    """CDFs of "ttft" (per request) or "tbt" (per token), one subplot per group of runs."""
    return _cdf_figure(_load_runs(refs), metric)


# ---------------------------------------------------------------------------------------------
# Multirun comparison


def write_sweep_report(run_dirs: list[Path], overrides: list[list[str]], out_path: Path, title: str) -> Path:
    """A table (one row per run: its overrides, then key metrics) and bar charts of P99 TBT,
    P99 TTFT and output throughput, for the runs of one hydra multirun."""
    if len(run_dirs) != len(overrides):
        raise ValueError(f"{len(run_dirs)} run directories but {len(overrides)} override lists")
    if not run_dirs:
        raise ValueError("no runs to report")
    summaries = [_read_summary(Path(d), ["summary.json"]) for d in run_dirs]
    parsed = [dict(_split_override(o) for o in run) for run in overrides]
    keys = list(dict.fromkeys(k for run in parsed for k in run))
    names = _bar_labels(parsed, run_dirs)
    metrics = {
        "P50 TBT (s)": lambda s: s["tbt_s"]["p50"],
        "P99 TBT (s)": lambda s: s["tbt_s"]["p99"],
        "P50 TTFT (s)": lambda s: s["ttft_s"]["p50"],
        "P99 TTFT (s)": lambda s: s["ttft_s"]["p99"],
        "longest generation stall (s)": lambda s: s["longest_generation_stall_s"],
        "output tokens/s": lambda s: s["throughput"]["output_tokens_per_s"],
        "requests/s": lambda s: s["throughput"]["requests_per_s"],
        "makespan (s)": lambda s: s["makespan_s"],
        "preemptions": lambda s: s["preemptions"],
        "conservation ok": lambda s: s["conservation"]["ok"],
        "compat": lambda s: s.get("compat", "corrected"),
    }
    rows = [[run.get(k, "") for k in keys] + [get(s) for get in metrics.values()] + [str(d)]
            for run, s, d in zip(parsed, summaries, run_dirs)]
    table = html_table(keys + list(metrics) + ["directory"], rows)

    charts = ("P99 TBT (s)", "P99 TTFT (s)", "output tokens/s")
    # One colour per scheduler, the legend naming it; every panel labels its own bars.
    schedulers = [str(s.get("scheduler", "?")) for s in summaries]
    colors = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(dict.fromkeys(schedulers))}
    fig = make_subplots(rows=len(charts), cols=1, subplot_titles=charts, vertical_spacing=0.3 / len(charts))
    for i, chart in enumerate(charts):
        tops: list[float] = []
        for scheduler, color in colors.items():
            mine = [j for j, name in enumerate(schedulers) if name == scheduler]
            values = [metrics[chart](summaries[j]) for j in mine]
            tops.append(max((v for v in values if v is not None), default=0.0))
            fig.add_trace(go.Bar(x=[names[j] for j in mine], y=values, name=scheduler, legendgroup=scheduler,
                                 showlegend=i == 0, marker_color=color, text=[_format(v) for v in values],
                                 textposition="outside", cliponaxis=False),
                          row=i + 1, col=1)
        # headroom for the value printed above the tallest bar, below the panel's title
        fig.update_yaxes(title_text=chart, range=[0, 1.2 * max(tops + [1e-9])], row=i + 1, col=1)
    # "stack": each run is one bar of one scheduler, so nothing stacks, and no gaps are left
    # for the other schedulers' bars as "group" would.
    fig.update_xaxes(categoryorder="array", categoryarray=names, showticklabels=True)
    fig.update_layout(template=TEMPLATE, height=340 * len(charts) + 80, barmode="stack",
                      legend_title_text="scheduler", margin=_margin(True))
    return write_page(Path(out_path), title, [
        f"<h1>{html.escape(title)}</h1>", "<h2>Runs</h2>" + table, "<h2>Comparison</h2>" + fig_html(fig)])


def _bar_labels(parsed: list[dict[str, str]], run_dirs: list[Path]) -> list[str]:
    """A short name per run: the overrides that differ between runs, by their last key part
    ("scheduler=vllm, qps=0.55"); the run directory's name where that is not unique."""
    keys = [k for k in dict.fromkeys(k for run in parsed for k in run)
            if len({run.get(k) for run in parsed}) > 1]
    names = [", ".join(f"{k.rsplit('.', 1)[-1]}={run[k]}" for k in keys if k in run) for run in parsed]
    if len(set(names)) < len(names) or not all(names):
        names = [f"{name} ({Path(d).name})".lstrip() for name, d in zip(names, run_dirs)]
    return names


def _split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key, value


# ---------------------------------------------------------------------------------------------
# Page assembly


def _compact(values: np.ndarray) -> np.ndarray:
    # Plotly 6+ embeds arrays as base64 of their dtype: float32 halves the page, and its 7 digits
    # (1 ms at 10,000 s) are far finer than a plot resolves.
    return np.asarray(values, dtype=np.float32)


def fig_html(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _format(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def html_table(columns: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_format(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    # in a scrolling box: a wide table must not push the page wider than the window
    return f"<div class='table'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
div.table { overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
.headline { font-size: 1.15em; font-weight: 600; }
.notes li { margin: 0.15em 0; }
"""


def write_page(out_path: Path, title: str, sections: list[str]) -> Path:
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
        # The figures' scripts call Plotly when parsed, so the library is loaded first, once.
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head>\n<body>\n"
        + "\n".join(sections) + "\n</body></html>\n")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed over: an interrupted write never leaves half a page.
    partial = out_path.with_name(f".{out_path.name}.partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, out_path)
    return out_path
