"""Metrics that stream: the token stream equals the whole-table computation, the sketch keeps its
stated accuracy, and a run without the token table gives the same summary."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from simulator.cli import to_dict
from simulator.core import metrics
from simulator.core.distribution import RELATIVE_ACCURACY, ExactDistribution, ExactUntilFull, SketchDistribution
from simulator.core.paths import REPO_ROOT
from simulator.core.request import Request
from simulator.core.schedulers import SCHEDULERS, SchedulerConfig, make_scheduler
from simulator.core.token_stream import CohortStream, TokenStream, range_max
from simulator.engine import simulate
from simulator.router import Router
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
    whole, chunked = (TokenStream(num_requests, ExactDistribution()) for _ in range(2))
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
    # Without token rows the TBTs are summed as (value, count) pairs: the means may differ in their
    # last bits, nothing else may
    means = []
    for summary in (full, lean):
        means.append([summary["tbt_s"].pop("mean")] + [r["tbt_s"].pop("mean") for r in summary["replicas"]])
    assert means[0] == pytest.approx(means[1], rel=1e-12)
    assert json.dumps(full, sort_keys=True) == json.dumps(lean, sort_keys=True)
    assert full["conservation"]["ok"] and full["tbt_quantiles"] == "exact"
    for name in ("requests.csv", "decode_token_execution_plus_preemption_time.csv",
                 "decode_completion_time_series.csv"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "lean" / name).read_bytes()
    with pytest.raises(ValueError, match="outputs.batches=true"):
        run("trace", ["outputs.batches=false", "outputs.chrome_trace=true"])


def test_range_max_matches_slices():
    rng = np.random.default_rng(11)
    values = rng.random(1000)
    lo = rng.integers(0, 1000, 5000)
    hi = np.minimum(999, lo + rng.integers(0, 1000, 5000) % (1 + rng.integers(0, 1000, 5000)))
    expected = [values[a:b + 1].max() for a, b in zip(lo, hi)]
    assert np.array_equal(range_max(values, lo, hi), expected)


def _random_run(name: str, replicas: int, seed: int, keep_tokens: bool, monkeypatch):
    """A small cluster on a KV cache tight enough to preempt often; batch times vary with the batch.
    Returns the tables, the preemptions and every batch's (end, replica, ids of who emitted)."""
    rng = np.random.default_rng(seed)
    n = 120
    arrivals = np.sort(np.round(rng.exponential(0.05, n).cumsum(), 2))  # ties included
    prompts, outputs = rng.integers(1, 120, n), rng.integers(1, 80, n)
    requests = [Request(i, float(arrivals[i]), int(prompts[i]), int(outputs[i])) for i in range(n)]
    config = SchedulerConfig(max_num_seqs=int(rng.integers(2, 30)), max_model_len=400, block_size=4,
                             chunk_size=int(rng.integers(16, 200)))
    num_blocks = (-(-int((prompts + outputs).max()) // 4) + 1 + int(rng.integers(0, 6))
                  if not SCHEDULERS[name].reserves_max_len else 101 + int(rng.integers(0, 20)))
    schedulers = [make_scheduler(name, config, num_blocks) for _ in range(replicas)]

    def batch_time(batch):
        return (0.01 + 0.001 * batch.num_prefill_tokens + 0.0003 * len(batch.decodes)
                + 1e-5 * (batch.decode_kv_tokens % 7))

    events = []
    on_batch = metrics.MetricsRecorder.on_batch

    def spy(self, batch, start, end, emitted, finished, kv_blocks_in_use, **extras):
        events.append((end, extras.get("replica", 0), [r.id for r in emitted]))
        on_batch(self, batch, start, end, emitted, finished, kv_blocks_in_use, **extras)

    monkeypatch.setattr(metrics.MetricsRecorder, "on_batch", spy)
    router = Router.make("round_robin" if seed % 2 else "least_outstanding", replicas) if replicas > 1 else None
    recorder = simulate(requests, schedulers if replicas > 1 else schedulers[0], batch_time, router,
                        keep_tokens=keep_tokens, keep_batches=False)
    monkeypatch.setattr(metrics.MetricsRecorder, "on_batch", on_batch)
    return recorder.finalize(), sum(r.num_preemptions for r in requests), events


@pytest.mark.parametrize("sketch", [False, True])
@pytest.mark.parametrize("replicas", [1, 3])
@pytest.mark.parametrize("name", ["vllm", "sarathi", "orca", "faster_transformer"])
def test_cohort_stream_matches_every_token_recorded(monkeypatch, name, replicas, sketch):
    # The recorder never sees a token: `CohortStream` derives them from per-batch cohorts. Every
    # token row, request column, token count and the TBT distribution must be what recording each
    # emitted token (`TokenStream`, as compat reference does) gives, with or without token rows.
    monkeypatch.setattr(metrics, "FOLD_BATCHES", 13)  # several chunks per run
    if sketch:
        monkeypatch.setattr(metrics, "EXACT_MAX_TBT_VALUES", 10)
    preemptions = 0
    for seed in range(6):
        rows, preempted, events = _random_run(name, replicas, seed, True, monkeypatch)
        lean, _, _ = _random_run(name, replicas, seed, False, monkeypatch)
        preemptions += preempted
        ids = np.concatenate([np.array(emitted, dtype=np.int64) for _, _, emitted in events])
        per_batch = [len(emitted) for _, _, emitted in events]
        times = np.repeat([end for end, _, _ in events], per_batch)
        groups = np.repeat([replica for _, replica, _ in events], per_batch)
        n = len(rows.requests["request_id"])
        truth = TokenStream(n, (SketchDistribution if sketch else ExactDistribution)(replicas))
        later = truth.add(ids, times, groups)
        truth_rows = truth.rows()
        for key, column in truth_rows.items():
            assert np.array_equal(column, rows.tokens[key], equal_nan=True), key
        assert lean.tokens is None and rows.conservation == lean.conservation and lean.conservation["ok"]
        assert lean.conservation["tokens_produced"] == len(ids)
        for key, column in rows.requests.items():
            assert np.array_equal(column, lean.requests[key], equal_nan=True), key
        assert np.array_equal(rows.requests["first_token"], truth.first_token, equal_nan=True)
        assert np.array_equal(rows.requests["max_tbt"], truth.max_tbt, equal_nan=True)
        batch_of_token = np.repeat(np.arange(len(events)), per_batch)
        expected_later = np.bincount(batch_of_token, weights=later, minlength=len(events)).astype(np.int64)
        assert np.array_equal(rows.later_tokens, expected_later)
        assert np.array_equal(lean.later_tokens, expected_later)
        for dist in (rows.tbt, lean.tbt):
            a, b = truth.tbt, dist
            assert type(a) is type(b.inner) is (SketchDistribution if sketch else ExactDistribution)
            assert np.array_equal(a.count, b.count) and np.array_equal(a.max, b.max)
            assert np.allclose(a.total, b.total, rtol=1e-12, atol=0)
            for group in (None, *range(replicas)) if replicas > 1 else (None,):
                if sketch:
                    assert np.array_equal(a.buckets, b.inner.buckets)
                else:
                    assert np.array_equal(np.sort(a.values(group)), np.sort(b.inner.values(group)))
                qs = np.linspace(0, 1, 101)
                assert np.array_equal(a.quantiles(qs, group), b.quantiles(qs, group), equal_nan=True)
    if not SCHEDULERS[name].reserves_max_len:
        assert preemptions, "the workloads are meant to preempt"


def test_cohort_stream_rejects_a_batch_that_skips_a_decoding_request():
    class Req:
        def __init__(self, id):
            self.id = id
    stream = CohortStream(3, ExactDistribution())
    a, b = Req(0), Req(1)
    stream.on_batch(0, 1.0, 0, [a, b], [], [])
    stream.on_batch(0, 2.0, 2, [a, b], [], [])
    with pytest.raises(RuntimeError, match="decodes 1 requests, but 2 are decoding"):
        stream.on_batch(0, 3.0, 1, [a], [], [])


def test_exact_quantiles_are_numpys_bit_for_bit():
    # pairs counted once each: the sorted pairs' order statistics and numpy's interpolation
    # arithmetic give numpy's floats, also at ties, signed zeros, subnormals and one value
    from simulator.core.distribution import linear_quantiles

    rng = np.random.default_rng(7)
    cases = [rng.gamma(2, 0.1, 50_000), np.repeat(rng.random(300), 97), rng.normal(0, 1, 999),
             np.array([3.5]), np.array([0.0, -0.0, 5e-324, 1e300, -1e300, 2.0]),
             np.concatenate([np.zeros(1000), rng.random(10)])]
    qs = np.concatenate([np.linspace(0, 1, 1001), rng.random(50)])
    for values in cases:
        once = np.ones(len(values), dtype=np.int64)
        assert np.array_equal(linear_quantiles(values, qs, once), np.quantile(values, qs)), values[:5]


def test_weighted_values_give_the_quantiles_of_their_repetition():
    from simulator.core.distribution import linear_quantiles

    rng = np.random.default_rng(8)
    values, weights = rng.gamma(2, 0.1, 3000), rng.integers(1, 60, 3000)
    values[::7] = values[3]  # ties across pairs
    qs = np.concatenate([np.linspace(0, 1, 1001), rng.random(50)])
    expected = np.quantile(np.repeat(values, weights), qs)
    assert np.array_equal(linear_quantiles(values, qs, weights), expected)
    dist = ExactDistribution(2)
    groups = rng.integers(0, 2, 3000)
    dist.add(values[:1000], groups[:1000], weights[:1000])
    dist.add(values[1000:2000], groups[1000:2000])  # once each
    dist.add(values[2000:], groups[2000:], weights[2000:])
    once = np.ones(3000, np.int64)
    once[:1000], once[2000:] = weights[:1000], weights[2000:]
    for group in (None, 1):
        mine = slice(None) if group is None else groups == group
        assert np.array_equal(dist.quantiles(qs, group), np.quantile(np.repeat(values[mine], once[mine]), qs))


def test_exact_until_full_moves_to_the_sketch_past_its_limit():
    rng = np.random.default_rng(9)
    chunks = [(rng.gamma(2, 0.1, 40), rng.integers(0, 3, 40), rng.integers(1, 9, 40)) for _ in range(5)]
    bounded, sketch = ExactUntilFull(3, max_exact=100), SketchDistribution(3)
    qs = np.linspace(0, 1, 101)
    for i, (values, groups, weights) in enumerate(chunks):
        w = None if i == 1 else weights  # a chunk of values counted once each
        bounded.add(values, groups, w)
        sketch.add(values, groups, w)
        if i < 2:  # 80 pairs held: still exact
            assert bounded.accuracy == "exact" and isinstance(bounded.inner, ExactDistribution)
            held = [np.repeat(v, 1 if j == 1 else c) for j, (v, _, c) in enumerate(chunks[:i + 1])]
            assert np.array_equal(bounded.quantiles(qs), np.quantile(np.concatenate(held), qs))
    assert bounded.accuracy == sketch.accuracy and np.array_equal(bounded.inner.buckets, sketch.buckets)
    for group in (None, 0, 2):
        assert np.array_equal(bounded.quantiles(qs, group), sketch.quantiles(qs, group))
        assert bounded.stats({"p99": 0.99}, group) == sketch.stats({"p99": 0.99}, group)
