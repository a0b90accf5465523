"""The public calibration's per-group laws: RoPE's kernel-loop term with heads / head size as the
correction's widths (`profiler.calibrate.rope_terms`), the floor of GELU, LayerNorm and RoPE
(`FLOOR_GROUPS`), the selection by the mean of the few- and many-token errors, and the GEMM law's
larger trees."""
from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from profiler.calibrate import STREAM_PASSES, calibration_path, halves_mape, law_seconds, shape_features
from profiler.cost_model import build_cost_model
from profiler.cross_model import BOOSTING, GEMM_BOOSTING, Roofline, ShapeLaw, fit_roofline, fit_shape_law
from profiler.hardware import HardwareSpec
from profiler.public_profiles import PUBLIC_GPUS
from simulator.core.batch import BatchShape
from simulator.core.model_spec import ModelSpec
from simulator.core.paths import REPO_ROOT


def conf(group: str, name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / group / f"{name}.yaml"))


def rope(tokens, width, heads, gpu="h100", head_dim=128):
    return shape_features("rope", np.asarray(tokens, float), 0, 0, width, head_dim=head_dim, heads=heads,
                          gpu=PUBLIC_GPUS[gpu])


def test_rope_features_are_heads_head_size_and_the_kernel_loop_times_its_waves():
    tokens = np.array([1.0, 64.0, 528.0, 529.0, 4096.0])
    f = rope(tokens, 40 * 128, heads=20)  # InternLM-20B at TP 2: 20 query and 20 KV heads
    np.testing.assert_array_equal(f["n"], 40)  # rotated heads on this rank
    np.testing.assert_array_equal(f["k"], 128)
    # 512-thread blocks over 20 x 64 pairs: 3 + 3 iterations; H100 holds 132 SMs x 4 blocks = 528 tokens a wave
    np.testing.assert_array_equal(f["flops"], [6, 6, 6, 12, 48])
    np.testing.assert_array_equal(f["nbytes"], STREAM_PASSES["rope"] * tokens * 40 * 128 * 2)  # bytes as before
    # A40: 1,536 threads per SM hold 3 such blocks, 84 SMs: 252 tokens a wave
    np.testing.assert_array_equal(rope([252, 253], 40 * 128, heads=20, gpu="a40")["flops"], [6, 12])
    # Llama-2-70B at TP 8: 8 query heads fill 512 threads once, its one KV head a quarter of them once
    np.testing.assert_array_equal(rope([1], 9 * 128, heads=8)["flops"], [2])
    # Phi-2: the public rows rotate all 80 dims: 32 x 40 pairs over 512 threads, 3 + 3 iterations
    np.testing.assert_array_equal(rope([1], 64 * 80, heads=32, head_dim=80)["flops"], [6])
    with pytest.raises(ValueError, match="head_dim"):
        shape_features("rope", tokens, 0, 0, 40 * 128)
    with pytest.raises(ValueError, match="GPU"):
        shape_features("rope", tokens, 0, 0, 40 * 128, head_dim=128, heads=20)


def synthetic_rope(seed: int = 0):
    """A kernel whose few-token time is its block's loop (one block per token walking its row),
    bandwidth-bound at many tokens, with 1% noise."""
    rng = np.random.default_rng(seed)
    heads = np.array([4, 8, 16, 20, 32, 64], float)  # as many KV heads as query heads
    tokens = np.array([1, 4, 16, 64, 256, 1024, 4096], float)
    h, t = (a.ravel() for a in np.meshgrid(heads, tokens))
    f = rope(t, 2 * h * 128, heads=h)
    truth = 1.5e-6 + np.maximum(f["flops"] * 5e-7, f["nbytes"] / 2.5e12)
    return f, truth * (1 + 0.01 * rng.standard_normal(len(truth)))


def test_the_loop_term_tells_widths_apart_at_one_token():
    f, seconds = synthetic_rope()
    law = fit_shape_law(*(f[k] for k in ("tokens", "n", "k", "flops", "nbytes")), seconds, num_sms=132, correct=False)
    predicted = law_seconds(law, f)
    assert np.mean(np.abs(predicted / seconds - 1)) < 0.03
    one = f["tokens"] == 1
    # 64 vs 4 heads at one token: ~9.5 us vs ~2.5 us; a bytes-only roofline would give both ~1.5 us
    assert predicted[one].max() / predicted[one].min() == pytest.approx(seconds[one].max() / seconds[one].min(), rel=0.1)


@pytest.mark.parametrize("gpu", ["a100", "h100", "a40"])
def test_committed_rope_law_prices_wider_rows_slower_at_few_tokens(gpu):
    law = ShapeLaw.from_json(json.loads(calibration_path(gpu).read_text())["laws"]["rope"])
    assert law.roofline.s_per_flop > 0  # the loop term is fitted, not absent
    narrow = law_seconds(law, rope([1], 16 * 128, heads=8, gpu=gpu))[0]
    wide = law_seconds(law, rope([1], 128 * 128, heads=64, gpu=gpu))[0]
    assert wide > 1.5 * narrow


def test_a_floor_is_hidden_by_streaming_not_added_to_it():
    nbytes = np.geomspace(1e4, 1e9, 40)
    seconds = np.maximum(2e-6, nbytes / 7e11)  # a ~2 us kernel floor, then 700 GB/s
    floor = fit_roofline(np.zeros_like(nbytes), nbytes, seconds, floor=True)
    plain = fit_roofline(np.zeros_like(nbytes), nbytes, seconds)
    assert plain.floor_s == 0 and plain.p == 1
    assert floor.fixed_s + floor.floor_s == pytest.approx(2e-6, rel=0.1) and floor.p > 4
    errors = [np.mean(np.abs(r.seconds(np.zeros_like(nbytes), nbytes) / seconds - 1)) for r in (plain, floor)]
    assert errors[1] < 0.02 < errors[0]
    old = {"fixed_s": 1e-6, "s_per_flop": 0.0, "s_per_byte": 1e-12, "p": 1.0}  # a law committed before floors
    law = ShapeLaw.from_json({"roofline": old, "correction": None, "num_sms": 84})
    assert law.roofline.floor_s == 0 and ShapeLaw.from_json(law.to_json()) == law


@pytest.mark.parametrize("gpu", ["a100", "h100", "a40"])
def test_committed_floors_are_where_they_were_measured_to_help(gpu):
    laws = json.loads(calibration_path(gpu).read_text())["laws"]
    for group in ("rope", "gelu", "layernorm"):
        assert laws[group]["roofline"]["floor_s"] > 0
    for group in ("gemm", "rmsnorm", "silu_mul", "embedding"):
        assert laws[group]["roofline"]["floor_s"] == 0


def test_selection_weighs_the_few_token_points_as_the_goals_do():
    tokens = np.array([1, 16, 64, 256, 1024, 4096, 2048, 512])
    ape = np.array([0.2, 0.2, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05])
    assert halves_mape(ape, tokens) == pytest.approx((0.2 + 0.05) / 2)
    assert halves_mape(ape[2:], tokens[2:]) == pytest.approx(0.05)  # no few-token points: the rest alone


def test_public_rope_without_shared_is_the_same(tmp_path):
    yi = ModelSpec.from_config(conf("model", "yi_34b"))
    h100 = HardwareSpec.from_config(conf("hardware", "h100_80gb_hbm3"))
    shape = {k: np.array([v]) for k, v in vars(BatchShape(0, 8, 0, 8 * 1024, 0, 0)).items()}
    without = build_cost_model(yi, h100, 2, name="public", data_dir=tmp_path).breakdown(shape)["rope"][0]
    with_shared = build_cost_model(yi, h100, 2, name="public").breakdown(shape)["rope"][0]
    assert without == with_shared > 0


@pytest.mark.parametrize("gpu", ["a100", "h100", "a40"])
def test_committed_gemm_law_has_the_gemm_trees_and_the_others_the_default(gpu):
    laws = json.loads(calibration_path(gpu).read_text())["laws"]

    def shape(group: str) -> tuple[int, int]:
        trees = laws[group]["correction"]["trees"]
        return len(trees), max(sum(1 for left in t["left"] if left == 0) for t in trees)

    assert shape("gemm") == (GEMM_BOOSTING["max_iter"], GEMM_BOOSTING["max_leaf_nodes"])
    assert shape("silu_mul") == (BOOSTING["max_iter"], BOOSTING["max_leaf_nodes"])


def test_hidden_wide_ops_see_the_tp_degree_as_k():
    tokens = np.array([1.0, 2048.0])
    for op in ("rmsnorm", "embedding"):
        f = shape_features(op, tokens, 0, 0, 4096, tp=4)
        assert (f["n"], f["k"]) == (4096, 4)
        with pytest.raises(ValueError, match="tensor-parallel"):
            shape_features(op, tokens, 0, 0, 4096)
    assert shape_features("silu_mul", tokens, 0, 0, 11008 // 4)["k"] == 1  # its width carries TP already


def test_committed_a100_norm_prices_the_tp_runs_apart():
    # Measured: the same norm at 2K tokens is ~35% slower in the TP-1 runs than in the TP-8 ones.
    law = ShapeLaw.from_json(json.loads(calibration_path("a100").read_text())["laws"]["rmsnorm"])
    tp1, tp8 = (law_seconds(law, shape_features("rmsnorm", np.array([2048.0]), 0, 0, 4096, tp=tp))[0] for tp in (1, 8))
    assert tp1 > 1.05 * tp8


def test_public_cost_model_prices_the_norm_at_its_own_tp():
    llama = ModelSpec.from_config(conf("model", "llama_2_7b"))
    a100 = HardwareSpec.from_config(conf("hardware", "a100_80gb_pcie_nvlink"))
    shape = {k: np.array([v]) for k, v in vars(BatchShape(0, 2048, 0, 2048 * 1024, 0, 0)).items()}
    norm = {tp: build_cost_model(llama, a100, tp, name="public").breakdown(shape)["rmsnorm"][0] for tp in (1, 4)}
    assert norm[1] > 1.05 * norm[4]


def test_token_folds_deal_sorted_rows_round_robin():
    from profiler.calibrate import token_folds

    tokens = np.array([64, 1, 8, 2, 4, 16, 32])
    folds = token_folds(tokens, 3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(tokens)))
    assert [sorted(tokens[f].tolist()) for f in folds] == [[1, 8, 64], [2, 16], [4, 32]]


@pytest.mark.parametrize("gpu", ["a100", "h100", "a40"])
def test_one_model_groups_record_their_leaf_size_chosen_by_token_folds(gpu):
    from profiler.calibrate import LEAF_GRID

    selection = json.loads(calibration_path(gpu).read_text())["selection"]
    for group in ("gelu", "layernorm"):
        cv = selection[group]["token_cv"]
        errors = {int(k): v for k, v in cv["min_samples_leaf"].items()}
        assert set(errors) == set(LEAF_GRID) and cv["chosen_min_samples_leaf"] in LEAF_GRID
        assert errors[cv["chosen_min_samples_leaf"]] == min(errors.values())
        assert selection[group]["correction"] == (min(errors.values()) < cv["roofline"])
    assert all("token_cv" not in selection[g] for g in ("gemm", "rmsnorm", "rope", "silu_mul", "embedding"))
