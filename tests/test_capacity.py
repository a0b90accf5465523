"""Capacity search: the bisection on a known threshold, SLO definitions, probe caching, and one
small end-to-end run of `python -m experiments.capacity`."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from experiments.capacity import (SLO, Configuration, ProbeCache, bisect_capacity, plan, probe,
                                  reference_decode_time, resolve_slos, search_all, with_qps)
from simulator.cli import to_dict
from simulator.core.paths import REPO_ROOT
from simulator.core.schedulers import make_scheduler
from simulator.engine import simulate
from simulator.run import make_requests, prepare


def drive(threshold: float, start=1.0, tolerance=0.05, min_qps=1 / 64) -> tuple[float, list[float]]:
    gen = bisect_capacity(start, tolerance, min_qps)
    probes = [next(gen)]
    try:
        while True:
            probes.append(gen.send(probes[-1] <= threshold))
    except StopIteration as done:
        return done.value, probes


@pytest.mark.parametrize("threshold", [0.0371, 0.29, 0.999, 1.0, 1.4375, 3.3, 17.0])
def test_bisection_brackets_a_known_threshold_within_tolerance(threshold):
    capacity, probes = drive(threshold)
    failing = [q for q in probes if q > threshold]
    assert capacity <= threshold < min(failing)
    assert min(failing) - capacity <= 0.05 * capacity
    assert len(probes) == len(set(probes)), "a QPS was probed twice"
    assert len(probes) <= 12


def test_bisection_gives_zero_when_even_the_floor_fails():
    capacity, probes = drive(0.001)
    assert capacity == 0.0 and min(probes) < 1 / 32 and all(q >= 1 / 64 for q in probes)


def test_slo_definitions_and_bad_specs():
    strict, absolute = resolve_slos({"strict": {"p99_tbt_x": 5}, "abs": {"p99_tbt_s": 0.3}}, 2.0, 0.04)
    assert strict.p99_tbt_s == pytest.approx(0.2) and absolute.p99_tbt_s == 0.3
    passing = {"conservation_ok": True, "p99_tbt_s": 0.19, "p50_scheduling_delay_s": 1.0}
    assert strict.met_by(passing)
    assert not strict.met_by({**passing, "p50_scheduling_delay_s": 2.5}), "queueing without end passed"
    assert not strict.met_by({**passing, "p99_tbt_s": 0.21})
    for bad in ({"p99_tbt_x": 5, "p99_tbt_s": 1}, {"p99": 1}, {"p99_tbt_s": -1}):
        with pytest.raises(ValueError, match="capacity.slos.s"):
            resolve_slos({"s": bad}, 2.0, 0.04)


def test_time_scale_two_doubles_every_batch_time(tmp_path):
    """The band's lever (cost_model.time_scale, as capacity passes it): the same burst, the same
    batches in the same order, each twice as long."""
    config = compose_capacity(["capacity.num_requests=60", "capacity.time_scales=[1.0,2.0]"], tmp_path)
    conf = {c.time_scale: c for c in plan(config) if c.scheduler_label == "vllm" and c.slo.name == "strict"}
    batches = {}
    for factor, c in conf.items():
        run_cfg = c.runs[42]
        run_cfg["workload"]["arrival"]["kind"] = "static"
        run_cfg["workload"]["arrival"]["qps"] = 1.0
        setup = prepare(run_cfg)
        batches[factor] = simulate(make_requests(setup.workload),
                                   make_scheduler("vllm", setup.scheduler_config, setup.num_blocks),
                                   setup.cost_model.batch_time).finalize().batches
    nominal, doubled = batches[1.0], batches[2.0]
    for column in ("num_prefill_tokens", "num_decode_tokens", "decode_kv_tokens", "num_emitted_tokens"):
        assert np.array_equal(nominal[column], doubled[column]), column
    assert np.allclose(doubled["duration"], 2 * nominal["duration"], rtol=1e-12, atol=0)
    assert np.allclose(doubled["end"], 2 * nominal["end"], rtol=1e-12, atol=0)


def test_search_rounds_share_probes_between_slos():
    """A synthetic system: P99 TBT = 0.1 s x QPS, queueing explodes above 3 QPS."""
    runs = []

    def run_probes(configs):
        runs.extend(c["workload"]["arrival"]["qps"] for c in configs)
        return [{"qps": (q := c["workload"]["arrival"]["qps"]), "seed": 0, "p99_tbt_s": 0.1 * q,
                 "p50_scheduling_delay_s": 0.0 if q <= 3 else 50.0, "conservation_ok": True} for c in configs]

    base = {"workload": {"arrival": {"qps": None}, "seed": 0}}
    slos = [SLO("strict", 0.2, 2.0, ""), SLO("relaxed", 10.0, 2.0, "")]
    configs = [Configuration("x", {}, slo, 1.0, {0: base}) for slo in slos]
    cap = {"start_qps": 1.0, "tolerance": 0.05, "max_slowdown": 64}
    entries = search_all(configs, cap, ProbeCache(None), run_probes, 1, log=lambda *_: None)
    strict, relaxed = (e["capacity_qps"] for e in entries)
    assert 2 * 0.95 <= strict <= 2 and 3 * 0.95 <= relaxed <= 3
    assert len(runs) == len(set(runs)), "a probe ran twice"
    seen = sum(len(e["probes"]) for e in entries)
    assert len(runs) < seen, "the SLOs' common probes were not shared"


def compose_capacity(overrides: list[str], out_dir) -> dict:
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return to_dict(compose(config_name="capacity", overrides=overrides + [f"output_dir={out_dir}"]))


def test_default_grid_is_the_papers_and_strict_slo_is_5x_a_decode_iteration(tmp_path):
    configs = plan(compose_capacity([], tmp_path))
    assert sorted((c.slo.name, c.scheduler_label) for c in configs) == [
        ("relaxed", "sarathi (chunk 2048)"), ("relaxed", "vllm"), ("strict", "sarathi (chunk 512)"),
        ("strict", "vllm")]
    strict = next(c.slo for c in configs if c.slo.name == "strict")
    relaxed = next(c.slo for c in configs if c.slo.name == "relaxed")
    reference = reference_decode_time(configs[0].runs[42])
    assert strict.p99_tbt_s == pytest.approx(5 * reference) and relaxed.p99_tbt_s == pytest.approx(25 * reference)
    # Yi-34B TP-2 on A100s: a 32 x 4k decode iteration takes tens of milliseconds
    assert 0.01 < reference < 0.2


def test_an_overloaded_probe_never_passes(tmp_path):
    config = compose_capacity(["capacity.num_requests=200"], tmp_path)
    conf = next(c for c in plan(config) if c.scheduler_label.startswith("sarathi"))
    result = probe(with_qps(conf.runs[42], 50.0))
    assert result["conservation_ok"] and result["p50_scheduling_delay_s"] > 2.0
    assert not SLO("lenient", 1e9, 2.0, "").met_by(result)


def test_capacity_command_writes_json_and_report(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.capacity", "ray.enabled=false", "capacity.num_requests=64",
         "capacity.seeds=[1,2]", "capacity.tolerance=0.25", "~capacity.schedulers.vllm", "~capacity.schedulers.sarathi_2048",
         "capacity.schedulers.sarathi_512.slos=[strict,relaxed]", "capacity.time_scales=[1.0,2.0]",
         f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    entries = json.loads((tmp_path / "capacity.json").read_text())
    assert [(e["slo"], e["time_scale"]) for e in entries] == [("strict", 1.0), ("strict", 2.0),
                                                             ("relaxed", 1.0), ("relaxed", 2.0)]
    assert {e["scheduler"] for e in entries} == {"sarathi (chunk 512)"}
    for nominal, slower in (entries[:2], entries[2:]):  # a model twice as slow carries less load
        assert slower["capacity_qps"] < nominal["capacity_qps"]
        assert slower["p99_tbt_bound_s"] == nominal["p99_tbt_bound_s"], "the SLO moved with the model"
    for e in entries:
        assert e["capacity_qps"] > 0 and set(e["capacity_qps_per_seed"]) == {"1", "2"}
        assert {p["seed"] for p in e["probes"]} == {1, 2}
        for seed, capacity in e["capacity_qps_per_seed"].items():  # the highest probe that passed
            assert capacity == max(p["qps"] for p in e["probes"] if p["seed"] == int(seed) and p["meets_slo"])
    assert "capacity (QPS)" in (tmp_path / "capacity_report.html").read_text()
    assert "capacity" in out.stdout and "report:" in out.stdout
