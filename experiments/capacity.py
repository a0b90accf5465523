"""Capacity under an SLO: `python -m experiments.capacity` (conf/capacity.yaml).

For every configuration of the grid (a scheduler with its settings, an SLO, a cost-model time
scale) and every seed, find the highest Poisson QPS whose run meets the SLO:
- P99 time-between-tokens at most the SLO's bound, and
- median scheduling delay (arrival to first scheduled) at most `capacity.scheduling_delay_p50_s`
  (the Sarathi-Serve artifact's queueing bound: 2 s), so a system that queues without end never
  passes however smooth its tokens are.

The search brackets (doubling or halving from `capacity.start_qps` per replica) and then bisects
until the bracket is within `capacity.tolerance` of its lower end; the capacity is the highest
QPS that passed. Searches advance in rounds: each round collects the probe every unfinished
search needs next, runs the distinct ones as Ray tasks (local, or `ray.address`), and a probe
asked for twice (another SLO, another round) is simulated once. Probes are simulations of
`capacity.num_requests` requests that write no files.

Writes capacity.json (one object per configuration: scheduler label, SLO, capacity, the spread
over seeds, every probe) and capacity_report.html, and prints one line per configuration.
"""
from __future__ import annotations

import copy
import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Mapping

import numpy as np
from omegaconf import DictConfig

from simulator.cli import command, run_command, to_dict
from simulator.core.batch import BatchShape
from simulator.core.schedulers import make_scheduler
from simulator.engine import simulate
from simulator.run import make_requests, prepare

from .capacity_report import write_capacity_report
from .fig1 import run_label, scheduler_config
from .parallel import ray_map, ray_session

RUN_KEYS = ("model", "hardware", "parallel", "engine", "cost_model", "engine_model", "cluster", "shared_data_dir")
# The paper's SLO unit (Sarathi-Serve, OSDI'24, §5): the time of one decode iteration of 32
# requests with 4k tokens of context each, running with no prefill in the batch.
REFERENCE_DECODE = {"batch_size": 32, "context_tokens": 4096}

Search = Generator[float, bool, float]


def bisect_capacity(start_qps: float, tolerance: float, min_qps: float) -> Search:
    """The search as a generator: it yields the QPS to probe next and is sent whether that probe
    met the SLO; it returns the highest passing QPS, with the lowest failing one within
    `tolerance` (relative) above it. Returns 0.0 if even `min_qps` fails. Assumes the response
    is monotone: what passes at some QPS passes at every lower one."""
    if not (start_qps > 0 and tolerance > 0 and 0 < min_qps <= start_qps):
        raise ValueError(f"capacity search needs start_qps >= min_qps > 0 and tolerance > 0; got "
                         f"start_qps={start_qps}, min_qps={min_qps}, tolerance={tolerance}")
    passed: float | None = None
    failed: float | None = None
    qps = start_qps
    while passed is None or failed is None:  # bracket
        if (yield qps):
            passed, qps = qps, qps * 2
        else:
            failed, qps = qps, qps / 2
            if passed is None and qps < min_qps:
                return 0.0
    while failed - passed > tolerance * passed:  # bisect
        qps = (passed + failed) / 2
        if (yield qps):
            passed = qps
        else:
            failed = qps
    return passed


@dataclass(frozen=True)
class SLO:
    name: str
    p99_tbt_s: float
    scheduling_delay_p50_s: float
    definition: str  # how the TBT bound was set, for reports

    def met_by(self, probe: Mapping[str, Any]) -> bool:
        return (probe["conservation_ok"] and probe["p99_tbt_s"] <= self.p99_tbt_s
                and probe["p50_scheduling_delay_s"] <= self.scheduling_delay_p50_s)


def reference_decode_time(run_cfg: Mapping[str, Any]) -> float:
    """Seconds of the paper's reference decode iteration under the run's cost model."""
    setup = prepare(run_cfg)
    b, ctx = REFERENCE_DECODE["batch_size"], REFERENCE_DECODE["context_tokens"]
    return setup.cost_model.batch_time(BatchShape(num_prefill_tokens=0, num_decode_tokens=b, num_prefills=0,
                                                  decode_kv_tokens=b * ctx, prefill_kv_tokens=0,
                                                  prefill_attn_pairs=0))


def resolve_slos(slos: Mapping[str, Any], delay_bound: float, reference_s: float) -> list[SLO]:
    """Each SLO gives exactly one of `p99_tbt_s` (seconds) or `p99_tbt_x` (multiple of the
    reference decode iteration, converted to seconds once, with the unscaled cost model)."""
    out = []
    for name, spec in slos.items():
        spec = dict(spec or {})
        keys = set(spec)
        if keys not in ({"p99_tbt_s"}, {"p99_tbt_x"}):
            raise ValueError(f"capacity.slos.{name} must set exactly one of p99_tbt_s (seconds) or "
                             f"p99_tbt_x (multiple of the reference decode iteration); got {sorted(keys)}")
        (key, value), = spec.items()
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"capacity.slos.{name}.{key}={value!r} must be a positive number")
        if key == "p99_tbt_s":
            out.append(SLO(name, float(value), delay_bound, f"P99 TBT <= {value:g} s"))
        else:
            out.append(SLO(name, value * reference_s, delay_bound,
                           f"P99 TBT <= {value:g} x {reference_s * 1e3:.1f} ms (decode iteration of "
                           f"{REFERENCE_DECODE['batch_size']} requests at {REFERENCE_DECODE['context_tokens']} "
                           f"tokens of context) = {value * reference_s:.3f} s"))
    return out


# ---- probes --------------------------------------------------------------------------------------
def probe(run_cfg: dict[str, Any]) -> dict[str, Any]:
    """One simulation at the config's QPS; the metrics the SLOs read (no files written)."""
    wall = time.perf_counter()
    setup = prepare(run_cfg)
    schedulers = [make_scheduler(setup.scheduler_name, setup.scheduler_config, setup.num_blocks)
                  for _ in range(setup.cluster["num_replicas"])]
    tables = simulate(make_requests(setup.workload), schedulers, setup.cost_model.batch_time,
                      setup.make_router()).finalize()
    tbt = tables.tokens["tbt"]
    tbt = tbt[~np.isnan(tbt)]
    req = tables.requests
    return {
        "qps": run_cfg["workload"]["arrival"]["qps"],
        "seed": run_cfg["workload"]["seed"],
        "p99_tbt_s": float(np.quantile(tbt, 0.99)) if len(tbt) else 0.0,
        "p50_scheduling_delay_s": float(np.median(req["scheduling_delay"])),
        "p99_ttft_s": float(np.quantile(req["ttft"], 0.99)),
        "conservation_ok": bool(tables.conservation["ok"]),
        "wall_s": time.perf_counter() - wall,
    }


class ProbeCache:
    """Probe results by a hash of the run config: in memory, and in `directory` when given, so
    a rerun (or another grid sharing configurations) simulates nothing twice."""

    def __init__(self, directory: str | None):
        self.memory: dict[str, dict[str, Any]] = {}
        self.directory = Path(directory) if directory else None
        self.hits = 0

    @staticmethod
    def key(run_cfg: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(run_cfg, sort_keys=True).encode()).hexdigest()[:24]

    def get(self, key: str) -> dict[str, Any] | None:
        if key not in self.memory and self.directory and (self.directory / f"{key}.json").is_file():
            self.memory[key] = json.loads((self.directory / f"{key}.json").read_text())
        return self.memory.get(key)

    def put(self, key: str, result: dict[str, Any]) -> None:
        self.memory[key] = result
        if self.directory:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / f"{key}.json").write_text(json.dumps(result) + "\n")


# ---- the grid ----------------------------------------------------------------------------------
@dataclass
class Configuration:
    scheduler_label: str
    scheduler: dict[str, Any]
    slo: SLO
    time_scale: float
    runs: dict[int, dict[str, Any]]  # seed -> run config without its QPS


def run_config(config: Mapping[str, Any], scheduler: dict[str, Any], seed: int, time_scale: float) -> dict[str, Any]:
    cap = config["capacity"]
    run_cfg = {k: copy.deepcopy(config[k]) for k in RUN_KEYS if k in config}
    workload = copy.deepcopy(config["workload"])
    workload.update(num_requests=cap["num_requests"], seed=seed)
    workload["arrival"]["kind"] = "poisson"
    run_cfg.update(scheduler=scheduler, workload=workload, output_dir=None)
    if time_scale != 1.0:  # every modelled time x the factor; cost_model is a name or {name, time_scale}
        cost_model = run_cfg.get("cost_model", "auto")
        cost_model = dict(cost_model) if isinstance(cost_model, dict) else {"name": cost_model}
        run_cfg["cost_model"] = {**cost_model, "time_scale": time_scale}
    return run_cfg


def plan(config: Mapping[str, Any]) -> list[Configuration]:
    cap = config["capacity"]
    max_tokens = config["workload"]["max_tokens"]
    schedulers = {}  # label -> (scheduler config, the SLOs it is searched under; None: all)
    for key, overrides in cap["schedulers"].items():
        overrides = dict(overrides or {})
        name = overrides.pop("name", key)
        only = overrides.pop("slos", None)
        unknown = sorted(set(only or ()) - set(cap["slos"]))
        if unknown:
            raise ValueError(f"capacity.schedulers.{key}.slos names unknown SLOs {unknown}; "
                             f"known: {sorted(cap['slos'])}")
        sched = scheduler_config(name, overrides, max_tokens, f"capacity.schedulers.{key}")
        schedulers[run_label(sched)] = (sched, only)
    seeds = list(cap["seeds"])
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"capacity.seeds={seeds} must list distinct seeds, at least one")
    scales = [float(f) for f in cap["time_scales"]]
    if not scales or min(scales) <= 0:
        raise ValueError(f"capacity.time_scales={cap['time_scales']} must list positive factors")
    first = next(iter(schedulers.values()))[0]
    reference_s = reference_decode_time(run_config(config, first, seeds[0], 1.0))
    slos = resolve_slos(cap["slos"], float(cap["scheduling_delay_p50_s"]), reference_s)
    return [Configuration(label, sched, slo, scale,
                          {seed: run_config(config, sched, seed, scale) for seed in seeds})
            for label, (sched, only) in schedulers.items() for slo in slos if only is None or slo.name in only
            for scale in scales]


def with_qps(run_cfg: dict[str, Any], qps: float) -> dict[str, Any]:
    out = copy.deepcopy(run_cfg)
    out["workload"]["arrival"]["qps"] = round(qps, 9)  # one key per QPS, whatever path reached it
    return out


def search_all(configs: list[Configuration], cap: Mapping[str, Any], cache: ProbeCache,
               run_probes: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
               num_replicas: int, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every configuration's search for every seed, in rounds of distinct probes."""
    start = float(cap["start_qps"]) * num_replicas
    searches = {}  # (config index, seed) -> [generator, qps it waits on, probes it saw]
    results: dict[tuple[int, int], tuple[float, list[dict[str, Any]]]] = {}
    for i, conf in enumerate(configs):
        for seed in conf.runs:
            gen = bisect_capacity(start, float(cap["tolerance"]), start / float(cap["max_slowdown"]))
            searches[(i, seed)] = [gen, next(gen), []]
    round_no = 0
    while searches:
        round_no += 1
        wanted = {}
        for (i, seed), (_, qps, _) in searches.items():
            run_cfg = with_qps(configs[i].runs[seed], qps)
            wanted.setdefault(ProbeCache.key(run_cfg), run_cfg)
        todo = {k: c for k, c in wanted.items() if cache.get(k) is None}
        cache.hits += len(searches) - len(todo)
        for key, result in zip(todo, run_probes(list(todo.values()))):
            cache.put(key, result)
        log(f"round {round_no}: {len(searches)} searches, {len(todo)} new probes, "
            f"{len(searches) - len(todo)} answered from the cache")
        for (i, seed), state in list(searches.items()):
            gen, qps, seen = state
            result = cache.get(ProbeCache.key(with_qps(configs[i].runs[seed], qps)))
            ok = configs[i].slo.met_by(result)
            seen.append({**result, "meets_slo": ok})
            try:
                state[1] = gen.send(ok)
            except StopIteration as done:
                results[(i, seed)] = (done.value, seen)
                del searches[(i, seed)]
    out = []
    for i, conf in enumerate(configs):
        per_seed = {seed: results[(i, seed)][0] for seed in conf.runs}
        values = list(per_seed.values())
        capacity = statistics.median(values)
        out.append({
            "scheduler": conf.scheduler_label,
            "scheduler_config": conf.scheduler,
            "slo": conf.slo.name,
            "slo_definition": conf.slo.definition,
            "p99_tbt_bound_s": conf.slo.p99_tbt_s,
            "scheduling_delay_p50_bound_s": conf.slo.scheduling_delay_p50_s,
            "time_scale": conf.time_scale,
            "capacity_qps": capacity,
            "capacity_qps_per_seed": {str(s): v for s, v in per_seed.items()},
            "seed_spread_rel": (max(values) - min(values)) / capacity if capacity > 0 else 0.0,
            "tolerance_rel": float(cap["tolerance"]),
            "probes": [p for seed in conf.runs for p in results[(i, seed)][1]],
        })
    return out


def describe(entry: Mapping[str, Any]) -> str:
    scale = f" x{entry['time_scale']:g}" if entry["time_scale"] != 1.0 else ""
    seeds = entry["capacity_qps_per_seed"].values()
    spread, tolerance = entry["seed_spread_rel"], entry["tolerance_rel"]
    verdict = "within" if spread <= tolerance else "ABOVE (raise capacity.num_requests)"
    return (f"{entry['slo']:<8} {entry['scheduler']:<22}{scale} capacity {entry['capacity_qps']:.3f} QPS "
            f"(seeds {min(seeds):.3f}-{max(seeds):.3f}, spread {spread:.1%} {verdict} the {tolerance:.0%} "
            f"tolerance; P99 TBT <= {entry['p99_tbt_bound_s']:.3f} s)")


@command("capacity")
def main(cfg: DictConfig) -> None:
    config = to_dict(cfg)

    def go() -> Path:
        cap = config["capacity"]
        configs = plan(config)
        for conf in configs:  # every config error surfaces here, before Ray starts
            prepare(with_qps(next(iter(conf.runs.values())), 1.0))
        out_dir = Path(config["output_dir"])
        cache = ProbeCache(cap.get("cache_dir"))
        wall = time.perf_counter()
        ray_cfg = config["ray"]
        num_replicas = (config.get("cluster") or {}).get("num_replicas", 1)
        if ray_cfg.get("enabled", True):
            with ray_session(ray_cfg):
                entries = search_all(configs, cap, cache, lambda cs: ray_map(probe, [(c,) for c in cs], ray_cfg,
                                                                             "probes"), num_replicas)
        else:
            entries = search_all(configs, cap, cache, lambda cs: [probe(c) for c in cs], num_replicas)
        probes_run = len(cache.memory)
        for entry in entries:
            print(describe(entry))
        print(f"{probes_run} probes simulated, {cache.hits} answered from the cache, "
              f"{time.perf_counter() - wall:.0f} s")
        (out_dir / "capacity.json").write_text(json.dumps(entries, indent=1) + "\n")
        return write_capacity_report(entries, out_dir / "capacity_report.html", config)

    print(f"report: {go()}")


if __name__ == "__main__":
    run_command(main)
