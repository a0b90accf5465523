"""`python -m profiler.predict model=... parallel.tp=... hardware=... profiler.tokens=[1,16,256,1536]`

Prints CSV: per operation, the predicted milliseconds of one iteration for a prompt chunk of N
tokens (no earlier context) and a decode batch of N sequences (each `profiler.decode_context`
tokens long), for each N in `profiler.tokens`, plus their totals. Any hydra override of model.*
works (e.g. `model.hidden_size=4096`). The cost model: fitted if a profile for the configured
hardware exists, transfer if one for another hardware exists, else analytical (`profiler.profile`
names a profile dir directly); a leading comment line says which, and where its numbers come from.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from simulator.cli import command, run_command, to_dict
from simulator.core.batch import BatchShape
from simulator.core.model_spec import ModelSpec

from .cost_model import CostModel, cost_model_for


def choose_cost_model(config: dict[str, Any]) -> CostModel:
    """`cost_model_for` this config: auto, from `profiler.profile` if set, else the shipped profile."""
    model, tp, settings = ModelSpec.from_config(config["model"]), int(config["parallel"]["tp"]), config["profiler"]
    data_dir = Path(config["shared_data_dir"]) if config.get("shared_data_dir") else None
    return cost_model_for(model, config["hardware"], tp, profile_dir=settings["profile"],
                          cache_dir=settings["cache_dir"], data_dir=data_dir)


def prediction_csv(config: dict[str, Any]) -> str:
    context = config["profiler"]["decode_context"]
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ValueError(f"profiler.decode_context={context!r} must be a token count >= 1 "
                         "(the KV length of each decode sequence)")
    tokens = config["profiler"]["tokens"]
    if not isinstance(tokens, list) or not tokens:
        raise ValueError(f"profiler.tokens={tokens!r} must be a non-empty list, e.g. 'profiler.tokens=[1,16,256]'")
    batches = []
    for i, n in enumerate(tokens):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"profiler.tokens[{i}]={n!r} must be a token count >= 1")
        batches.append(("prefill", n, BatchShape(n, 0, 1, 0, n, n * (n + 1) // 2)))
        batches.append((f"decode@{context}", n, BatchShape(0, n, 0, n * context, 0, 0)))
    cost_model = choose_cost_model(config)
    columns = {f: [getattr(shape, f) for _, _, shape in batches] for f in BatchShape.FIELDS}
    ops = cost_model.breakdown(columns)
    out = io.StringIO()
    out.write(f"# cost model: {cost_model.name}: {cost_model.label}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["operation", "batch", "tokens", "milliseconds"])
    for i, (batch, n, shape) in enumerate(batches):
        for op, seconds in ops.items():
            writer.writerow([op, batch, n, f"{seconds[i] * 1e3:.6g}"])
        writer.writerow(["total", batch, n, f"{cost_model.batch_time(shape) * 1e3:.6g}"])
    return out.getvalue()


@command("profiler")
def main(cfg: DictConfig) -> None:
    config = to_dict(cfg)
    print(prediction_csv(config), end="")


if __name__ == "__main__":
    run_command(main)
