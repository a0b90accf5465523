"""Metrics that stream: the token stream equals the whole-table computation, the sketch keeps its
stated accuracy, and a run without the token table gives the same summary."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from simulator.cli import to_dict
from simulator.core.distribution import RELATIVE_ACCURACY, ExactDistribution, SketchDistribution
from simulator.core.paths import REPO_ROOT
from simulator.core.token_stream import TokenStream
from simulator.run import run_simulation


def test_sketch_quantiles_are_within_the_stated_accuracy_per_group():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.lognormal(-3, 1, 200_000), 1e-5 + rng.exponential(0.05, 100_000)])
    groups = rng.integers(0, 3, len(values))
    sketch, exact = SketchDistribution(3), ExactDistribution(3)
    for part in np.array_split(np.arange(len(values)), 7):  # chunk by chunk
        sketch.add(values[part], groups[part])
        exact.add(values[part], groups[part])
    qs = np.linspace(0, 1, 1001)
    for group in (None, 0, 2):
        mine = values if group is None else values[groups == group]
        lower = np.sort(mine)[np.floor(qs * (len(mine) - 1)).astype(int)]  # the order statistic
        assert np.all(np.abs(sketch.quantiles(qs, group) / lower - 1) <= RELATIVE_ACCURACY)
        assert np.array_equal(exact.quantiles(qs, group), np.quantile(mine, qs))
        s, e = sketch.stats({"p99": 0.99}, group), exact.stats({"p99": 0.99}, group)
        assert s["count"] == e["count"] == len(mine) and s["max"] == e["max"] == mine.max()
        assert s["mean"] == pytest.approx(mine.mean(), rel=1e-12)


def test_token_stream_in_chunks_matches_the_whole_table():
    rng = np.random.default_rng(5)
    num_requests, num_batches = 50, 400
    ids, times = [], []
    for b in range(num_batches):  # each batch: some requests, ascending, each at most once
        members = np.flatnonzero(rng.random(num_requests) < 0.3)
        ids.append(members)
        times.append(np.full(len(members), float(b) + rng.random()))
    ids, times = np.concatenate(ids), np.concatenate(times)
    whole, chunked = (TokenStream(num_requests, ExactDistribution(), keep_rows=True) for _ in range(2))
    later_whole = whole.add(ids, times)
    cuts = [0, 1, 17, 900, 901, len(ids)]
    later_chunked = np.concatenate([chunked.add(ids[a:b], times[a:b]) for a, b in zip(cuts, cuts[1:])])
    assert np.array_equal(later_whole, later_chunked)
    whole_rows, chunked_rows = whole.rows(), chunked.rows()
    for key, column in whole_rows.items():
        assert np.array_equal(column, chunked_rows[key], equal_nan=True), key
    for name in ("count", "first_token", "max_tbt", "last_time"):
        assert np.array_equal(getattr(whole, name), getattr(chunked, name), equal_nan=True), name
    # by hand: a request's TBTs are the gaps between its token times
    r = int(ids[0])
    mine = times[ids == r]
    assert whole.max_tbt[r] == np.diff(mine).max() and whole.count[r] == len(mine)
    assert np.array_equal(np.sort(whole.tbt.values()), np.sort(np.concatenate(
        [np.diff(times[ids == k]) for k in range(num_requests)])))


def test_run_without_token_and_batch_tables_gives_the_same_summary(tmp_path):
    def run(name: str, extra: list[str]) -> dict:
        overrides = ["scheduler=vllm", "workload.num_requests=300", "workload.arrival.qps=3.0",
                     "cluster.num_replicas=2", *extra, f"output_dir={tmp_path / name}"]
        with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
            cfg = to_dict(compose(config_name="simulator", overrides=overrides))
        return run_simulation(cfg, tmp_path / name, log=lambda *_: None)

    full, lean = run("full", []), run("lean", ["outputs.tokens=false", "outputs.batches=false"])
    for name in ("tokens.parquet", "batches.parquet"):
        assert (tmp_path / "full" / name).exists() and not (tmp_path / "lean" / name).exists()
    assert json.dumps(full, sort_keys=True) == json.dumps(lean, sort_keys=True)
    assert full["conservation"]["ok"] and full["tbt_quantiles"] == "exact"
    for name in ("requests.csv", "decode_token_execution_plus_preemption_time.csv",
                 "decode_completion_time_series.csv"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "lean" / name).read_bytes()
    with pytest.raises(ValueError, match="outputs.batches=true"):
        run("trace", ["outputs.batches=false", "outputs.chrome_trace=true"])
