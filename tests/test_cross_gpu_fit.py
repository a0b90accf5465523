"""The public calibration's per-group laws: RoPE's per-row term with heads / head size as the
correction's widths (`profiler.calibrate.rope_terms`), and the GEMM law's larger trees."""
from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from profiler.calibrate import STREAM_PASSES, calibration_path, law_seconds, shape_features
from profiler.cost_model import build_cost_model
from profiler.cross_model import BOOSTING, GEMM_BOOSTING, ShapeLaw, fit_shape_law
from profiler.hardware import HardwareSpec
from simulator.core.batch import BatchShape
from simulator.core.model_spec import ModelSpec
from simulator.core.paths import REPO_ROOT


def conf(group: str, name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / group / f"{name}.yaml"))


def test_rope_features_are_heads_head_size_and_the_row_width():
    tokens = np.array([1.0, 64.0, 4096.0])
    f = shape_features("rope", tokens, 0, 0, 40 * 128, head_dim=128)
    np.testing.assert_array_equal(f["n"], 40)  # rotated heads on this rank
    np.testing.assert_array_equal(f["k"], 128)
    np.testing.assert_array_equal(f["flops"], 40 * 128)  # one row's work, whatever the token count
    np.testing.assert_array_equal(f["nbytes"], STREAM_PASSES["rope"] * tokens * 40 * 128 * 2)  # bytes as before
    with pytest.raises(ValueError, match="head_dim"):
        shape_features("rope", tokens, 0, 0, 40 * 128)


def synthetic_rope(seed: int = 0):
    """A kernel whose few-token time grows with the row width (one block per token walking its row),
    bandwidth-bound at many tokens, with 1% noise."""
    rng = np.random.default_rng(seed)
    widths = np.array([1024, 2048, 4096, 5120, 9216, 16384], float)
    tokens = np.array([1, 4, 16, 64, 256, 1024, 4096], float)
    w, t = (a.ravel() for a in np.meshgrid(widths, tokens))
    f = shape_features("rope", t, 0, 0, w, head_dim=128)
    truth = 1.5e-6 + np.maximum(w * 4e-10, f["nbytes"] / 2.5e12)
    return f, truth * (1 + 0.01 * rng.standard_normal(len(truth)))


def test_the_row_term_tells_widths_apart_at_one_token():
    f, seconds = synthetic_rope()
    law = fit_shape_law(*(f[k] for k in ("tokens", "n", "k", "flops", "nbytes")), seconds, num_sms=132, correct=False)
    predicted = law_seconds(law, f)
    assert np.mean(np.abs(predicted / seconds - 1)) < 0.03
    one = f["tokens"] == 1
    # 16K wide vs 1K wide at one token: ~8 us vs ~1.9 us; a bytes-only roofline would give both ~1.5 us
    assert predicted[one].max() / predicted[one].min() == pytest.approx(seconds[one].max() / seconds[one].min(), rel=0.1)


@pytest.mark.parametrize("gpu", ["a100", "h100", "a40"])
def test_committed_rope_law_prices_wider_rows_slower_at_few_tokens(gpu):
    law = ShapeLaw.from_json(json.loads(calibration_path(gpu).read_text())["laws"]["rope"])
    assert law.roofline.s_per_flop > 0  # the per-row term is fitted, not absent
    narrow = law_seconds(law, shape_features("rope", np.array([1.0]), 0, 0, 16 * 128, head_dim=128))[0]
    wide = law_seconds(law, shape_features("rope", np.array([1.0]), 0, 0, 128 * 128, head_dim=128))[0]
    assert wide > 1.5 * narrow


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
