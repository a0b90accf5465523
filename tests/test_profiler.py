"""The profiler pipeline: measuring (on the CPU here), fitting, the fitted and transfer cost models,
the predict and accuracy commands, and what `cost_model: auto` resolves to.

Fits are checked on synthetic profiles: the rows the real profiler would measure (`profiler.grid.plan`),
timed by known laws plus noise, so that what the fit should recover is known exactly.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from profiler.cost_model import build_cost_model, cost_model_for, resolve_cost_model_name, shipped_profile_dir
from profiler.fit import (ALL_REDUCE, ATTENTION, COLUMNS, DECODER_LAYER, SHAPE_COLUMNS, Law, Roofline,
                          features, law_group, load_fit)
from profiler.hardware import HardwareSpec
from profiler.grid import plan
from simulator.core.batch import Batch, BatchShape
from simulator.core.model_spec import ModelSpec
from tests.test_cost_model import columns, random_shapes

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
TINY = {"name": "tiny", "num_layers": 2, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16,
        "intermediate_size": 128, "vocab_size": 256, "max_position": 512}
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

# The laws synthetic profiles are timed by: H100-like rates, a GEMM roofline with p = 3.
GEMM_LAW = Law("roofline", 6e-6, 0.0, {"main": Roofline(1 / 650e12, 1 / 2.6e12, 3.0)})
STREAM_LAW = Law("linear", 4e-6, 0.0, {"main": Roofline(0.0, 1 / 2.4e12, 1.0)})
ATTENTION_LAW = Law("roofline", 8e-6, 2e-7, {"prefill": Roofline(1 / 300e12, 1 / 2.0e12, 2.0),
                                              "decode": Roofline(0.0, 1 / 2.2e12, 1.0)})


def load_yaml(*parts: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF.joinpath(*parts)))


@pytest.fixture(scope="module")
def yi() -> ModelSpec:
    return ModelSpec.from_config(load_yaml("model", "yi_34b.yaml"))


@pytest.fixture(scope="module")
def h100() -> HardwareSpec:
    return HardwareSpec.from_config(load_yaml("hardware", "h100_80gb_hbm3.yaml"))


@pytest.fixture(scope="module")
def a100() -> HardwareSpec:
    return HardwareSpec.from_config(load_yaml("hardware", "a100_80gb_pcie_nvlink.yaml"))


def true_seconds(rows: pd.DataFrame, model: ModelSpec, tp: int, tile_steps: bool = False) -> np.ndarray:
    """The known law of each row's op; `tile_steps` pads GEMM token counts to multiples of 64
    in their compute time, the step a real GEMM's tiles make."""
    seconds = np.zeros(len(rows))
    for op in rows["op"].unique():
        mine = (rows["op"] == op).to_numpy()
        cols = {k: rows.loc[mine, k].to_numpy(dtype=float) for k in SHAPE_COLUMNS}
        law = {"gemm": GEMM_LAW, ATTENTION: ATTENTION_LAW}.get(law_group(op), STREAM_LAW)
        if tile_steps and law is GEMM_LAW:
            flops, nbytes = features(op, cols, model, tp).terms["main"]
            padded = flops * np.ceil(cols["tokens"] / 64) * 64 / cols["tokens"]
            seconds[mine] = law.fixed_s + law.terms["main"].seconds(padded, nbytes)
        else:
            seconds[mine] = law.seconds(features(op, cols, model, tp))
    return seconds


def write_synthetic(directory: Path, model_cfg: dict, tp: int, hardware_cfg: dict, noise: float = 0.01,
                    tile_steps: bool = False, seed: int = 1, all_reduce: bool = False) -> Path:
    """A profile directory as `python -m profiler` writes it, timed by the known laws."""
    model = ModelSpec.from_config(model_cfg)
    grid = load_yaml("profiler.yaml")["profiler"]["grids"]["full"]
    points = [p for p in plan(model, tp, grid, seed=0) if p.op != DECODER_LAYER]
    rows = pd.DataFrame([{"op": p.op, "kind": p.kind, **p.shape} for p in points]).reindex(columns=list(COLUMNS))
    rows[list(SHAPE_COLUMNS)] = rows[list(SHAPE_COLUMNS)].fillna(0).astype(int)
    rows["kind"] = rows["kind"].fillna("")
    ms = true_seconds(rows, model, tp, tile_steps) * 1e3 * np.exp(np.random.default_rng(seed).normal(0, noise, len(rows)))
    rows["n_repeats"], rows["median_ms"], rows["p10_ms"], rows["p90_ms"] = 7, ms, ms * 0.99, ms * 1.01
    if all_reduce:  # a measured curve: 20 us + bytes / 100 GB/s
        sizes = np.geomspace(1e4, 1e8, 12)
        reduce_rows = pd.DataFrame({"op": ALL_REDUCE, "kind": "nccl", "nbytes": sizes.astype(int), "num_workers": tp,
                                    "n_repeats": 7, "median_ms": (20e-6 + sizes / 100e9) * 1e3})
        reduce_rows["p10_ms"], reduce_rows["p90_ms"] = reduce_rows["median_ms"], reduce_rows["median_ms"]
        rows = pd.concat([rows, reduce_rows.reindex(columns=list(COLUMNS)).fillna({"kind": ""}).fillna(0)],
                         ignore_index=True)
    directory.mkdir(parents=True, exist_ok=True)
    rows.to_csv(directory / "profile.csv", index=False, float_format="%.9g")
    (directory / "metadata.json").write_text(json.dumps({
        "device": "synthetic", "device_kind": "synthetic", "date": "2026-01-01", "model": model_cfg, "tp": tp,
        "hardware": hardware_cfg, "cpu_overhead_ms": None}))
    return directory


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("synthetic"), load_yaml("model", "yi_34b.yaml"), 2,
                           load_yaml("hardware", "h100_80gb_hbm3.yaml"))


@pytest.fixture(scope="module")
def tiled(tmp_path_factory) -> Path:
    """A synthetic profile whose GEMMs step with 64-token tiles, as real ones do."""
    return write_synthetic(tmp_path_factory.mktemp("tiled"), load_yaml("model", "yi_34b.yaml"), 2,
                           load_yaml("hardware", "h100_80gb_hbm3.yaml"), tile_steps=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fit_cache")


# ---- measuring ----------------------------------------------------------------------------------
# Measuring runs the backend's ops in torch; the fits and cost models below need no torch.
HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs torch (the cpu extra: pip install -e '.[cpu]'): "
                                 "the profiler times the backend's torch ops")


def run_profiler(root: Path, device: str) -> None:
    """`python -m profiler` end to end: tiny model, quick grid."""
    overrides = [f"model.{k}={v}" for k, v in TINY.items()]
    result = subprocess.run([sys.executable, "-m", "profiler", "profiler.grid=quick", f"profiler.device={device}",
                             f"profiler.output_root={root}", *overrides],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("profiles")
    run_profiler(root, "cpu")
    return root / "cpu_tiny_tp2"


@needs_torch
def test_profiler_writes_table_and_metadata_on_cpu(cpu_profile):
    table = pd.read_csv(cpu_profile / "profile.csv", keep_default_na=False)
    assert list(table.columns) == list(COLUMNS)
    for op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head", "rmsnorm", "silu_mul", "rope",
               "kv_cache_write", "embedding", "rope_cos_sin", "final_norm", "sampling", ATTENTION, DECODER_LAYER):
        assert (table["op"] == op).sum() >= 2, op
    assert set(table.loc[table["op"] == ATTENTION, "kind"]) >= {"prefill", "decode", "decode_uneven", "mixed"}
    assert (table["median_ms"] > 0).all() and (table["p10_ms"] <= table["median_ms"]).all()
    assert (table["median_ms"] <= table["p90_ms"]).all() and (table["n_repeats"] == 3).all()
    gate_up = table[table["op"] == "gate_up_proj"].iloc[0]
    assert (gate_up["k_in"], gate_up["k_out"]) == (64, 128)  # 2 x intermediate / tp at the shard shape
    meta = json.loads((cpu_profile / "metadata.json").read_text())
    for key in ("device", "torch", "cuda", "triton", "date", "command", "git_commit", "model", "tp", "timing"):
        assert key in meta, key
    assert meta["device_kind"] == "cpu" and "CPU profile" in meta["label"] and meta["tp"] == 2
    assert "profiler.grid=quick" in meta["command"]
    assert meta["all_reduce"].startswith("not measured")


@needs_torch
def test_cpu_profile_fits_and_prices(cpu_profile, cache):
    fit = load_fit(cpu_profile, cache)
    assert {s.op for s in fit.scores} >= {"qkv_proj", ATTENTION, "sampling"}
    model = ModelSpec.from_config(fit.metadata["model"])
    hardware = HardwareSpec.from_config(fit.metadata["hardware"])
    cost_model = build_cost_model(model, hardware, 2, name="fitted", profile_dir=cpu_profile, cache_dir=cache)
    assert "(cpu)" in cost_model.label
    assert cost_model.batch_time(BatchShape(16, 2, 1, 40, 16, 136)) > 0


@needs_torch
def test_all_reduce_timed_across_processes():
    from profiler.measure import measure_all_reduce

    rows = measure_all_reduce(2, [4096, 65536], "gloo", warmup=1, repeats=2)
    assert [r["nbytes"] for r in rows] == [4096, 65536]
    assert all(r["num_workers"] == 2 and 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] for r in rows)


def _cuda() -> bool:
    if not HAS_TORCH:
        return False
    import torch

    return torch.cuda.is_available()


needs_gpu = pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU: CUDA-event timing and "
                               "the Triton attention kernel run only there (backend/gpu_procedure.sh measures the "
                               "shipped profile)")


@needs_gpu
def test_cuda_timer_times_a_gemm():
    import torch

    from profiler.measure import CudaTimer

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    samples = CudaTimer("cuda")(lambda: a @ a, warmup=2, repeats=5)
    tflops = 2 * 4096 ** 3 / (np.median(samples) * 1e-3) / 1e12
    assert 50 < tflops < 2000


@needs_gpu
def test_profiler_on_gpu(tmp_path):
    run_profiler(tmp_path, "cuda")
    (directory,) = tmp_path.glob("*_tiny_tp2")
    meta = json.loads((directory / "metadata.json").read_text())
    assert meta["device_kind"] == "cuda" and meta["cuda"] and "CUDA events" in meta["timing"]
    table = pd.read_csv(directory / "profile.csv")
    quick = load_yaml("profiler.yaml")["profiler"]["grids"]["quick"]
    assert (table["op"] != ALL_REDUCE).sum() == len(plan(ModelSpec.from_config(TINY), 2, quick, seed=0))


# ---- fitting ------------------------------------------------------------------------------------
def test_fit_recovers_known_laws(synthetic, cache):
    fit = load_fit(synthetic, cache)
    gemm, attention = fit.laws["gemm"], fit.laws[ATTENTION]
    assert gemm.family == "roofline"
    assert gemm.terms["main"].s_per_flop == pytest.approx(1 / 650e12, rel=0.03)
    assert gemm.terms["main"].s_per_byte == pytest.approx(1 / 2.6e12, rel=0.03)
    assert gemm.fixed_s == pytest.approx(6e-6, rel=0.05)
    assert attention.terms["prefill"].s_per_flop == pytest.approx(1 / 300e12, rel=0.05)
    assert attention.terms["decode"].s_per_byte == pytest.approx(1 / 2.2e12, rel=0.05)
    assert fit.laws["rmsnorm"].terms["main"].s_per_byte == pytest.approx(1 / 2.4e12, rel=0.03)
    for score in fit.scores:  # 1 % noise: held-out errors of about 1 %
        assert score.mape < 0.015, score
    assert fit.fit_seconds < 30


def test_residual_captures_gemm_tile_steps(tiled, cache):
    fit = load_fit(tiled, cache)
    scores = {s.op: s for s in fit.scores}
    for op in ("qkv_proj", "gate_up_proj", "down_proj"):
        assert scores[op].family.endswith("+residual"), scores[op]
        assert scores[op].mape < min(0.03, scores[op].mape_law), scores[op]


def test_fit_is_cached_by_content(synthetic, tmp_path):
    first = load_fit(synthetic, tmp_path)
    again = load_fit(synthetic, tmp_path)
    assert not first.from_cache and again.from_cache
    assert again.laws == first.laws and again.residuals == first.residuals
    changed = tmp_path / "changed"
    changed.mkdir()
    for name in ("profile.csv", "metadata.json"):
        (changed / name).write_bytes((synthetic / name).read_bytes())
    with open(changed / "profile.csv", "a") as f:
        f.write("rmsnorm,,3,0,0,7168,0,0,0,0,0,0,0,0,7,0.02,0.02,0.02\n")
    assert not load_fit(changed, tmp_path).from_cache  # new content, new fit


@pytest.mark.parametrize("defect, message", [
    (lambda t, m: t.drop(columns=["p90_ms"]), "lacks columns ['p90_ms']"),
    (lambda t, m: t.assign(op=t["op"].replace("rope", "rotary")), "unknown ops ['rotary']"),
    (lambda t, m: t.assign(median_ms=t["median_ms"].where(t.index != 5, -1.0)), "row 7: median_ms=-1.0"),
    (lambda t, m: t.assign(p10_ms=t["p10_ms"].where(t.index != 3, 99.0)), "row 5 (qkv_proj)"),
    (lambda t, m: t[t["op"] != "silu_mul"], "has no rows for ['silu_mul']"),
    (lambda t, m: t[(t["op"] != "rope") | (t["tokens"] < 3)], "law group 'rope' has 2 points"),
    (lambda t, m: m.pop("tp") and t, "lacks 'tp'"),
])
def test_malformed_profile_fails_loudly(synthetic, tmp_path, defect, message):
    table = pd.read_csv(synthetic / "profile.csv", keep_default_na=False)
    meta = json.loads((synthetic / "metadata.json").read_text())
    table = defect(table, meta)
    table.to_csv(tmp_path / "profile.csv", index=False)
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_fit(tmp_path, tmp_path / "cache")


def test_missing_profile_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m profiler"):
        load_fit(tmp_path / "nowhere", tmp_path)


# ---- the fitted and transfer cost models ---------------------------------------------------------
@pytest.mark.parametrize("name, hardware", [("fitted", "h100"), ("transfer", "a100")])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_breakdown_sums_to_batch_time(synthetic, cache, yi, request, name, hardware, tp):
    cost_model = build_cost_model(yi, request.getfixturevalue(hardware), tp, name=name, profile_dir=synthetic,
                                  cache_dir=cache, max_tokens=1024)
    shapes = random_shapes(300, seed=tp)
    ops = cost_model.breakdown(columns(shapes))
    expected = np.array([cost_model.batch_time(s) for s in shapes])
    np.testing.assert_allclose(sum(ops.values()), expected, rtol=1e-9, atol=0)
    assert all(np.all(v >= 0) for v in ops.values())
    assert expected[0] == 0.0
    assert {"qkv_proj", "attn_prefill", "attn_decode", "lm_head", "sampling", "engine_iteration",
            "engine_requests"} <= set(ops)
    batch = Batch(decodes=[None] * 3, prefills=[None] * 2, num_prefill_tokens=700, decode_kv_tokens=3000,
                  prefill_kv_tokens=900, prefill_attn_pairs=250_000)
    assert cost_model.batch_time(batch) == cost_model.batch_time(BatchShape(700, 3, 2, 3000, 900, 250_000))


def test_fitted_refuses_a_profile_of_other_hardware(synthetic, cache, yi, a100):
    with pytest.raises(ValueError, match="use cost_model=transfer"):
        build_cost_model(yi, a100, 2, name="fitted", profile_dir=synthetic, cache_dir=cache)
    with pytest.raises(ValueError, match="needs a profile"):
        build_cost_model(yi, a100, 2, name="fitted")


def test_transfer_rescales_by_boundness(synthetic, cache, yi, h100, a100):
    fitted = build_cost_model(yi, h100, 2, name="fitted", profile_dir=synthetic, cache_dir=cache)
    transfer = build_cost_model(yi, a100, 2, name="transfer", profile_dir=synthetic, cache_dir=cache)
    assert transfer.label.startswith("predicted by transfer from profile")
    big, small = BatchShape(16384, 0, 1, 0, 16384, 0), BatchShape(0, 1, 0, 1, 0, 0)
    on = lambda model, shape: {k: float(v[0]) for k, v in model.breakdown(columns([shape])).items()}  # noqa: E731
    src_big, tgt_big = on(fitted, big), on(transfer, big)
    src_small, tgt_small = on(fitted, small), on(transfer, small)
    # 16,384 tokens: GEMMs compute-bound (peak bf16 ratio), norms bandwidth-bound (HBM ratio).
    assert tgt_big["gate_up_proj"] / src_big["gate_up_proj"] == pytest.approx(989 / 312, rel=0.01)
    assert tgt_big["rmsnorm"] / src_big["rmsnorm"] == pytest.approx(3350 / 1935, rel=0.01)
    # One decode token: the GEMM streams its weights (bandwidth-bound); a tiny kernel is all launch.
    assert tgt_small["gate_up_proj"] / src_small["gate_up_proj"] == pytest.approx(3350 / 1935, rel=0.03)
    assert tgt_small["rope_cos_sin"] / src_small["rope_cos_sin"] == pytest.approx(1.0, rel=0.01)


def test_other_shapes_follow_physics(tiled, cache, yi, h100):
    base = build_cost_model(yi, h100, 2, name="fitted", profile_dir=tiled, cache_dir=cache)
    wide = build_cost_model(ModelSpec(**{**vars(yi), "intermediate_size": 2 * yi.intermediate_size}), h100, 2,
                            name="fitted", profile_dir=tiled, cache_dir=cache)
    shape = columns([BatchShape(8192, 0, 1, 0, 8192, 8192 * 8193 // 2)])
    mlp = lambda ops: sum(float(ops[k][0]) for k in ("gate_up_proj", "down_proj", "silu_mul"))  # noqa: E731
    assert mlp(wide.breakdown(shape)) / mlp(base.breakdown(shape)) == pytest.approx(2.0, rel=0.05)
    # A Llama-2-7B-like model at TP=1, never measured: the same order as the analytical roofline.
    llama = ModelSpec("llama-7b-like", 32, 4096, 32, 32, 128, 11008, 32000)
    fitted = build_cost_model(llama, h100, 1, name="fitted", profile_dir=tiled, cache_dir=cache)
    analytical = build_cost_model(llama, h100, 1)
    assert " 0 of " in fitted.label and " 0 of " not in base.label  # residuals only at measured shapes
    for shape in (BatchShape(0, 64, 0, 64 * 2048, 0, 0), BatchShape(2048, 0, 1, 0, 2048, 2048 * 2049 // 2)):
        ratio = fitted.batch_time(shape) / analytical.batch_time(shape)
        assert 0.5 < ratio < 2.0, (shape, ratio)


def test_fitted_and_analytical_charge_the_same_logits_all_gather(synthetic, cache, yi, h100):
    shapes = columns([BatchShape(0, 1, 0, 1, 0, 0), BatchShape(0, 512, 0, 512 * 64, 0, 0)])
    fitted = build_cost_model(yi, h100, 2, name="fitted", profile_dir=synthetic, cache_dir=cache).breakdown(shapes)
    analytical = build_cost_model(yi, h100, 2).breakdown(shapes)
    np.testing.assert_allclose(fitted["logits_all_gather"], analytical["logits_all_gather"], rtol=1e-12)
    assert np.all(fitted["logits_all_gather"] > 0)


def test_measured_all_reduce_is_used(tmp_path, cache, yi, h100):
    directory = write_synthetic(tmp_path / "ar", load_yaml("model", "yi_34b.yaml"), 2,
                                load_yaml("hardware", "h100_80gb_hbm3.yaml"), all_reduce=True)
    cost_model = build_cost_model(yi, h100, 2, name="fitted", profile_dir=directory, cache_dir=cache)
    assert "all-reduce measured in the profile" in cost_model.label
    one = cost_model.breakdown(columns([BatchShape(0, 1000, 0, 1000, 0, 0)]))["all_reduce"][0]
    per_call = 20e-6 + 1000 * yi.hidden_size * 2 / 100e9
    assert one == pytest.approx((2 * yi.num_layers + 1) * per_call, rel=0.02)


# ---- commands and selection ---------------------------------------------------------------------
def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=120)


def parse_prediction(stdout: str) -> tuple[str, list[dict]]:
    comment, body = stdout.split("\n", 1)
    return comment, list(csv.DictReader(io.StringIO(body)))


def test_predict_prints_csv(synthetic, cache):
    result = run_module("profiler.predict", f"profiler.profile={synthetic}", f"profiler.cache_dir={cache}",
                        "hardware=a100_80gb_pcie_nvlink", "model.intermediate_size=40960",
                        "profiler.tokens=[1,16,256,1536]")
    assert result.returncode == 0, result.stderr
    comment, rows = parse_prediction(result.stdout)
    assert comment.startswith("# cost model: transfer: predicted by transfer")
    assert set(rows[0]) == {"operation", "batch", "tokens", "milliseconds"}
    assert {int(r["tokens"]) for r in rows} == {1, 16, 256, 1536}
    for batch in {(r["batch"], r["tokens"]) for r in rows}:
        mine = [r for r in rows if (r["batch"], r["tokens"]) == batch]
        ops = sum(float(r["milliseconds"]) for r in mine if r["operation"] != "total")
        total = [float(r["milliseconds"]) for r in mine if r["operation"] == "total"]
        assert total and ops == pytest.approx(total[0], rel=1e-4)


def test_predict_without_profile_uses_the_public_fit():
    result = run_module("profiler.predict", "parallel.tp=1", "profiler.tokens=[8]")
    assert result.returncode == 0, result.stderr
    comment, rows = parse_prediction(result.stdout)
    assert comment.startswith("# cost model: public: calibrated: public per-op measurements of H100") and len(rows) > 10
    # Without its own public fit the H100 borrows the one of the GPU with the nearest datasheet.
    result = run_module("profiler.predict", "parallel.tp=1", "profiler.tokens=[8]", "hardware.public_fit=null")
    assert result.returncode == 0, result.stderr
    assert parse_prediction(result.stdout)[0].startswith("# cost model: public: calibrated: transfer from the public fit")


def test_accuracy_prints_held_out_errors(synthetic, cache, tmp_path):
    result = run_module("profiler.accuracy", str(synthetic), "--cache-dir", str(cache), "--html",
                        str(tmp_path / "accuracy.html"))
    assert result.returncode == 0, result.stderr
    assert "held-out" in result.stdout and "gate_up_proj" in result.stdout and "<= 3% met" in result.stdout
    assert "650 TFLOP/s" in result.stdout
    assert (tmp_path / "accuracy.html").stat().st_size > 1_000_000  # plotly.js inlined: self-contained


def test_cost_model_for(tmp_path, synthetic, cache, yi):
    conf = tmp_path / "hardware"
    conf.mkdir()
    h100_cfg, a100_cfg = load_yaml("hardware", "h100_80gb_hbm3.yaml"), load_yaml("hardware", "a100_80gb_pcie_nvlink.yaml")
    h100_cfg, a100_cfg = ({**cfg, "profile": None, "public_fit": None} for cfg in (h100_cfg, a100_cfg))
    for name, cfg in (("h100", h100_cfg), ("a100", a100_cfg)):
        OmegaConf.save(cfg, conf / f"{name}.yaml")
    assert cost_model_for(yi, a100_cfg, 2, conf_dir=conf).name == "analytical"
    with pytest.raises(ValueError) as err:
        cost_model_for(yi, a100_cfg, 2, "fitted", conf_dir=conf)
    assert str(err.value) == ("cost_model=fitted needs a measured profile, and no conf/hardware config ships "
                              "one yet (profile: null); use cost_model=public or analytical, or run the "
                              "profiler on a GPU (docs/profiler.md)")
    with pytest.raises(ValueError, match="cost_model='profiled' is unknown"):
        cost_model_for(yi, a100_cfg, 2, "profiled", conf_dir=conf)
    # A given profile: fitted on the hardware it was measured for, transfer elsewhere.
    assert cost_model_for(yi, h100_cfg, 2, profile_dir=synthetic, cache_dir=cache).name == "fitted"
    assert cost_model_for(yi, a100_cfg, 2, profile_dir=synthetic, cache_dir=cache).name == "transfer"
    with pytest.raises(FileNotFoundError, match="has no metadata.json"):
        cost_model_for(yi, a100_cfg, 2, profile_dir=tmp_path)
    # A shipped profile: auto finds it through the hardware configs.
    OmegaConf.save({**h100_cfg, "profile": str(synthetic)}, conf / "h100.yaml")
    shipped = cost_model_for(yi, a100_cfg, 2, conf_dir=conf, cache_dir=cache)
    assert shipped.name == "transfer" and str(synthetic) in shipped.label


def test_auto_resolution(tmp_path, synthetic):
    conf = tmp_path / "hardware"
    conf.mkdir()
    h100_cfg, a100_cfg = load_yaml("hardware", "h100_80gb_hbm3.yaml"), load_yaml("hardware", "a100_80gb_pcie_nvlink.yaml")
    h100_cfg, a100_cfg = ({**cfg, "profile": None, "public_fit": None} for cfg in (h100_cfg, a100_cfg))
    OmegaConf.save(h100_cfg, conf / "h100.yaml")
    OmegaConf.save(a100_cfg, conf / "a100.yaml")
    assert resolve_cost_model_name(a100_cfg, "auto", conf) == "analytical"
    assert resolve_cost_model_name(a100_cfg, "fitted", conf) == "fitted"  # explicit requests pass through
    OmegaConf.save({**h100_cfg, "profile": str(synthetic)}, conf / "h100.yaml")
    assert resolve_cost_model_name({**h100_cfg, "profile": str(synthetic)}, "auto", conf) == "fitted"
    assert resolve_cost_model_name(a100_cfg, "auto", conf) == "transfer"
    assert shipped_profile_dir(a100_cfg, conf) == synthetic
    with pytest.raises(FileNotFoundError, match="set profile: null"):
        resolve_cost_model_name({**h100_cfg, "profile": str(tmp_path / "gone")}, "auto", conf)
