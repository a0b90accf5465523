"""The calibration on public measurements: ingest, cross-model laws, the `public` cost model, the
engine term, and the committed parameters working without ../shared."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from profiler.calibrate import CALIBRATION_DIR, best_other_model_error, calibration_path
from profiler.cost_model import build_cost_model, cost_model_for, resolve_cost_model_name
from profiler.cross_model import ShapeLaw, fit_shape_law
from profiler.engine_fit import Iterations, fit_engine, read_iterations
from profiler.engine_model import EngineModel, engine_model_for
from profiler.hardware import HardwareSpec
from profiler.public_profiles import read_public
from simulator.core.batch import BatchShape
from simulator.core.model_spec import ModelSpec
from simulator.core.paths import REPO_ROOT

CONF = REPO_ROOT / "conf"
OPS = ("emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
       "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")


def load(group: str, name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / group / f"{name}.yaml"))


def model(name: str) -> ModelSpec:
    return ModelSpec.from_config(load("model", name))


def hardware(name: str) -> HardwareSpec:
    return HardwareSpec.from_config(load("hardware", name))


def write_public_csv(root: Path, gpu: str, folder: str, shape: dict, rows: list[dict]) -> Path:
    path = root / "public_profiles" / "compute" / gpu / folder / "mlp.csv.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([{**{f"time_stats.{op}.median": r["ms"][op] for op in OPS if op in r["ms"]}, **shape,
                           "num_tokens": r["tokens"], "num_tensor_parallel_workers": r["tp"]} for r in rows])
    with gzip.open(path, "wt") as f:
        table.to_csv(f, index=False)
    return path


LLAMA2_7B = {"n_head": 32, "n_kv_head": 32, "n_embd": 4096, "n_expanded_embd": 11008, "vocab_size": 32768,
             "use_gated_mlp": True}


def test_public_columns_map_onto_our_ops(tmp_path):
    ms = {op: 0.010 * (i + 1) for i, op in enumerate(OPS)}
    repeat = {**ms, "attn_pre_proj": 0.050}  # the same shape measured twice: the median is kept
    write_public_csv(tmp_path, "a100", "meta-llama/Llama-2-7b-hf", LLAMA2_7B,
                     [{"tokens": 16, "tp": 1, "ms": ms}, {"tokens": 16, "tp": 1, "ms": repeat},
                      {"tokens": 16, "tp": 2, "ms": ms}])
    table = read_public(tmp_path, "a100")
    one = table[table["tp"] == 1].set_index("op")
    qkv = one.loc["qkv_proj"]
    assert (qkv["k_in"], qkv["k_out"], qkv["tokens"]) == (4096, 3 * 4096, 16)
    assert qkv["median_ms"] == pytest.approx((0.030 + 0.050) / 2)
    assert (one.loc["gate_up_proj", "k_in"], one.loc["gate_up_proj", "k_out"]) == (4096, 2 * 11008)  # gate and up fused
    assert (one.loc["down_proj", "k_in"], one.loc["down_proj", "k_out"]) == (11008, 4096)
    assert one.loc["silu_mul", "width"] == 11008 and one.loc["silu_mul", "median_ms"] == pytest.approx(0.080)
    norms = sorted(one.loc["rmsnorm", "median_ms"])  # our op is norm + residual add, one row per norm
    assert norms == pytest.approx([0.020 + 0.100, 0.060 + 0.100])
    assert one.loc["embedding", "median_ms"] == pytest.approx(0.010) and one.loc["rope", "width"] == 64 * 128
    two = table[table["tp"] == 2].set_index("op")
    assert two.loc["qkv_proj", "k_out"] == 3 * 4096 // 2 and two.loc["down_proj", "k_in"] == 11008 // 2


def test_phi2_maps_to_its_own_kernels(tmp_path):
    shape = {"n_head": 32, "n_kv_head": 32, "n_embd": 2560, "n_expanded_embd": 10240, "vocab_size": 51200,
             "use_gated_mlp": False}
    ms = {op: 0.01 for op in OPS if op != "post_attention_layernorm"}
    write_public_csv(tmp_path, "h100", "microsoft/phi-2", shape, [{"tokens": 8, "tp": 1, "ms": ms}])
    ops = read_public(tmp_path, "h100").set_index("op")
    assert {"gelu", "layernorm"} <= set(ops.index) and not {"silu_mul", "rmsnorm"} & set(ops.index)
    assert ops.loc["gate_up_proj", "k_out"] == 10240  # not gated: up alone


def test_malformed_public_file_is_one_line(tmp_path):
    path = write_public_csv(tmp_path, "a100", "meta-llama/Llama-2-7b-hf", LLAMA2_7B,
                            [{"tokens": 1, "tp": 1, "ms": {op: 0.01 for op in OPS if op != "mlp_act"}}])
    with pytest.raises(ValueError, match=r"lacks columns \['time_stats.mlp_act.median'\]") as err:
        read_public(tmp_path, "a100")
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="shared_data_dir"):
        read_public(tmp_path / "nowhere", "a100")


def synthetic_gemms(seed: int = 0):
    """Points of a known roofline over many GEMM shapes, with 1% noise."""
    rng = np.random.default_rng(seed)
    shapes = [(4096, 12288), (4096, 4096), (8192, 28672), (5120, 13824), (2560, 10240), (8192, 1024)]
    m = np.array([1, 2, 8, 16, 64, 128, 256, 512, 1024, 2048, 4096], float)
    k, n = (np.repeat([s[i] for s in shapes], len(m)).astype(float) for i in (0, 1))
    tokens = np.tile(m, len(shapes))
    flops, nbytes = 2 * tokens * n * k, 2 * (n * k + tokens * (n + k))
    truth = 6e-6 + ((flops / 2.2e14) ** 2.0 + (nbytes / 1.6e12) ** 2.0) ** 0.5
    return tokens, n, k, flops, nbytes, truth * (1 + 0.01 * rng.standard_normal(len(truth)))


def test_fit_recovers_a_known_roofline():
    tokens, n, k, flops, nbytes, seconds = synthetic_gemms()
    law = fit_shape_law(tokens, n, k, flops, nbytes, seconds, num_sms=108, correct=False).roofline
    assert 1 / law.s_per_flop == pytest.approx(2.2e14, rel=0.05)
    assert 1 / law.s_per_byte == pytest.approx(1.6e12, rel=0.05)
    assert law.p == pytest.approx(2.0, rel=0.15)
    assert law.fixed_s == pytest.approx(6e-6, rel=0.25)


def test_learned_correction_captures_a_staircase_and_round_trips():
    tokens, n, k, flops, nbytes, seconds = synthetic_gemms()
    steps = np.where(np.ceil(tokens / 128) * 128 / tokens > 1.5, 1.3, 1.0)  # padding of the last row tile
    seconds = seconds * steps
    plain = fit_shape_law(tokens, n, k, flops, nbytes, seconds, 108, correct=False)
    corrected = fit_shape_law(tokens, n, k, flops, nbytes, seconds, 108, correct=True)
    mape = [np.mean(np.abs(law.seconds(tokens, n, k, flops, nbytes) / seconds - 1)) for law in (plain, corrected)]
    assert mape[1] < mape[0] / 2
    again = ShapeLaw.from_json(json.loads(json.dumps(corrected.to_json())))
    np.testing.assert_allclose(again.seconds(tokens, n, k, flops, nbytes), corrected.seconds(tokens, n, k, flops, nbytes),
                               rtol=1e-7)


@pytest.mark.parametrize("gpu", ["a100", "h100", "a40"])
def test_committed_calibration_has_provenance_and_meets_in_sample_sanity(gpu):
    c = json.loads(calibration_path(gpu).read_text())
    assert "vidur" in c["source"] and c["command"].startswith("python -m profiler.calibrate") and c["created"]
    assert len(c["models"]) >= 5 and c["rows"] > 10_000
    linear = [s for s in c["scores"] if s["op"] in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")]
    assert len(linear) == 4 and all(s["held_out_mape_large"] is not None for s in linear)


def test_a_never_measured_model_gets_public_predictions(tmp_path):
    yi, a100 = model("yi_34b"), hardware("a100_80gb_pcie_nvlink")
    public = build_cost_model(yi, a100, 2, name="public", data_dir=tmp_path)  # no ../shared: committed numbers only
    assert public.op_sources["qkv_proj"].startswith("public fit") and public.op_sources["attn_prefill"] == "analytical"
    ops = public.breakdown({k: np.array([v]) for k, v in vars(BatchShape(4096, 0, 1, 0, 4096, 4096 * 4097 // 2)).items()})
    flops = 2 * 4096 * 7168 * (28 + 8) * 128 * 60  # QKV of all 60 layers at TP-2
    assert 0.4 < flops / ops["qkv_proj"][0] / 312e12 < 0.95  # a plausible share of the A100's peak
    with_shared = build_cost_model(yi, a100, 2, name="public")
    assert with_shared.breakdown({k: np.array([v]) for k, v in vars(BatchShape(4096, 0, 1, 0, 4096, 1)).items()})[
        "gate_up_proj"][0] == ops["gate_up_proj"][0]


def test_other_architectures_are_priced_as_themselves():
    phi, a100 = model("phi_2"), hardware("a100_80gb_pcie_nvlink")
    assert not phi.is_llama and "gelu MLP" in phi.architecture()
    public = build_cost_model(phi, a100, 1, name="public")
    analytical = build_cost_model(phi, a100, 1)
    shape = {k: np.array([v]) for k, v in vars(BatchShape(512, 0, 1, 0, 512, 512 * 513 // 2)).items()}
    gated = build_cost_model(ModelSpec(**{**vars(phi), "mlp": "gated_silu"}), a100, 1).breakdown(shape)
    assert analytical.breakdown(shape)["gate_up_proj"][0] < gated["gate_up_proj"][0]  # half the up projection
    assert public.breakdown(shape)["silu_mul"][0] > 0
    with pytest.raises(ValueError, match="prices the GPU backend's Llama operations.*cost_model=public"):
        build_cost_model(phi, a100, 1, name="fitted", profile_dir=REPO_ROOT)


def test_auto_prefers_public_and_transfers_it(tmp_path):
    yi = model("yi_34b")
    a100_cfg = load("hardware", "a100_80gb_pcie_nvlink")
    assert resolve_cost_model_name(a100_cfg, "auto", CONF / "hardware", yi) == "public"
    other = {**a100_cfg, "name": "A100-80GB SXM (test)", "mem_bandwidth_gbps": 2039, "public_fit": None}
    moved = cost_model_for(yi, other, 2, "auto")
    assert moved.name == "public" and "transfer from the public fit of A100-80GB" in moved.label


def test_time_scale_doubles_every_batch_time():
    yi, cfg = model("yi_34b"), load("hardware", "a100_80gb_pcie_nvlink")
    shapes = [BatchShape(1536, 0, 1, 0, 1536, 1536 * 1537 // 2), BatchShape(0, 64, 0, 64 * 2000, 0, 0),
              BatchShape(700, 30, 2, 30 * 900, 1200, 300_000)]
    for name in ("analytical", "public"):
        one = cost_model_for(yi, cfg, 2, {"name": name, "time_scale": 1.0})
        two = cost_model_for(yi, cfg, 2, {"name": name, "time_scale": 2.0})
        for s in shapes:
            assert two.batch_time(s) == pytest.approx(2 * one.batch_time(s), rel=1e-12)
        columns = {k: np.array([getattr(s, k) for s in shapes]) for k in BatchShape.FIELDS}
        np.testing.assert_allclose(sum(two.breakdown(columns).values()), [two.batch_time(s) for s in shapes], rtol=1e-12)
    with pytest.raises(ValueError, match=r"cost_model.time_scale=0 must be a number > 0"):
        cost_model_for(yi, cfg, 2, {"name": "auto", "time_scale": 0})


def test_engine_fit_recovers_a_known_engine_term():
    rng = np.random.default_rng(1)
    requests = np.array([1, 1, 1, 1, 1, 1, 2, 4, 8, 16, 32, 64, 128], float)
    tokens = np.array([128, 512, 1024, 2048, 4096, 8192, 2, 4, 8, 16, 32, 64, 128], float)
    kernel = 0.03 + 1e-4 * tokens
    attention = np.where(requests == 1, 1e-9 * tokens ** 2, 0.0)
    truth = kernel + 0.5 * attention + 0.012 + 0.0009 * requests  # attention factor 1.5
    seconds = truth * (1 + 0.002 * rng.standard_normal(len(truth)))
    it = Iterations(["x"] * len(requests), [], requests, tokens, seconds, [])
    fit = fit_engine(it, kernel, attention, "synthetic")
    assert fit.form.startswith("per_request")
    assert fit.engine.per_iteration_s == pytest.approx(0.012, rel=0.1)
    assert fit.engine.per_request_s == pytest.approx(0.0009, rel=0.1)
    assert fit.attention_factor == pytest.approx(1.5, rel=0.05)
    assert max(abs(r["error"]) for r in fit.rows) < 0.02


def test_engine_fit_recovers_a_step_in_the_decode_count():
    """Decode batches that step up between 4 and 8 requests (as the artifact's do): a decode-step
    form wins, and prompts alone (no decodes) pay none of the step."""
    requests = np.array([1, 1, 1, 1, 1, 1, 2, 4, 8, 16, 32, 64, 128], float)
    kind = ["prefill"] * 6 + ["decode"] * 7
    tokens = np.array([128, 512, 1024, 2048, 4096, 8192, 2, 4, 8, 16, 32, 64, 128], float)
    kernel = 0.03 + 1e-4 * tokens
    attention = np.where(requests == 1, 1e-9 * tokens ** 2, 0.0) * (np.array(kind) == "prefill")
    decodes = np.where(np.array(kind) == "decode", requests, 0.0)
    truth = kernel + 0.01 + 0.001 * requests + np.where(decodes >= 8, 0.02, 0.0)
    it = Iterations(kind, [], requests, tokens, truth, [])
    fit = fit_engine(it, kernel, attention, "synthetic")
    assert fit.form.startswith("decode_steps")
    assert max(abs(r["error"]) for r in fit.rows) < 0.01
    e = fit.engine
    assert e.decode_seconds(np.array([0.0]))[0] == 0  # a prompt-only batch pays no decode step
    assert e.decode_seconds(np.array([16.0]))[0] - e.decode_seconds(np.array([4.0]))[0] == pytest.approx(0.02, abs=0.003)


def test_engine_measurements_missing_or_malformed_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="artifact_a100_yi34b_tp2"):
        read_iterations(tmp_path)
    folder = tmp_path / "artifact_a100_yi34b_tp2"
    folder.mkdir()
    (folder / "prefill_batch_times.csv").write_text("batch_num_tokens,batch_size\n128,1\n")
    with pytest.raises(ValueError, match=r"lacks columns .*batch_execution_time") as err:
        read_iterations(tmp_path)
    assert "\n" not in str(err.value)
    header = "batch_num_tokens,batch_num_decode_tokens,batch_num_prefill_tokens,Batch Id,batch_size,batch_execution_time\n"
    (folder / "prefill_batch_times.csv").write_text(header + "128,0,128,2,1,fast\n")
    with pytest.raises(ValueError, match=r"row 2: batch_execution_time='fast'"):
        read_iterations(tmp_path)


def test_engine_model_choices():
    a100 = hardware("a100_80gb_pcie_nvlink")
    assert engine_model_for({"name": "none"}, a100).request_seconds(np.array([5.0]))[0] == 0
    assert engine_model_for("hardware", a100).per_iteration_s == a100.cpu_overhead_ms * 1e-3
    with pytest.raises(ValueError, match="engine_model='vidur' is unknown"):
        engine_model_for({"name": "vidur"}, a100)
    steps = EngineModel("s", "s", step_decodes=(1.0, 4.0), step_seconds=(0.01, 0.03))
    assert steps.decode_seconds(np.array([2.0]))[0] == pytest.approx(0.02)  # halfway in log D
    np.testing.assert_allclose(steps.decode_seconds(np.array([0.0, 1.0, 64.0])), [0.0, 0.01, 0.03])


def test_committed_engine_fit_loads():
    path = CALIBRATION_DIR / "engine_sarathi_artifact_a100.json"
    fit = json.loads(path.read_text())
    assert "sarathi-serve" in fit["source"] and fit["rows_used"] == 15 and "warm-up" in fit["excluded"][0]
    engine = engine_model_for("sarathi_artifact_a100", hardware("a100_80gb_pcie_nvlink"))
    assert engine.request_seconds(np.array([128.0]))[0] > engine.request_seconds(np.array([1.0]))[0]
    assert fit["form"].startswith("decode_steps") and fit["loo_mape"][fit["form"]] == min(fit["loo_mape"].values())
    assert engine.decode_seconds(np.array([8.0]))[0] > engine.decode_seconds(np.array([4.0]))[0]


def test_best_other_model_yardstick_finds_a_rescaled_twin_and_not_a_different_shape():
    tokens = np.array([1, 8, 32, 64, 128, 256, 512, 1024, 2048], float)
    smooth = 10 + tokens / 50
    steps = 10 * np.ceil(tokens / 300)  # a staircase no other curve has
    curves = {("qkv_proj", "a", 1): smooth, ("o_proj", "b", 2): 3 * smooth, ("qkv_proj", "c", 1): steps}
    rows = pd.DataFrame([{"op": op, "model": m, "tp": tp, "tokens": t, "median_ms": v}
                         for (op, m, tp), times in curves.items() for t, v in zip(tokens, times)])
    ape = best_other_model_error(rows)
    twins = rows["model"].isin(["a", "b"]).to_numpy()
    np.testing.assert_allclose(ape[twins], 0, atol=1e-12)  # any op, any TP, any scale: a twin is a twin
    assert ape[~twins & (rows["tokens"] >= 256).to_numpy()].mean() > 0.05  # its steps are in no other curve


def test_calibrating_a_model_the_gpu_lacks_is_one_line(tmp_path, capsys):
    from profiler.calibrate import main

    write_public_csv(tmp_path, "a100", "meta-llama/Llama-2-7b-hf", LLAMA2_7B,
                     [{"tokens": 1, "tp": 1, "ms": {op: 0.01 for op in OPS}}])
    assert main(["gpu=a100", "models=llama_2_7b,yi_34b", f"shared_data_dir={tmp_path}", f"out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: models=yi_34b: not measured on a100; choose from llama_2_7b"
    assert not (tmp_path / "out").exists()
    # one GPU has the model, the next does not: no GPU's calibration is written
    write_public_csv(tmp_path, "h100", "microsoft/phi-2", {**LLAMA2_7B, "n_embd": 2560},
                     [{"tokens": 1, "tp": 1, "ms": {op: 0.01 for op in OPS}}])
    assert main(["gpu=a100,h100", "models=llama_2_7b", f"shared_data_dir={tmp_path}", f"out={tmp_path / 'out'}"]) == 2
    assert capsys.readouterr().err.strip() == "error: models=llama_2_7b: not measured on h100; choose from phi_2"
    assert not (tmp_path / "out").exists()
    assert main(["gpu=a100", "models=", f"shared_data_dir={tmp_path}", f"out={tmp_path / 'out'}"]) == 2
    assert capsys.readouterr().err.strip() == "error: models= names no model; choose from llama_2_7b (a100)"


def test_accuracy_table_prints_the_yardstick_beside_the_held_out_error(tmp_path, capsys):
    from profiler.public_accuracy import main

    assert main(["source=public", "gpu=h100"], tmp_path) == 0  # committed numbers, no ../shared
    out = capsys.readouterr().out
    qkv = next(line.split() for line in out.splitlines() if line.strip().startswith("qkv_proj"))
    c = json.loads(calibration_path("h100").read_text())
    score = next(s for s in c["scores"] if s["op"] == "qkv_proj")
    assert qkv[5:7] == [f"{score['best_other_model_mape_small']:.1%}", f"{score['best_other_model_mape_large']:.1%}"]
    assert "best other:" in out
