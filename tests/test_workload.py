"""Workload layer: reference numbers (reference-semantics §1), the arXiv summary, errors."""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.core.paths import DEFAULT_SHARED_DATA_DIR
from simulator.core.workload import (TraceFormatError, TraceNotFoundError, Workload,
                                     WorkloadConfigError, workload_from_config)
from simulator.core.workload.arrivals import gamma_arrivals, poisson_arrivals
from simulator.core.workload.lengths import ARXIV_SUMMARY_PATH, scale_and_clip
from simulator.core.workload.summarize_arxiv import build_summary

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf" / "workload"
SHARED = DEFAULT_SHARED_DATA_DIR
SHAREGPT = SHARED / "sharegpt_8k_llama2_tokens.csv"
ARXIV = SHARED / "arxiv_summarization_llama2_tokens.csv"
needs_sharegpt = pytest.mark.skipif(
    not SHAREGPT.is_file(),
    reason=f"reference trace {SHAREGPT} absent (../shared is not checked out next to the repo; "
           "the traces are never committed)")
needs_arxiv = pytest.mark.skipif(
    not ARXIV.is_file(),
    reason=f"reference trace {ARXIV} absent (../shared is not checked out next to the repo; "
           "the traces are never committed)")


def config(lengths=None, arrival=None, **top):
    cfg = {"num_requests": 128, "max_tokens": 8192, "seed": 42,
           "lengths": lengths or {"kind": "fixed", "prefill": 1024, "decode": 256},
           "arrival": arrival or {"kind": "poisson", "qps": 1.0}}
    cfg.update(top)
    return cfg


def conf_file(name: str) -> dict:
    # Plain YAML is what hydra hands over for a config-group file (after to_container).
    return yaml.safe_load((CONF_DIR / f"{name}.yaml").read_text())


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: largest gap between the empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / a.size
    cdf_b = np.searchsorted(b, points, side="right") / b.size
    return float(np.abs(cdf_a - cdf_b).max())


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(pd.Series(a).corr(pd.Series(b), method="spearman"))


# --- reference numbers: ShareGPT 8k trace, Figure 1b ----------------------------------------

@needs_sharegpt
@pytest.mark.parametrize("qps, last_arrival", [(0.55, 213.39), (0.7, 167.66), (1.0, 117.36)])
def test_sharegpt_matches_reference(qps, last_arrival):
    cfg = conf_file("sharegpt_8k")
    cfg["arrival"]["qps"] = qps
    w = workload_from_config(cfg)
    assert len(w) == 128
    assert int(w.prefill.sum()) == 284_623 and int(w.decode.sum()) == 60_314
    assert int(w.prefill.max()) == 7_556
    first = [(int(p), int(d)) for p, d in zip(w.prefill[:5], w.decode[:5])]
    assert first == [(997, 391), (1028, 49), (79, 875), (2025, 307), (60, 973)]
    assert w.arrival[-1] == pytest.approx(last_arrival, abs=0.005)


@needs_sharegpt
def test_sharegpt_rows_are_the_pandas_shuffle():
    """The reference shuffles with pandas `sample(frac=1, random_state=seed)`."""
    table = pd.read_csv(SHAREGPT)
    shuffled = table.sample(frac=1, random_state=42)
    assert list(shuffled.index[:5]) == [7585, 491, 23956, 15381, 23146]
    w = workload_from_config(conf_file("sharegpt_8k"))
    np.testing.assert_array_equal(w.prefill, shuffled["num_prefill_tokens"].to_numpy()[:128])
    np.testing.assert_array_equal(w.decode, shuffled["num_decode_tokens"].to_numpy()[:128])


@needs_sharegpt
def test_more_requests_than_trace_rows_is_a_clear_error():
    cfg = conf_file("sharegpt_8k")
    cfg["num_requests"] = 40_000
    with pytest.raises(WorkloadConfigError, match=r"workload\.num_requests = 40000: .*30731"):
        workload_from_config(cfg)


# --- arrivals -------------------------------------------------------------------------------

def test_poisson_equals_reference_global_state_code():
    """The reference seeds Python's global `random` and draws one gap per request."""
    saved = random.getstate()
    try:
        random.seed(42)
        qps, t, expected = 0.7, 0, []
        for _ in range(1000):
            gap = min(-math.log(1.0 - random.random()) / qps, (1.0 / qps) * 3.0)
            t = t + gap
            expected.append(t)
    finally:
        random.setstate(saved)
    got = poisson_arrivals(1000, qps, random.Random(42))
    assert got.tobytes() == np.asarray(expected, np.float64).tobytes()


def test_gamma_equals_scipy_on_the_global_numpy_state():
    stats = pytest.importorskip("scipy.stats", reason="scipy absent: the reference's gamma "
                                                      "sampler cannot be run for comparison")
    qps, cv = 2.0, 3.0
    shape = 1.0 / cv ** 2
    saved = np.random.get_state()
    try:
        np.random.seed(42)
        t, expected = 0, []
        for _ in range(500):
            t = t + stats.gamma.rvs(shape, scale=1.0 / (qps * shape))
            expected.append(t)
    finally:
        np.random.set_state(saved)
    got = gamma_arrivals(500, qps, cv, np.random.RandomState(42))
    assert got.tobytes() == np.asarray(expected, np.float64).tobytes()


def test_poisson_gaps_are_capped_at_three_mean_gaps():
    qps = 2.0
    w = workload_from_config(config(arrival={"kind": "poisson", "qps": qps}, num_requests=20_000))
    gaps = np.diff(w.arrival, prepend=0.0)
    cap = 3.0 / qps
    assert gaps.max() == pytest.approx(cap, rel=1e-12)
    # P(exponential gap > 3 mean gaps) = e^-3 ~ 5%: those are the gaps that sit on the cap.
    assert np.mean(gaps >= cap * (1 - 1e-12)) == pytest.approx(math.exp(-3), abs=0.01)
    # First draw of Random(42) is U = 0.63943..., so request 0 arrives at -ln(1-U)/qps.
    assert w.arrival[0] == pytest.approx(1.0201 / qps, abs=1e-4)


def test_static_arrivals_are_all_zero():
    w = workload_from_config(config(arrival={"kind": "static"}))
    assert w.arrival.dtype == np.float64 and not w.arrival.any()


def test_gamma_mean_rate():
    w = workload_from_config(config(arrival={"kind": "gamma", "qps": 4.0, "cv": 2.0},
                                    num_requests=50_000))
    assert len(w) / w.arrival[-1] == pytest.approx(4.0, rel=0.05)


def test_global_random_state_is_untouched():
    py_state, np_state = random.getstate(), np.random.get_state()
    for arrival in ({"kind": "poisson", "qps": 1.0}, {"kind": "gamma", "qps": 1.0, "cv": 2.0}):
        for lengths in ({"kind": "arxiv"},
                        {"kind": "uniform", "min_prefill": 1, "max_prefill": 9,
                         "min_decode": 1, "max_decode": 9}):
            workload_from_config(config(lengths=lengths, arrival=arrival))
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])
    assert after[2:] == np_state[2:]


# --- lengths: clipping (reference-semantics §1 steps 1-3) -----------------------------------

def test_clipping_hand_worked():
    # T = 10000, max 8192: E = 1808; prompt loses ceil(1808*0.6) = ceil(1084.8) = 1085,
    # output loses ceil(1808*0.4) = ceil(723.2) = 724: 1809 tokens in all, one more than E.
    # T = 9001 with P = 1: E = 809; prompt loses ceil(0.09) = 1 -> 0 -> clamped to 1;
    # output loses ceil(808.91) = 809 -> 8191. T <= max: untouched.
    prefill, decode = scale_and_clip(np.array([6000, 1, 100]), np.array([4000, 9000, 200]),
                                     1.0, 1.0, 8192)
    assert prefill.tolist() == [4915, 1, 100]
    assert decode.tolist() == [3276, 8191, 200]
    assert prefill.dtype == decode.dtype == np.int64


def test_clipping_uses_the_reference_float_order():
    # P = 14, D = 86, max 50: E = 50. Exactly, E*P/T = 7, but the reference computes
    # E * (P/T) = 50 * 0.14 = 7.000000000000001, whose ceil is 8: P = 6; D loses 50*0.86 = 43.
    prefill, decode = scale_and_clip(np.array([14]), np.array([86]), 1.0, 1.0, 50)
    assert (prefill.tolist(), decode.tolist()) == ([6], [43])


def test_scaling_truncates_before_clipping():
    # 1001 * 0.5 = 500.5 -> 500; 301 * 2.0 = 602. Total 1102 fits in 8192.
    w = workload_from_config(config(lengths={"kind": "fixed", "prefill": 1001, "decode": 301,
                                             "prefill_scale": 0.5, "decode_scale": 2.0}))
    assert set(w.prefill) == {500} and set(w.decode) == {602}
    assert "scaled x0.5 prefill, x2.0 decode" in w.description


def test_fixed_lengths_are_clipped_like_a_trace():
    w = workload_from_config(config(lengths={"kind": "fixed", "prefill": 6000, "decode": 4000}))
    assert set(w.prefill) == {4915} and set(w.decode) == {3276}


def test_zero_length_raised_over_max_tokens_is_an_error():
    # Step 3 raises the 0 to 1 after the clip, so 1 + 8192 > 8192: the reference's assert fails.
    with pytest.raises(WorkloadConfigError, match=r"^workload\.max_tokens = 8192: request 0 "):
        scale_and_clip(np.array([0]), np.array([8192]), 1.0, 1.0, 8192)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20_000), st.integers(1, 20_000)), min_size=1,
                max_size=20),
       st.integers(2, 16_384), st.sampled_from([1.0, 1.7, 2.5]))
def test_clipping_invariants(rows, max_tokens, scale):
    raw_prefill, raw_decode = (np.array(column) for column in zip(*rows))
    prefill, decode = scale_and_clip(raw_prefill, raw_decode, scale, 1.0, max_tokens)
    assert (prefill >= 1).all() and (decode >= 1).all()
    assert (prefill + decode <= max_tokens).all()
    scaled = (raw_prefill * scale).astype(np.int64)
    fits = (scaled + raw_decode <= max_tokens) & (scaled >= 1) & (raw_decode >= 1)
    assert (prefill[fits] == scaled[fits]).all() and (decode[fits] == raw_decode[fits]).all()
    # Proportional clip: each side loses at most its share of the excess, plus one token.
    excess = np.maximum(scaled + raw_decode - max_tokens, 0)
    share = excess * raw_decode / np.maximum(scaled + raw_decode, 1)
    assert (raw_decode - decode <= share + 1).all()


def test_uniform_lengths_cover_their_inclusive_bounds():
    w = workload_from_config(config(
        lengths={"kind": "uniform", "min_prefill": 10, "max_prefill": 13,
                 "min_decode": 1, "max_decode": 2}, num_requests=2000))
    assert set(w.prefill) == {10, 11, 12, 13} and set(w.decode) == {1, 2}


# --- the committed arXiv summary ------------------------------------------------------------

@needs_arxiv
def test_arxiv_summary_reproduces_the_trace():
    trace = pd.read_csv(ARXIV)
    prefill = trace["num_prefill_tokens"].to_numpy()
    decode = trace["num_decode_tokens"].to_numpy()
    cfg = conf_file("arxiv")
    cfg["num_requests"] = 10_000
    w = workload_from_config(cfg)
    assert ks_statistic(w.prefill, prefill) <= 0.03
    assert ks_statistic(w.decode, decode) <= 0.03
    assert ks_statistic(w.prefill + w.decode, prefill + decode) <= 0.03
    assert spearman(w.prefill, w.decode) == pytest.approx(spearman(prefill, decode), abs=0.03)


@needs_arxiv
def test_arxiv_summary_is_regenerated_exactly_by_its_script():
    committed = json.loads(ARXIV_SUMMARY_PATH.read_text())
    assert build_summary(ARXIV) == committed


def test_arxiv_summary_is_small_and_names_its_source():
    assert ARXIV_SUMMARY_PATH.stat().st_size < 50_000
    summary = json.loads(ARXIV_SUMMARY_PATH.read_text())
    assert "arxiv_summarization_llama2_tokens.csv" in summary["source"]
    assert "microsoft/vidur" in summary["source"]


# --- whole workloads ------------------------------------------------------------------------

ALL_KINDS = [
    ({"kind": "arxiv"}, {"kind": "poisson", "qps": 1.0}),
    ({"kind": "fixed", "prefill": 7, "decode": 3}, {"kind": "static"}),
    ({"kind": "uniform", "min_prefill": 1, "max_prefill": 5000, "min_decode": 1,
      "max_decode": 5000}, {"kind": "gamma", "qps": 3.0, "cv": 0.5}),
]


@pytest.mark.parametrize("lengths, arrival", ALL_KINDS)
def test_same_seed_gives_identical_arrays(lengths, arrival):
    a = workload_from_config(config(lengths=lengths, arrival=arrival, seed=7))
    b = workload_from_config(config(lengths=lengths, arrival=arrival, seed=7))
    for name in ("arrival", "prefill", "decode"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes()
    assert a.description == b.description
    c = workload_from_config(config(lengths=lengths, arrival=arrival, seed=8))
    assert lengths["kind"] == "fixed" or not np.array_equal(a.prefill, c.prefill)


@pytest.mark.parametrize("lengths, arrival", ALL_KINDS)
def test_workload_invariants(lengths, arrival):
    w = workload_from_config(config(lengths=lengths, arrival=arrival, max_tokens=4096))
    assert isinstance(w, Workload) and len(w) == 128
    assert w.arrival.dtype == np.float64 and (np.diff(w.arrival) >= 0).all()
    assert w.prefill.dtype == w.decode.dtype == np.int64
    assert (w.prefill >= 1).all() and (w.decode >= 1).all()
    assert (w.prefill + w.decode <= 4096).all()
    assert "\n" not in w.description
    with pytest.raises(ValueError):
        w.prefill[0] = 5  # frozen: the arrays are read-only


@pytest.mark.parametrize("name", ["arxiv", "arxiv_trace", "sharegpt_8k", "fixed", "uniform"])
def test_conf_files_build(name):
    cfg = conf_file(name)
    if cfg["lengths"]["kind"] == "trace" and not (SHARED / cfg["lengths"]["path"]).is_file():
        pytest.skip(f"reference trace {SHARED / cfg['lengths']['path']} absent "
                    "(../shared is not checked out next to the repo)")
    w = workload_from_config(cfg)
    assert len(w) == cfg["num_requests"] == 128


def test_arxiv_conf_description():
    w = workload_from_config(conf_file("arxiv"))
    assert w.description == ("arXiv-summarization (committed summary of the public 4,096-token "
                             "trace), Poisson 1.0 QPS, 128 requests, seed 42, max_tokens 8192")


def test_100k_requests_take_well_under_a_second():
    cfg = config(lengths={"kind": "arxiv"}, num_requests=100_000)
    workload_from_config(cfg)  # warm the file cache and imports
    start = time.perf_counter()
    workload_from_config(cfg)
    assert time.perf_counter() - start < 0.5


def test_workload_layer_imports_no_engine_or_gpu_packages():
    code = ("import sys, simulator.core.workload; "
            "print(sorted(m for m in ('simpy', 'torch', 'ray', 'hydra') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# --- errors: one line naming the key or file, the value, and the fix -----------------------

def test_missing_trace_names_the_path_and_the_fix(tmp_path):
    cfg = config(lengths={"kind": "trace", "path": "nope.csv"})
    with pytest.raises(TraceNotFoundError) as error:
        workload_from_config(cfg, shared_data_dir=tmp_path)
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError) and "\n" not in message
    assert str(tmp_path / "nope.csv") in message and "workload.lengths.path=" in message


def test_absolute_trace_path_ignores_the_shared_dir(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("num_prefill_tokens,num_decode_tokens\n5,6\n7,8\n")
    w = workload_from_config(config(lengths={"kind": "trace", "path": str(csv)}, num_requests=2),
                             shared_data_dir=tmp_path / "elsewhere")
    assert sorted(zip(w.prefill.tolist(), w.decode.tolist())) == [(5, 6), (7, 8)]


@pytest.mark.parametrize("text, expected", [
    ("num_prefill_tokens,other\n1,2\n", "missing column num_decode_tokens"),
    ("num_prefill_tokens,num_decode_tokens\n1,2\n3,abc\n", "column num_decode_tokens, line 3"),
    ("num_prefill_tokens,num_decode_tokens\n1,2\n-3,4\n", "column num_prefill_tokens, line 3"),
    ("num_prefill_tokens,num_decode_tokens\n1,\n", "column num_decode_tokens, line 2"),
    ("num_prefill_tokens,num_decode_tokens\n", "no data rows"),
    ("", "not a readable CSV"),
])
def test_malformed_trace_is_a_one_line_value_error(tmp_path, text, expected):
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    with pytest.raises(TraceFormatError) as error:
        workload_from_config(config(lengths={"kind": "trace", "path": "bad.csv"}, num_requests=1),
                             shared_data_dir=tmp_path)
    message = str(error.value)
    assert isinstance(error.value, ValueError) and "\n" not in message
    assert str(csv) in message and expected in message and "fix" in message


@pytest.mark.parametrize("change, key", [
    ({"arrival": {"kind": "poisson", "qps": 0}}, "workload.arrival.qps = 0"),
    ({"arrival": {"kind": "gamma", "qps": -1.0, "cv": 1.0}}, "workload.arrival.qps = -1.0"),
    ({"arrival": {"kind": "gamma", "qps": 1.0, "cv": 0}}, "workload.arrival.cv = 0"),
    ({"arrival": {"kind": "poisson"}}, "workload.arrival.qps is missing"),
    ({"arrival": {"kind": "bursty", "qps": 1.0}}, "workload.arrival.kind = 'bursty'"),
    ({"arrival": {"kind": "poisson", "qps": 1.0, "rate": 2}}, "workload.arrival.rate = 2"),
    ({"lengths": {"kind": "zipf"}}, "workload.lengths.kind = 'zipf'"),
    ({"lengths": {"kind": "fixed", "prefill": 10}}, "workload.lengths.decode is missing"),
    ({"lengths": {"kind": "fixed", "prefill": 0, "decode": 1}}, "workload.lengths.prefill = 0"),
    ({"lengths": {"kind": "trace"}}, "workload.lengths.path is missing"),
    ({"lengths": {"kind": "arxiv", "prefill_scale": -2}}, "workload.lengths.prefill_scale = -2"),
    ({"lengths": {"kind": "uniform", "min_prefill": 9, "max_prefill": 3, "min_decode": 1,
                  "max_decode": 1}}, "workload.lengths.max_prefill = 3"),
    ({"num_requests": 0}, "workload.num_requests = 0"),
    ({"num_requests": True}, "workload.num_requests = True"),
    ({"num_requests": 2.5}, "workload.num_requests = 2.5"),
    ({"max_tokens": 1}, "workload.max_tokens = 1"),
    ({"seed": -1}, "workload.seed = -1"),
    ({"duration": 60}, "workload.duration = 60"),
])
def test_bad_config_is_a_one_line_value_error(change, key):
    cfg = config()
    cfg.update(change)
    with pytest.raises(WorkloadConfigError) as error:
        workload_from_config(cfg)
    message = str(error.value)
    assert isinstance(error.value, ValueError) and "\n" not in message
    assert message.startswith(key)
    assert "must be" in message or "allowed" in message or "set " in message
