"""Clusters of replicas: routers balance as they state, every replica conserves, metrics per replica."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from simulator.cli import to_dict
from simulator.core.paths import REPO_ROOT
from simulator.core.request import Request
from simulator.router import Router
from simulator.run import run_simulation


def cluster_run(tmp_path, router: str, replicas: int = 3, extra: tuple[str, ...] = ()) -> tuple[dict, dict]:
    overrides = ["scheduler=sarathi", "workload.num_requests=240", "workload.arrival.qps=3.0",
                 f"cluster.num_replicas={replicas}", f"cluster.router={router}", *extra,
                 f"output_dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = to_dict(compose(config_name="simulator", overrides=overrides))
    summary = run_simulation(cfg, tmp_path, log=lambda *_: None)
    return summary, {"requests": pd.read_csv(tmp_path / "requests.csv"),
                     "batches": pd.read_parquet(tmp_path / "batches.parquet")}


def test_round_robin_cycles_and_counts_differ_by_at_most_one(tmp_path):
    summary, tables = cluster_run(tmp_path, "round_robin", replicas=7)
    replica = tables["requests"].replica.to_numpy()
    assert (replica == np.arange(len(replica)) % 7).all()
    counts = [r["requests"] for r in summary["replicas"]]
    assert max(counts) - min(counts) <= 1 and sum(counts) == summary["num_requests"]


def test_least_outstanding_picks_a_least_loaded_replica_at_each_arrival(tmp_path):
    summary, tables = cluster_run(tmp_path, "least_outstanding")
    req = tables["requests"]
    arrival, finish, replica = req.arrival.to_numpy(), req.finish.to_numpy(), req.replica.to_numpy()
    for i in range(len(req)):
        earlier = slice(0, i)
        # outstanding at arrival i: routed before it and not finished strictly before it
        live = finish[earlier] >= arrival[i]
        outstanding = np.bincount(replica[earlier][live], minlength=3)
        assert outstanding[replica[i]] == outstanding.min(), (i, outstanding, replica[i])
        assert replica[i] == int(np.flatnonzero(outstanding == outstanding.min())[0])  # lowest index on a tie
    assert summary["conservation"]["ok"]


def test_random_router_is_seeded_and_roughly_uniform():
    def assignment(seed: int) -> list[int]:
        router = Router.make("random", 4, seed)
        return [router.route(Request(i, 0.0, 10, 10)) for i in range(4000)]

    a = assignment(7)
    assert a == assignment(7) and a != assignment(8)
    counts = np.bincount(a, minlength=4)
    # binomial(4000, 1/4): sd ~27; 5 sd either side
    assert (np.abs(counts - 1000) < 140).all(), counts


def test_cluster_tables_and_per_replica_summary_add_up(tmp_path):
    summary, tables = cluster_run(tmp_path, "random", replicas=2)
    req, bat = tables["requests"], tables["batches"]
    assert summary["conservation"]["ok"] and summary["cluster"] == {"num_replicas": 2, "router": "random"}
    per = summary["replicas"]
    assert sum(r["requests"] for r in per) == len(req)
    assert sum(r["batches"] for r in per) == len(bat) == summary["num_batches"]
    assert sum(r["output_tokens"] for r in per) == req.decode_len.sum()
    for r in range(2):  # one replica runs one batch at a time
        mine = bat[bat.replica == r]
        assert (mine.start.to_numpy()[1:] >= mine.end.to_numpy()[:-1]).all()
    # both replicas ran at the same time somewhere: they share one clock
    b0, b1 = bat[bat.replica == 0], bat[bat.replica == 1]
    assert ((b1.start.to_numpy()[:, None] < b0.end.to_numpy()) & (b1.end.to_numpy()[:, None] > b0.start.to_numpy())).any()


@pytest.mark.parametrize("overrides", [["cluster.num_replicas=0"], ["cluster.router=fastest"]])
def test_bad_cluster_config_names_the_key(tmp_path, overrides):
    with pytest.raises(ValueError, match="cluster\\."):
        cluster_run(tmp_path, "round_robin", extra=tuple(overrides))


def test_chrome_trace_has_one_span_per_batch_on_its_replicas_track(tmp_path):
    summary, tables = cluster_run(tmp_path / "on", "round_robin", replicas=2, extra=("outputs.chrome_trace=true",))
    bat = tables["batches"]
    events = json.loads((tmp_path / "on" / "chrome_trace.json").read_text())
    spans = [e for e in events if e.get("ph") == "X"]
    assert len(spans) == len(bat) == summary["num_batches"]
    assert sorted({e["pid"] for e in spans}) == [0, 1]
    by_start = sorted(spans, key=lambda e: (e["ts"], e["pid"]))
    rows = bat.sort_values(["start", "replica"])
    assert [e["pid"] for e in by_start] == rows.replica.tolist()
    assert np.allclose([e["dur"] for e in by_start], rows.duration * 1e6)
    assert [e["args"]["num_batched_prompt_tokens"] for e in by_start] == rows.num_prefill_tokens.tolist()
    cluster_run(tmp_path / "off", "round_robin", replicas=2)
    assert not (tmp_path / "off" / "chrome_trace.json").exists(), "written although off by default"
