"""The cost-model interface, the hardware config and the analytical model (Yi-34B, A100/H100)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from profiler.all_reduce import AllReduceModel
from profiler.analytical import AnalyticalCostModel
from profiler.cost_model import build_cost_model
from profiler.hardware import HardwareSpec
from simulator.core.batch import Batch, BatchShape
from simulator.core.model_spec import ModelSpec

CONF = Path(__file__).resolve().parents[1] / "conf"
HARDWARE = ("a100_80gb_pcie_nvlink", "h100_80gb_hbm3")


def hardware_config(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / "hardware" / f"{name}.yaml"))


@pytest.fixture(scope="module")
def yi() -> ModelSpec:
    return ModelSpec.from_config(OmegaConf.load(CONF / "model" / "yi_34b.yaml"))


@pytest.fixture(scope="module")
def a100() -> HardwareSpec:
    return HardwareSpec.from_config(hardware_config("a100_80gb_pcie_nvlink"))


def decode(n: int, kv_each: int) -> BatchShape:
    return BatchShape(0, n, 0, n * kv_each, 0, 0)


def prefill(chunk: int, start: int = 0) -> BatchShape:
    return BatchShape(chunk, 0, 1, 0, start + chunk, chunk * start + chunk * (chunk + 1) // 2)


def random_shapes(count: int, seed: int) -> list[BatchShape]:
    rng = random.Random(seed)
    shapes = [BatchShape(0, 0, 0, 0, 0, 0), prefill(40_000)]  # empty, and beyond the initial tables
    for _ in range(count):
        decodes = rng.choice([0, rng.randint(1, 512)])
        chunks = [(rng.randint(1, 4096), rng.randint(0, 8192)) for _ in range(rng.randint(0, 3))]
        shapes.append(BatchShape(
            sum(c for c, _ in chunks), decodes, len(chunks), decodes * rng.randint(1, 8192),
            sum(s + c for c, s in chunks), sum(c * s + c * (c + 1) // 2 for c, s in chunks)))
    return shapes


def columns(shapes: list[BatchShape]) -> dict[str, np.ndarray]:
    return {f: np.array([getattr(s, f) for s in shapes]) for f in BatchShape.FIELDS}


# ---- the interface ------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", HARDWARE)
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_breakdown_sums_to_batch_time(yi, hw, tp):
    cost_model = build_cost_model(yi, HardwareSpec.from_config(hardware_config(hw)), tp, max_tokens=1024)
    shapes = random_shapes(300, seed=tp)
    ops = cost_model.breakdown(columns(shapes))
    total = sum(ops.values())
    expected = np.array([cost_model.batch_time(s) for s in shapes])
    np.testing.assert_allclose(total, expected, rtol=1e-9, atol=0)
    assert all(np.all(v >= 0) for v in ops.values())
    assert expected[0] == 0.0  # an empty batch runs nothing


def test_batch_and_shape_agree(yi, a100):
    cost_model = build_cost_model(yi, a100, 2)
    shape = BatchShape(700, 3, 2, 3 * 1000, 900, 250_000)
    batch = Batch(decodes=[None] * 3, prefills=[None] * 2, num_prefill_tokens=700,
                  decode_kv_tokens=3000, prefill_kv_tokens=900, prefill_attn_pairs=250_000)
    assert cost_model.batch_time(batch) == cost_model.batch_time(shape)


def test_unknown_cost_model_name(yi, a100):
    with pytest.raises(ValueError, match="cost_model=.profiled. is unknown.*analytical"):
        build_cost_model(yi, a100, 2, name="profiled")


# ---- shape of the analytical model -------------------------------------------------------------
@pytest.mark.parametrize("hw", HARDWARE)
def test_monotonic_in_tokens_and_kv(yi, hw):
    cost_model = build_cost_model(yi, HardwareSpec.from_config(hardware_config(hw)), 2)
    series = {
        "prefill chunk": [prefill(n) for n in range(1, 20_000, 7)],
        "prefill context": [prefill(512, start) for start in range(0, 16_384, 64)],
        "decode count": [decode(n, 1024) for n in range(1, 1024)],
        "decode kv": [decode(32, kv) for kv in range(1, 8192, 5)],
    }
    for name, shapes in series.items():
        times = np.array([cost_model.batch_time(s) for s in shapes])
        assert np.all(np.diff(times) >= 0), f"{name}: time decreases at {np.argmin(np.diff(times))}"
        assert times[-1] > times[0], name


def test_decode_time_linear_in_kv(yi, a100):
    """Decode attention is bandwidth-bound: each extra KV token costs its K and V bytes once."""
    cost_model = build_cost_model(yi, a100, 2)
    kv = np.arange(512, 8193, 512)
    times = np.array([cost_model.batch_time(decode(32, k)) for k in kv])
    slope = np.diff(times) / (32 * 512)
    per_token = yi.kv_bytes_per_token_per_rank(2) / (a100.mem_bandwidth * a100.efficiency.memory)
    np.testing.assert_allclose(slope, per_token, rtol=1e-6)


def test_tp1_has_no_all_reduce(yi, a100, tmp_path):
    # With tp=1 no all-reduce data is needed, not even a fallback entry.
    cfg = hardware_config("a100_80gb_pcie_nvlink")
    cfg["all_reduce"] = {"table": None, "collective": "all_reduce", "curves": []}
    cost_model = build_cost_model(yi, HardwareSpec.from_config(cfg), 1, data_dir=tmp_path)
    ops = cost_model.breakdown(columns(random_shapes(50, seed=1)))
    assert np.all(ops["all_reduce"] == 0)
    assert "no all-reduce" in cost_model.label
    shapes = columns(random_shapes(50, seed=1))
    tp2 = build_cost_model(yi, a100, 2).breakdown(shapes)
    has_tokens = shapes["num_prefill_tokens"] + shapes["num_decode_tokens"] > 0
    assert np.all((tp2["all_reduce"] > 0) == has_tokens)


@pytest.mark.parametrize("hw", HARDWARE)
def test_decode_is_weight_bandwidth_bound(yi, hw):
    """32 decodes read every weight once: the linear layers take weight bytes / bandwidth."""
    hardware = HardwareSpec.from_config(hardware_config(hw))
    ops = build_cost_model(yi, hardware, 2).breakdown(columns([decode(32, 2048)]))
    linears = sum(ops[k][0] for k in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"))
    weights = yi.weight_bytes_per_rank(2) / (hardware.mem_bandwidth * hardware.efficiency.memory)
    assert linears == pytest.approx(weights, rel=0.02)


def test_sampled_rows_ops_price_what_the_backend_runs(yi, a100):
    """Final norm, LM head, logits all-gather and sampling run on the sampled rows only (one per
    decode and per prompt chunk); sampling is one argmax over the gathered fp32 logits, and the
    all-gather costs an all-reduce of half the gathered bytes (backend/collectives.py)."""
    cost_model = build_cost_model(yi, a100, 2)
    ops = cost_model.breakdown(columns([prefill(16), prefill(16384), decode(1, 2048), decode(1024, 16)]))
    for op in ("final_norm", "lm_head", "logits_all_gather", "sampling"):
        assert ops[op][0] == ops[op][1] == ops[op][2] < ops[op][3], op
    logits = 1024 * yi.vocab_size * 4
    bandwidth = a100.mem_bandwidth * a100.efficiency.memory
    assert ops["sampling"][3] == pytest.approx(logits / bandwidth)
    table = AllReduceModel.for_workers(a100.all_reduce, 2)
    assert ops["logits_all_gather"][3] == pytest.approx(float(table.seconds(logits / 2)))
    single = build_cost_model(yi, a100, 1).breakdown(columns([decode(1024, 16)]))
    assert single["logits_all_gather"][0] == 0.0  # tp=1: the logits are all on the one rank


def test_sanity_ranges_a100(yi, a100):
    cost_model = build_cost_model(yi, a100, 2)
    assert 0.020 < cost_model.batch_time(decode(32, 2048)) < 0.060
    assert 0.25 < cost_model.batch_time(prefill(1536)) < 0.40


# ---- hardware config validation ------------------------------------------------------------------
def _set(cfg: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for key in path:
        cfg = cfg[key]
    if value is _DELETE:
        del cfg[last]
    else:
        cfg[last] = value


_DELETE = object()


@pytest.mark.parametrize("key, value, expected", [
    ("efficiency.matmul", 1.5, "hardware.efficiency.matmul=1.5 must be in (0, 1]"),
    ("peak_bf16_tflops", -312, "hardware.peak_bf16_tflops=-312 must be a number > 0"),
    ("mem_bandwidth_gbps", "fast", "hardware.mem_bandwidth_gbps='fast' must be a number > 0"),
    ("mem_bandwidth_gbps", _DELETE, "hardware.mem_bandwidth_gbps is missing"),
    ("cpu_overhead_ms", True, "hardware.cpu_overhead_ms=True must be a number >= 0"),
    ("efficiency.tensor", 0.9, "hardware.efficiency.tensor=0.9 is not a known key"),
    ("clock_mhz", 1410, "hardware.clock_mhz=1410 is not a known key"),
    ("all_reduce.curves", [{"num_workers": 1, "points": "2048:7 4096:8"}],
     "hardware.all_reduce.curves[0].num_workers=1 must be an integer >= 2"),
    ("all_reduce.table", 7, "hardware.all_reduce.table=7 must be a non-empty string or null"),
])
def test_bad_hardware_config_is_a_one_line_error(key, value, expected):
    cfg = hardware_config("a100_80gb_pcie_nvlink")
    _set(cfg, key, value)
    with pytest.raises(ValueError) as err:
        HardwareSpec.from_config(cfg)
    message = str(err.value)
    assert message.startswith(expected) and "\n" not in message


def test_hardware_configs_load(a100):
    h100 = HardwareSpec.from_config(hardware_config("h100_80gb_hbm3"))
    assert all(79 * 2**30 < h.memory_bytes < 80 * 2**30 for h in (a100, h100))  # CUDA totals of "80 GB" cards
    assert (a100.peak_bf16_tflops, h100.peak_bf16_tflops) == (312, 989)
    assert isinstance(build_cost_model(ModelSpec("tiny", 2, 64, 4, 2, 16, 128, 100), a100, 2),
                      AnalyticalCostModel)
