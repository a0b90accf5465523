"""The HTML reports, built from run directories the simulator really wrote."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from plotly.offline import get_plotlyjs

from experiments.report import (KV_BOUND_PANEL, RunRef, grid_columns, log_time_ticks, write_fig1_report,
                                write_sweep_report)
from simulator.run import run_simulation

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
NUM_REQUESTS = 20
QPS = (0.7, 1.0)


def simulate(out_dir: Path, overrides: list[str]) -> Path:
    # output_dir interpolates ${hydra:...}, which only a hydra.main app resolves: give a plain path.
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("simulator", overrides=[f"workload.num_requests={NUM_REQUESTS}",
                                              f"output_dir={out_dir}", *overrides])
    run_simulation(OmegaConf.to_container(cfg, resolve=True), out_dir, log=lambda *_: None)
    return out_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[RunRef]:
    root = tmp_path_factory.mktemp("runs")
    refs = []
    for scheduler in ("vllm", "sarathi"):
        burst = simulate(root / f"1a_{scheduler}", [f"scheduler={scheduler}", "workload.arrival.kind=static"])
        refs.append(RunRef(burst, scheduler, "1a", None, "sim"))
        kv_bound = simulate(root / f"1a_kv_{scheduler}", [f"scheduler={scheduler}", "workload.arrival.kind=static",
                                                          "workload.lengths.prefill_scale=4"])
        refs.append(RunRef(kv_bound, scheduler, KV_BOUND_PANEL, None, "sim"))
        for qps in QPS:
            run_dir = simulate(root / f"1b_{scheduler}_{qps}",
                               [f"scheduler={scheduler}", f"workload.arrival.qps={qps}"])
            refs.append(RunRef(run_dir, scheduler, "1b", qps, "sim"))
    return refs


def summary(ref: RunRef) -> dict:
    return json.loads((ref.run_dir / "summary.json").read_text())


def test_fig1_report_holds_every_run_and_plotly_once(runs, tmp_path):
    out = write_fig1_report(runs, tmp_path / "fig1.html", "Figure 1 test",
                            ["the arXiv trace is the public 4,096-token version"])
    page = out.read_text()
    assert page.count(get_plotlyjs()) == 1
    assert "4,096-token version" in page
    for ref in runs:
        assert ref.label in page
        if ref.panel == "1b":  # the bar's printed value
            assert f"{summary(ref)['tbt_s']['p99']:.3f} s" in page
    vllm_stall = summary(runs[0])["longest_generation_stall_s"]
    assert f"longest generation stall (sim): vllm {vllm_stall:.2f} s vs sarathi" in page


def test_missing_file_is_named(runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(runs[0].run_dir, broken)
    (broken / "tokens.parquet").unlink()
    with pytest.raises(ValueError, match=r"broken.*tokens\.parquet"):
        write_fig1_report([RunRef(broken, "vllm", "1a", None, "sim")], tmp_path / "r.html", "t", [])


def test_listed_mode_must_match_the_run(runs, tmp_path):
    with pytest.raises(ValueError, match="mode 'sim'"):
        write_fig1_report([RunRef(runs[0].run_dir, "vllm", "1a", None, "real")], tmp_path / "r.html", "t", [])


def test_a_large_run_is_thinned(runs, tmp_path):
    """A run the size of 10,000 requests: every plotted series is capped, so the page stays small."""
    big = tmp_path / "big"
    shutil.copytree(runs[0].run_dir, big)
    rng = np.random.default_rng(0)
    num_batches, num_tokens = 250_000, 2_000_000
    start = np.cumsum(rng.uniform(0.01, 0.05, num_batches))
    batches = pd.read_parquet(big / "batches.parquet").iloc[[0]]
    batches = batches.loc[batches.index.repeat(num_batches)].reset_index(drop=True)
    batches["start"], batches["end"] = start, start + 0.01
    batches["num_prefill_tokens"] = np.where(rng.random(num_batches) < 0.01, 4000, 0)
    batches.to_parquet(big / "batches.parquet")
    pd.DataFrame({"request_id": 0, "token_index": 0, "time": 0.0,
                  "tbt": rng.exponential(0.05, num_tokens)}).to_parquet(big / "tokens.parquet")
    pd.DataFrame({"Time (sec)": start, "decode_completion": np.arange(num_batches)}).to_csv(
        big / "decode_completion_time_series.csv", index=False)
    meta = json.loads((big / "summary.json").read_text())
    (big / "summary.json").write_text(json.dumps({**meta, "num_batches": num_batches}))

    out = write_fig1_report([RunRef(big, "vllm", "1a", None, "sim")], tmp_path / "big.html", "big", [])
    assert out.stat().st_size - len(get_plotlyjs()) < 1_000_000


def test_sweep_report(runs, tmp_path):
    sweep = [r for r in runs if r.panel == "1b"]
    overrides = [[f"scheduler={r.label}", f"workload.arrival.qps={r.qps}"] for r in sweep]
    out = write_sweep_report([r.run_dir for r in sweep], overrides, tmp_path / "sweep.html", "QPS sweep")
    page = out.read_text()
    assert page.count(get_plotlyjs()) == 1
    assert "<th>workload.arrival.qps</th>" in page
    assert "scheduler=sarathi, qps=1.0" in page  # the bar label: what differs between runs
    for ref in sweep:
        assert f"{summary(ref)['tbt_s']['p99']:.3f}" in page
    with pytest.raises(ValueError, match="override lists"):
        write_sweep_report([sweep[0].run_dir], [], tmp_path / "x.html", "t")


def _figures(page: str) -> list[dict]:
    """The layout of every plotly figure in a page (each `Plotly.newPlot(id, data, layout, config)`)."""
    decoder = json.JSONDecoder()
    layouts = []
    for call in page.split("Plotly.newPlot(")[1:]:
        rest = call[call.index(",") + 1:].lstrip()
        _, end = decoder.raw_decode(rest)  # the traces
        layout, _ = decoder.raw_decode(rest[end:].lstrip().lstrip(",").lstrip())
        layouts.append(layout)
    return layouts


def test_fig1_page_layout_a_reader_can_trust(runs, tmp_path):
    page = write_fig1_report(runs, tmp_path / "fig1.html", "Figure 1 test", []).read_text()
    layouts = _figures(page)
    assert len(layouts) == 5  # 1a (two panels), 1b, TTFT, TBT, timeline
    # no empty band for a title no figure has
    assert all(layout["margin"]["t"] <= 70 for layout in layouts)
    # 1a: the paper's settings beside the KV-bound burst, each with its stall headline
    titles = [a["text"] for a in layouts[0]["annotations"]]
    assert titles[0].startswith("the paper's settings") and titles[1].startswith("KV-bound burst")
    assert page.count("longest generation stall (sim): vllm") == 2
    # TBT ticks in ms and s, not bare mantissas
    tbt_axis = layouts[3]["xaxis"]
    assert tbt_axis["type"] == "log" and all(t.endswith(("ms", " s")) for t in tbt_axis["ticktext"])
    # decode tokens on their own (right) axis in every timeline row
    timeline = layouts[4]
    assert sum(1 for k, v in timeline.items() if k.startswith("yaxis") and v.get("side") == "right") == \
        sum(1 for r in runs if r.panel != "1b" or r.qps == max(QPS))


def test_grid_never_leaves_a_lone_panel():
    for n in range(1, 13):
        cols = grid_columns(n)
        assert 1 <= cols <= 4 and (n == 1 or n % cols != 1), (n, cols)


def test_log_ticks_are_labelled_in_ms_and_s_and_few():
    ticks = log_time_ticks([np.array([0.02, 0.05, 3.0, 40.0])])
    assert 3 <= len(ticks["tickvals"]) <= 8
    assert ticks["ticktext"][0].endswith("ms") and ticks["ticktext"][-1].endswith(" s")
    assert ticks["tickvals"][0] <= 0.04 and ticks["tickvals"][-1] >= 20
    assert log_time_ticks([np.array([0.03, 0.2])])["ticktext"] == ["20 ms", "50 ms", "100 ms", "200 ms"]


def test_sweep_bars_are_coloured_by_scheduler_and_labelled_on_every_panel(runs, tmp_path):
    sweep = [r for r in runs if r.panel == "1b"]
    overrides = [[f"scheduler={r.label}", f"workload.arrival.qps={r.qps}"] for r in sweep]
    page = write_sweep_report([r.run_dir for r in sweep], overrides, tmp_path / "s.html", "t").read_text()
    layout = _figures(page)[0]
    assert layout["legend"]["title"]["text"] == "scheduler"
    assert all(layout[f"xaxis{i}"]["showticklabels"] for i in ("", "2", "3"))
    assert page.count('"name":"vllm"') == 3 and page.count('"name":"sarathi"') == 3  # one trace per panel


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless Chromium (Debian: apt-get install chromium)")
def test_pages_render_in_headless_chromium_with_a_clean_console(runs, tmp_path):
    sweep = [r for r in runs if r.panel == "1b"]
    pages = [write_fig1_report(runs, tmp_path / "fig1.html", "Figure 1 test", []),
             write_sweep_report([r.run_dir for r in sweep], [[f"scheduler={r.label}"] for r in sweep],
                                tmp_path / "sweep.html", "sweep")]
    for page in pages:
        out = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / ('profile-' + page.stem)}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120)
        console = [line for line in out.stderr.splitlines() if ":CONSOLE" in line]
        assert console == [], console
        # every figure drew its SVG (plotly's "main-svg"), i.e. its script ran without error
        assert out.stdout.count('class="main-svg"') >= 2 * len(_figures(page.read_text())), page.name
