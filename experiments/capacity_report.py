"""capacity_report.html: the answers of a capacity search on one self-contained page.

- capacity bars per configuration, grouped by SLO, the whiskers spanning the seeds' capacities;
- with a band of cost-model time scales: each answer against the factor, so a reader sees
  whether a ranking survives a model that is that far off;
- per configuration, every probe's P99 TBT against its QPS (passing probes filled), the SLO's
  bound as a line and the found capacity as a line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import plotly.graph_objects as go

from .report import fig_html, html_table, page_header, write_page


def write_capacity_report(entries: list[dict[str, Any]], out_path: Path, config: Mapping[str, Any]) -> Path:
    cap = config["capacity"]
    cluster = config.get("cluster") or {}
    notes = [
        f"Model {config['model']['name']}, tensor parallel {config['parallel']['tp']}, hardware "
        f"{config['hardware']['name']}, {cluster.get('num_replicas', 1)} replica(s)"
        + (f" behind a {cluster.get('router')} router" if cluster.get("num_replicas", 1) > 1 else "") + ".",
        f"Each probe: {cap['num_requests']} requests, Poisson arrivals; seeds {cap['seeds']}. A probe passes "
        f"when its P99 TBT is within the SLO and its median scheduling delay is at most "
        f"{cap['scheduling_delay_p50_s']:g} s (so an overloaded system never passes).",
        f"Search: bracket from {cap['start_qps']:g} QPS per replica, then bisect to {cap['tolerance']:.0%} "
        "(relative); the capacity shown is the median over seeds.",
    ] + sorted({f"SLO {e['slo']}: {e['slo_definition']}." for e in entries})
    sections = [page_header("Capacity under an SLO", notes), _table(entries), fig_html(_bars(entries))]
    if len({e["time_scale"] for e in entries}) > 1:
        sections.append(fig_html(_band(entries)))
    sections += [fig_html(_probes(e)) for e in entries]
    return write_page(out_path, "Capacity under an SLO", sections)


def _table(entries: list[dict[str, Any]]) -> str:
    rows = [[e["slo"], e["scheduler"], e["time_scale"], e["p99_tbt_bound_s"], e["capacity_qps"],
             min(e["capacity_qps_per_seed"].values()), max(e["capacity_qps_per_seed"].values()),
             f"{e['seed_spread_rel']:.1%}", len(e["probes"])] for e in entries]
    return html_table(["SLO", "scheduler", "time scale", "P99 TBT bound (s)", "capacity (QPS)",
                       "lowest seed", "highest seed", "seed spread", "probes"], rows)


def _bars(entries: list[dict[str, Any]]) -> go.Figure:
    fig = go.Figure()
    nominal = [e for e in entries if e["time_scale"] == 1.0] or entries
    for slo in dict.fromkeys(e["slo"] for e in nominal):
        mine = [e for e in nominal if e["slo"] == slo]
        lows = [e["capacity_qps"] - min(e["capacity_qps_per_seed"].values()) for e in mine]
        highs = [max(e["capacity_qps_per_seed"].values()) - e["capacity_qps"] for e in mine]
        fig.add_bar(name=f"{slo} SLO", x=[e["scheduler"] for e in mine], y=[e["capacity_qps"] for e in mine],
                    error_y={"type": "data", "symmetric": False, "array": highs, "arrayminus": lows},
                    text=[f"{e['capacity_qps']:.2f}" for e in mine], textposition="outside")
    fig.update_layout(title="Capacity: the highest QPS that meets the SLO (whiskers: seeds)", barmode="group",
                      yaxis_title="QPS", height=420)
    return fig


def _band(entries: list[dict[str, Any]]) -> go.Figure:
    fig = go.Figure()
    for key in dict.fromkeys((e["slo"], e["scheduler"]) for e in entries):
        mine = sorted((e for e in entries if (e["slo"], e["scheduler"]) == key), key=lambda e: e["time_scale"])
        fig.add_scatter(name=f"{key[0]}: {key[1]}", x=[e["time_scale"] for e in mine],
                        y=[e["capacity_qps"] for e in mine], mode="lines+markers")
    fig.update_layout(title="Capacity if every modelled time were off by a factor (cost_model.time_scale)",
                      xaxis_title="time scale", yaxis_title="capacity (QPS)", height=420)
    return fig


# 1-2-5 steps: plotly's own log ticks label the minor ones "2" and "5" whatever the decade
LOG_TICKS = [m * 10.0 ** e for e in range(-3, 4) for m in (1, 2, 5)]


def _probes(entry: dict[str, Any]) -> go.Figure:
    fig = go.Figure()
    probes = sorted(entry["probes"], key=lambda p: p["qps"])
    # A probe can miss with its P99 TBT under the SLO line: it queued too long. Say which bound it broke.
    delay = entry["scheduling_delay_p50_bound_s"]
    tbt_ok = [p["p99_tbt_s"] <= entry["p99_tbt_bound_s"] for p in probes]
    groups = (("meets the SLO", "circle", "#636efa", lambda p, t: p["meets_slo"]),
              ("misses: P99 TBT over the SLO", "x", "#ef553b", lambda p, t: not p["meets_slo"] and not t),
              (f"misses: median scheduling delay over {delay:g} s", "triangle-up", "#ff9f1c",
               lambda p, t: not p["meets_slo"] and t))
    for name, symbol, color, belongs in groups:
        mine = [p for p, t in zip(probes, tbt_ok) if belongs(p, t)]
        if not mine:
            continue
        fig.add_scatter(name=name, x=[p["qps"] for p in mine], y=[p["p99_tbt_s"] for p in mine], mode="markers",
                        marker={"symbol": symbol, "size": 9, "color": color},
                        text=[f"seed {p['seed']}, median scheduling delay {p['p50_scheduling_delay_s']:.2f} s"
                              for p in mine])
    fig.add_hline(y=entry["p99_tbt_bound_s"], line_dash="dash", annotation_text=f"SLO {entry['slo']}")
    fig.add_vline(x=entry["capacity_qps"], line_dash="dot", annotation_text=f"capacity {entry['capacity_qps']:.2f}")
    scale = f", time scale {entry['time_scale']:g}" if entry["time_scale"] != 1.0 else ""
    fig.update_layout(title=f"{entry['scheduler']}, {entry['slo']} SLO{scale}: P99 TBT of each probe",
                      xaxis_title="QPS", yaxis_title="P99 TBT (s, log scale)", yaxis_type="log",
                      yaxis_tickvals=LOG_TICKS, yaxis_ticktext=[f"{v:g}" for v in LOG_TICKS], height=380)
    return fig
