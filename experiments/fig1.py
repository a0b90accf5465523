"""Figure 1 of Sarathi-Serve, in simulation or on a GPU: `python -m experiments.fig1 mode=sim`.

Plans eight runs (1a: a 128-request burst for vllm and sarathi; 1b: Poisson at each QPS for
both), runs them (in parallel as Ray tasks in simulation; one after another on the GPU), and
writes `fig1_report.html` next to the run directories.
"""
from __future__ import annotations

if __name__ == "__main__":  # before the slow imports below: Ctrl-C during them is one line too
    from simulator.ctrl_c import exit_quietly_on_ctrl_c

    exit_quietly_on_ctrl_c()

import copy
import json
import math
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from simulator.cli import command, reject_added_keys, run_command, to_dict
from simulator.core.config_fields import from_mapping
from simulator.core.paths import REPO_ROOT
from simulator.run import prepare, run_simulation
from simulator.run_dir import check_output_dir

from .parallel import run_all
from .report import KV_BOUND_PANEL, RunRef, write_fig1_report

MODES = ("sim", "real")
RUN_KEYS = ("model", "hardware", "parallel", "engine", "cost_model", "engine_model", "shared_data_dir", "compat")
TITLE = "Figure 1: generation stalls and tail latency"
CONFIG_NAME = "fig1"


@dataclass(frozen=True)
class Fig1Settings:
    """The `fig1:` section of conf/fig1.yaml."""
    num_requests: int
    static_max_tokens: int
    poisson_max_tokens: int
    qps: list
    schedulers: dict
    kv_bound_prefill_scale: float | None = None


def check_settings(config: dict[str, Any]) -> Fig1Settings:
    """Every value of the figure's own sections, as one line naming the key, before any run."""
    if config["mode"] not in MODES:
        raise ValueError(f"mode={config['mode']!r} is unknown; use mode=sim or mode=real")
    fig = from_mapping(Fig1Settings, config["fig1"], "fig1",
                       positive=("num_requests", "static_max_tokens", "poisson_max_tokens"))
    if not fig.qps:
        raise ValueError("fig1.qps=[] is empty; give the Poisson rates of 1b, e.g. 'fig1.qps=[0.55,0.7,1.0]'")
    for i, q in enumerate(fig.qps):
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or q <= 0:
            raise ValueError(f"fig1.qps[{i}]={q!r} must be a number > 0 (requests per second)")
    if len(set(fig.qps)) < len(fig.qps):
        raise ValueError(f"fig1.qps={fig.qps} repeats a rate; list each once")
    if not fig.schedulers:
        raise ValueError("fig1.schedulers is empty; name at least one, e.g. 'fig1.schedulers={vllm: {}}'")
    scale = fig.kv_bound_prefill_scale
    if scale is not None and not scale > 0:
        raise ValueError(f"fig1.kv_bound_prefill_scale={scale} must be > 0, or null for no KV-bound burst")
    overwrite = config.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite={overwrite!r} must be true or false")
    ray_cfg = config["ray"]
    if not isinstance(ray_cfg.get("enabled", True), bool):
        raise ValueError(f"ray.enabled={ray_cfg['enabled']!r} must be true or false")
    num_cpus = ray_cfg.get("num_cpus")
    if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
        raise ValueError(f"ray.num_cpus={num_cpus!r} must be a positive integer, or null for every core")
    address = ray_cfg.get("address")
    if address is not None and (not isinstance(address, str) or not address):
        raise ValueError(f"ray.address={address!r} must be a cluster address (\"auto\", \"host:port\") or null")
    return fig


def plan_runs(config: dict[str, Any]) -> list[tuple[RunRef, dict[str, Any]]]:
    """(what the report calls the run, the full config of the run) for each run of the figure."""
    fig = config["fig1"]
    root = Path(config["output_dir"])
    scale = fig.get("kv_bound_prefill_scale")
    plans = []
    for name, overrides in fig["schedulers"].items():
        panels = [("1a", None, "static", fig["static_max_tokens"])]
        if scale is not None:
            panels.append((KV_BOUND_PANEL, None, "static", fig["static_max_tokens"]))
        panels += [("1b", float(q), "poisson", fig["poisson_max_tokens"]) for q in fig["qps"]]
        for panel, qps, arrival, max_tokens in panels:
            workload = copy.deepcopy(config["workload"])
            workload.update(num_requests=fig["num_requests"], max_tokens=max_tokens)
            workload["arrival"].update(kind=arrival, qps=qps if qps is not None else workload["arrival"]["qps"])
            if panel == KV_BOUND_PANEL:
                workload["lengths"]["prefill_scale"] = workload["lengths"].get("prefill_scale", 1.0) * scale
            scheduler = scheduler_config(name, overrides, max_tokens, "fig1.schedulers")
            run_dir = root / (f"{panel.replace('-', '_')}_{name}" + (f"_qps{qps:g}" if qps is not None else ""))
            run_cfg = {k: copy.deepcopy(config[k]) for k in RUN_KEYS}
            run_cfg.update(scheduler=scheduler, workload=workload, output_dir=str(run_dir))
            label = run_label(scheduler)
            plans.append((RunRef(run_dir, label, panel, qps, config["mode"]), run_cfg))
    return plans


def scheduler_config(name: str, overrides: dict[str, Any] | None, max_tokens: int, where: str) -> dict[str, Any]:
    """conf/scheduler/<name>.yaml with `overrides` (from the config key `where`) and max_model_len."""
    path = REPO_ROOT / "conf" / "scheduler" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"{where} has unknown scheduler {name!r}: no {path}")
    merged = OmegaConf.merge(OmegaConf.load(path), overrides or {})
    merged.max_model_len = max_tokens
    return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]


def run_label(scheduler: dict[str, Any]) -> str:
    """The legend name of a run: the scheduler, with its chunk size where it chunks."""
    name = scheduler["name"]
    return f"{name} (chunk {scheduler['chunk_size']})" if name == "sarathi" else name


def simulate_one(run_cfg: dict[str, Any]) -> dict[str, Any]:
    return run_simulation(run_cfg, run_cfg["output_dir"], log=lambda *_: None)


def report_notes(config: dict[str, Any], refs: list[RunRef], summaries: list[dict[str, Any]]) -> list[str]:
    first = summaries[0]
    fig = config["fig1"]
    notes = [
        f"Mode: {'simulation' if config['mode'] == 'sim' else 'real GPU run'}; model {first['model']}, "
        f"tensor parallel {first['tp']}, hardware {first['hardware']}.",
        f"Cost model: {first['cost_model']}" if config["mode"] == "sim" else
        f"Measured on: {first.get('device', first['hardware'])}",
        f"1a: {fig['num_requests']} requests arriving at t=0, max length {fig['static_max_tokens']}. "
        f"1b: Poisson arrivals at QPS {', '.join(f'{q:g}' for q in fig['qps'])}, {fig['num_requests']} "
        f"requests, max length {fig['poisson_max_tokens']}.",
        *([kv_bound_note(fig["kv_bound_prefill_scale"])] if fig.get("kv_bound_prefill_scale") is not None else []),
        "Schedulers: " + "; ".join(f"{n} {json.dumps(o)}" for n, o in fig["schedulers"].items()),
        *workload_notes(refs, summaries),
        compat_note(config.get("compat", "corrected")),
        "The arXiv-summarization lengths come from the public trace filtered at 4,096 tokens per "
        "request (microsoft/vidur); the paper's Figure 1 used a 16,384-token version that is not public. "
        "The published Figure 1b script replayed ShareGPT instead: workload=sharegpt_8k runs that.",
    ]
    return notes


def workload_notes(refs: list[RunRef], summaries: list[dict[str, Any]]) -> list[str]:
    """The workload of each panel, as its first run's summary describes it."""
    notes: dict[str, str] = {}
    for ref, summary in zip(refs, summaries):
        if ref.panel == "1b" and "1b" not in notes:
            notes["1b"] = (f"Workload, 1b: {summary['workload']} (the QPS {ref.qps:g} run; the other "
                           "rates differ only in QPS).")
        elif ref.panel not in notes:
            notes[ref.panel] = f"Workload, {ref.panel}: {summary['workload']}."
    return list(notes.values())


def kv_bound_note(scale: float) -> str:
    return (f"1a, KV-bound burst: the same burst with every prompt {scale:g}x longer (up to the same "
            "max length). The paper's 1a used a 16,384-token arXiv trace that is not public; its "
            "prompts overflow the KV cache, so vLLM stalls generation again each time the cache "
            "refills. The public 4,096-token trace's 128 prompts all fit at once, so with the "
            "paper's settings vLLM stalls once; the longer prompts bring back the recurring stalls.")


def compat_note(compat: str) -> str:
    if compat == "reference":
        return ("Compat: reference. The published artifact's decisions (no token from the iteration "
                "that completes a prompt, k + D tokens after a preemption at k, a free block before "
                "every decode) and its metrics, read from its files: TBT with its zero and spurious "
                "entries, P99 from a DDSketch, TTFT = prefill_e2e_time.")
    return "Compat: corrected (docs/serving-model.md lists how it differs from the published artifact)."


@command(CONFIG_NAME)
def main(cfg: DictConfig) -> None:
    reject_added_keys(cfg, CONFIG_NAME, HydraConfig.get().overrides.task)
    config = to_dict(cfg)
    check_settings(config)
    # Absolute, so that Ray workers (whose working directory is elsewhere) write here too.
    config["output_dir"] = str(Path(config["output_dir"]).expanduser().absolute())
    if config.get("compat") == "reference" and config["mode"] != "sim":
        raise ValueError("compat=reference is simulation only (the GPU backend always emits "
                         "the token of the completing prompt chunk); use mode=sim or compat=corrected")
    if config["mode"] == "real":
        from backend.gpus import hardware_for_device  # on a GPU: that GPU's hardware config

        config["hardware"] = hardware_for_device(str(config["real"].get("device", "auto")),
                                                 config["hardware"], sys.argv[1:])
    plans = plan_runs(config)
    configs = [c for _, c in plans]
    for run_cfg in configs:
        prepare(run_cfg)  # every config error surfaces here, before Ray or a GPU starts
    # Last of the checks: with overwrite=true it removes the previous outputs.
    check_output_dir(config["output_dir"], config.get("overwrite", False))
    if config["mode"] == "sim":
        summaries = run_all(simulate_one, configs, config["ray"], desc="fig1 simulations")
    else:
        from backend.run import run_real_all  # needs torch and a GPU

        summaries = run_real_all(configs, config)
    print(compat_note(config.get("compat", "corrected")))
    for (ref, _), summary in zip(plans, summaries):
        tbt, stall = summary["tbt_s"]["p99"], summary["longest_generation_stall_s"]
        print(f"{ref.panel:<5} {ref.label:<22} qps={ref.qps if ref.qps is not None else 'burst':<5} "
              f"P99 TBT {tbt:.3f} s, longest stall {stall:.2f} s, conservation "
              f"{'ok' if summary['conservation']['ok'] else 'FAILED'}")
    out = Path(config["output_dir"]) / "fig1_report.html"
    title = TITLE + (" (compat: reference)" if config.get("compat") == "reference" else "")
    write_fig1_report([ref for ref, _ in plans], out, title,
                      report_notes(config, [ref for ref, _ in plans], summaries))
    print(f"report: {out}")


if __name__ == "__main__":
    run_command(main)
