"""The artifact-format output files of `compat: reference` and the Chrome-trace writer."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from simulator.chrome_trace import write_chrome_trace
from simulator.core.request import Request


def test_chrome_trace_has_a_span_per_batch_on_one_track_per_replica(tmp_path):
    batches = pd.DataFrame({"start": [0.0, 0.5, 0.25], "end": [0.5, 1.0, 0.75], "replica": [0, 0, 1],
                            "num_prefill_tokens": [100, 0, 7], "num_decode_tokens": [0, 2, 1],
                            "num_tokens": [100, 2, 8], "batch_size": [1, 2, 2]})
    events = json.loads(write_chrome_trace(batches, tmp_path / "t" / "chrome_trace.json").read_text())
    assert [(e["ph"], e["pid"], e["tid"]) for e in events] == [("X", 0, 0), ("X", 0, 0), ("X", 1, 0)]
    assert [(e["ts"], e["dur"]) for e in events] == [(0.0, 500000.0), (500000.0, 500000.0), (250000.0, 500000.0)]
    assert events[1]["args"] == {"batch_size": 2, "num_batched_tokens": 2, "num_batched_prompt_tokens": 0,
                                 "num_batched_output_tokens": 2}
    single = json.loads(write_chrome_trace(batches.drop(columns="replica"), tmp_path / "one.json").read_text())
    assert {e["pid"] for e in single} == {0}


# ---- the artifact's metrics, on a hand-built run ----------------------------------------------

def reference_run(requests, num_blocks, **config):
    from simulator.core.schedulers import SchedulerConfig, make_scheduler
    from simulator.engine import simulate

    config = {"block_size": 4, "watermark": 0.0, "max_model_len": 16, "compat": "reference", **config}
    scheduler = make_scheduler("vllm", SchedulerConfig(**config), num_blocks)
    return simulate(requests, scheduler, lambda batch: 1.0).finalize()


def test_artifact_tbt_pushes_series_and_ttft_after_a_recompute():
    # tests/test_compat_schedulers.py derives this schedule: batches end at t = 1, 2, ..., 10
    #   p0:4 p1:4 | d0 d1 | d0 x1 | d0 | d0 | p1:5 | d1 | d1 | d1 | d1
    a, b = Request(0, 0.0, 4, 4), Request(1, 0.0, 4, 4)
    tables = reference_run([a, b], 3)
    pushes = tables.artifact.pushes
    # per batch: tokens first, then the prompts it completed (a stale push: 0, or B's last gap)
    assert pushes["time"].tolist() == [1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert pushes["request_id"].tolist() == [0, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1]
    assert pushes["value"].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 5, 1, 1, 1]  # 5: B's whole stall
    assert pushes["token_index"].tolist() == [-1, -1, 0, 0, 1, 2, 3, 0, 1, 2, 3, 4]
    series = tables.artifact.series
    assert series["decode_completion"][0].tolist() == pushes["time"].tolist()  # D + 1 per life
    assert series["prefill_completion"][0].tolist() == [2, 2, 7]  # each life's first token, +P
    assert series["prefill_completion"][1].tolist() == [4, 4, 4]
    assert series["request_completion"][0].tolist() == [5, 10]
    # TTFT = prefill_e2e_time: arrival to the end of the last prompt completion (overwritten)
    assert tables.requests["ttft"].tolist() == [1.0, 6.0]
    seq = tables.artifact.sequences
    assert seq["request_num_decode_tokens"].tolist() == [4, 5]  # B: k + D
    assert seq["request_num_restarts"].tolist() == [0, 1]
    assert seq["request_num_pauses"].tolist() == [5, 7]  # batches each took part in
    assert seq["request_execution_time"].tolist() == [5.0, 7.0]
    assert seq["request_preemption_time"].tolist() == [0.0, 3.0]
    assert tables.conservation["ok"] and tables.conservation["tokens_expected"] == 9
    # The DDSketch's quantile q is its value of rank q * (12 - 1), 0-based, within 0.1%: 5 zeros
    # (ranks 0-4, kept exact), six 1 s (ranks 5-10) and the 5 s stall (rank 11).
    quantile = tables.artifact.tbt_quantile
    assert quantile(0.4) == 0.0
    assert all(abs(quantile(q) - 1.0) <= 1e-3 + 1e-12 for q in (0.5, 0.9, 0.99))
    assert abs(quantile(1.0) - 5.0) <= 5e-3 + 1e-12


def test_ignored_requests_are_counted_done_with_no_tokens():
    requests = [Request(0, 0.0, 4, 2), Request(1, 0.5, 20, 2), Request(2, 3.0, 4, 1)]
    tables = reference_run(requests, 20, max_model_len=8)
    assert tables.requests["ignored"].tolist() == [False, True, False]
    assert tables.conservation["ok"] and tables.conservation["finished_exactly_once"] == 3
    seq = tables.artifact.sequences
    assert seq["request_num_ignored"].tolist() == [0, 1, 0]
    assert pd.isna(seq["request_e2e_time"][1]) and not pd.isna(seq["request_e2e_time"][2])


# ---- whole runs' files ------------------------------------------------------------------------

NUM_REQUESTS = 100


def run(out, *overrides):
    from simulator.run import run_simulation
    from tests.test_simulator import compose_config

    # the analytical cost model: the quickest to build, and any model serves here
    cfg = compose_config("simulator", [f"workload.num_requests={NUM_REQUESTS}", "workload.arrival.qps=2.0",
                                       "cost_model=analytical",
                                       "compat=reference", *overrides], out)
    return out, run_simulation(cfg, out, log=lambda *_: None)


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    return {name: run(root / name, f"scheduler={scheduler}")
            for name, scheduler in (("vllm", "vllm"), ("vllm_again", "vllm"), ("sarathi", "sarathi"))}


def test_reference_runs_are_byte_identical(reference_runs):
    (a, _), (b, _) = reference_runs["vllm"], reference_runs["vllm_again"]
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert len(files) > 40
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_reference_run_writes_the_artifact_files(reference_runs):
    import yaml

    out, summary = reference_runs["vllm"]
    assert summary["compat"] == "reference" and summary["conservation"]["ok"]
    replica, plots = out / "replica_0", out / "replica_0" / "plots"
    # What the Figure 1 notebooks read, as they read it
    bench = yaml.safe_load((out / "benchmark_config.yml").read_text())
    assert (bench["replica_scheduler_provider"], bench["poisson_request_interval_generator_qps"]) == ("vllm", 2.0)
    assert yaml.safe_load((replica / "config.yml").read_text())["scheduler_type"] == "vllm"
    sketch = pd.read_csv(plots / "decode_token_execution_plus_preemption_time.csv")
    assert list(sketch.columns) == ["cdf", "decode_token_execution_plus_preemption_time"] and len(sketch) == 1001
    p99 = sketch["decode_token_execution_plus_preemption_time"].quantile(0.99)
    assert p99 == summary["tbt_s"]["p99"]
    series = pd.read_csv(plots / "decode_completion_time_series.csv")
    assert list(series.columns) == ["Time (sec)", "decode_completion"]
    seq = pd.read_csv(replica / "sequence_metrics.csv")
    tokens = pd.read_parquet(out / "tokens.parquet")
    # a push per token and per prompt completion: D + 1 per life (vLLM recomputes whole prompts)
    assert series["decode_completion"].iloc[-1] == len(tokens) + NUM_REQUESTS + summary["preemptions"]
    assert seq.columns[0] == "Request Id" and len(seq) == NUM_REQUESTS and seq["request_num_ignored"].sum() == 0
    assert np.allclose(np.sort(seq["prefill_e2e_time"]), np.sort(pd.read_csv(out / "requests.csv")["ttft"]))
    batches = pd.read_csv(replica / "batch_metrics.csv")
    assert list(batches.columns) == ["Batch Id", "batch_num_tokens", "batch_num_prefill_tokens",
                                     "batch_num_decode_tokens", "batch_size", "batch_execution_time",
                                     "inter_batch_delay"]
    assert len(json.loads((replica / "chrome_trace.json").read_text())) == len(batches) == summary["num_batches"]
    assert json.loads((out / "requests.json").read_text())[0]["id"] == 1
    for name in ("request_arrival", "request_completion", "prefill_completion"):
        assert (plots / f"{name}_time_series.csv").is_file()


def test_figure1_report_draws_reference_runs_from_the_artifact_files(reference_runs, tmp_path):
    from experiments import report

    refs = [report.RunRef(reference_runs[name][0], name, "1b", 2.0, "sim") for name in ("vllm", "sarathi")]
    assert not (refs[0].run_dir / "decode_completion_time_series.csv").exists()  # only the artifact's
    page = report.write_fig1_report(refs, tmp_path / "fig1_report.html", "Figure 1 (compat: reference)", [])
    assert "<td>reference</td>" in page.read_text()
    for run in report._load_runs(refs):
        sketch = pd.read_csv(run.ref.run_dir / "replica_0/plots/decode_token_execution_plus_preemption_time.csv")
        assert report._p99_tbt(run) == sketch.iloc[:, 1].quantile(0.99)


def test_compat_errors_name_the_key_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="compat='exact' is unknown; use compat=corrected"):
        run(tmp_path / "bad", "compat=exact")
    with pytest.raises(ValueError, match="cluster.num_replicas=1"):
        run(tmp_path / "cluster", "cluster.num_replicas=2")
