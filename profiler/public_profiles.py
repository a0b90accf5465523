"""Public per-operation GPU measurements, read into this project's profile format.

`../shared/data/public_profiles/compute/<gpu>/<org>/<model>/mlp.csv.gz` (published with Vidur,
microsoft/vidur `data/profiling/compute/` at 7d47513, MIT) holds, per GPU (a100 = A100-80GB, h100,
a40), model, tensor-parallel degree (1/2/4/8) and token count (1 to 4,096, Llama-3 to 32k), the
median time of every non-attention op of one layer on one rank's shard. They map onto our ops so:

| public op                               | our op          | shape (one rank)                                        |
| --------------------------------------- | --------------- | ------------------------------------------------------- |
| `attn_pre_proj` (fused QKV)             | `qkv_proj`      | hidden -> (heads + 2 kv heads) x head_dim / tp          |
| `attn_post_proj` (O)                    | `o_proj`        | heads x head_dim / tp -> hidden                         |
| `mlp_up_proj` (gate and up fused)       | `gate_up_proj`  | hidden -> 2 x intermediate / tp (intermediate / tp when not gated) |
| `mlp_down_proj`                         | `down_proj`     | intermediate / tp -> hidden                              |
| `input_layernorm` + `add`, `post_attention_layernorm` + `add` | `rmsnorm` | hidden; our op is the residual add and the norm together: one row per norm of the layer (Phi-2: LayerNorm, our op `layernorm`) |
| `mlp_act` (fused SiLU-and-multiply)     | `silu_mul`      | intermediate / tp wide (Phi-2: GELU, our op `gelu`)      |
| `attn_rope`                             | `rope`          | (heads + kv heads) x head_dim / tp (Phi-2 too: Vidur's profiler rotates whole heads, `rotary_dim=head_dim`, whatever the model's partial rotary) |
| `emb` (vocab-parallel embedding)        | `embedding`     | hidden (once per iteration)                              |

How these differ from what `python -m profiler` measures: they are fp16 kernel sums (torch profiler,
median of 20 repeats) of another engine's layers (Sarathi/vLLM kernels: a fused SiLU-and-multiply,
separate residual adds), ours are bf16 ops of our backend timed end to end by CUDA events with the
L2 flushed. Attention, the KV-cache write, the LM head, the final norm and sampling are not in the
public data. Nothing is copied from `../shared`: `read_public` reads it where it lies, and only
fitted numbers are committed (`profiler/calibration/`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulator.core.model_spec import ModelSpec
from simulator.core.paths import REPO_ROOT

from .fit import COLUMNS, PROFILE_METADATA, PROFILE_TABLE, linear_shapes, stream_widths

SOURCE = "microsoft/vidur data/profiling/compute at 7d47513 (MIT), via ../shared/data/public_profiles"


@dataclass(frozen=True)
class PublicGPU:
    key: str        # the folder under public_profiles/compute
    name: str       # the GPU, as the calibration and reports name it
    num_sms: int    # streaming multiprocessors: the wave-quantisation features need them
    threads_per_sm: int = 2048  # resident threads and thread blocks per SM (CUDA occupancy limits of
    blocks_per_sm: int = 32     # its compute capability): how many of a kernel's blocks one wave holds


# The H100 rows are taken as H100 SXM (132 SMs), the variant of Vidur's DGX and NVLink tables. The
# A40 (compute capability 8.6) holds 1,536 threads and 16 blocks per SM, the A100 and H100 2,048 and 32.
PUBLIC_GPUS = {g.key: g for g in (PublicGPU("a100", "A100-80GB", 108), PublicGPU("h100", "H100-80GB", 132),
                                  PublicGPU("a40", "A40", 84, threads_per_sm=1536, blocks_per_sm=16))}
# public folder -> our conf/model file (its architecture: MLP kind, rotary dims, ...)
PUBLIC_MODELS = {
    "meta-llama/Llama-2-7b-hf": "llama_2_7b", "meta-llama/Llama-2-70b-hf": "llama_2_70b",
    "meta-llama/Meta-Llama-3-8B": "llama_3_8b", "meta-llama/Meta-Llama-3-70B": "llama_3_70b",
    "Qwen/Qwen-72B": "qwen_72b", "internlm/internlm-20b": "internlm_20b", "microsoft/phi-2": "phi_2",
}
SHAPE_COLUMNS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "num_tokens", "num_tensor_parallel_workers")
# our op -> the public columns whose times add up to one call of it
OP_COLUMNS = {"qkv_proj": ("attn_pre_proj",), "o_proj": ("attn_post_proj",), "gate_up_proj": ("mlp_up_proj",),
              "down_proj": ("mlp_down_proj",), "rope": ("attn_rope",), "embedding": ("emb",),
              "silu_mul": ("mlp_act",)}
NORM_COLUMNS = (("input_layernorm", "add"), ("post_attention_layernorm", "add"))
STREAM_WIDTH_OF = {"gelu": "silu_mul", "layernorm": "rmsnorm"}  # other kernels over the same tensors


def compute_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "public_profiles" / "compute"


def model_spec(conf_name: str) -> ModelSpec:
    from omegaconf import OmegaConf  # the model's yaml; only ingest reads it

    return ModelSpec.from_config(OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "model" / f"{conf_name}.yaml")))


def read_public(data_dir: Path, gpu: str) -> Any:
    """Every public measurement of `gpu` as profile rows (`fit.COLUMNS`) plus `model` (our conf
    name) and `tp`; repeated measurements of one shape are reduced to their median. Every defect
    of a file is one ValueError line naming it."""
    import pandas as pd

    frames = [_rows(path, model_spec(conf_name), conf_name) for conf_name, path in model_files(data_dir, gpu).items()]
    return pd.concat(frames, ignore_index=True)


def model_files(data_dir: Path, gpu: str) -> dict[str, Path]:
    """Our conf name -> the public `mlp.csv.gz` of each model measured on `gpu` (at least one)."""
    if gpu not in PUBLIC_GPUS:
        raise ValueError(f"gpu={gpu!r} has no public profile; choose one of {sorted(PUBLIC_GPUS)}")
    root = compute_dir(data_dir) / gpu
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found: the public profiles live in ../shared/data/public_profiles "
                                "(set shared_data_dir or SCHED_SIM_DATA to the folder that holds them)")
    files = {conf_name: root / folder / "mlp.csv.gz" for folder, conf_name in PUBLIC_MODELS.items()}
    files = {conf_name: path for conf_name, path in files.items() if path.is_file()}
    if not files:
        raise FileNotFoundError(f"{root} holds none of the known models' mlp.csv.gz ({sorted(PUBLIC_MODELS)})")
    return files


def _rows(path: Path, spec: ModelSpec, conf_name: str) -> Any:
    import pandas as pd

    try:
        raw = pd.read_csv(path)
    except Exception as error:  # a truncated gzip, not a CSV, ...: one line, whatever the parser says
        raise ValueError(f"{path}: cannot be read as a CSV ({type(error).__name__}: {error})") from None
    norms = NORM_COLUMNS if not spec.parallel_block else NORM_COLUMNS[:1]
    needed = [f"time_stats.{c}.median" for cols in OP_COLUMNS.values() for c in cols]
    needed += [f"time_stats.{c}.median" for pair in norms for c in pair]
    needed = list(dict.fromkeys(needed))  # `add` follows both norms
    missing = [c for c in (*SHAPE_COLUMNS, *needed) if c not in raw.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; is it a public_profiles compute mlp.csv.gz?")
    values = raw[[*SHAPE_COLUMNS, *needed]].apply(pd.to_numeric, errors="coerce")
    bad = values.isna() | (values < 0)
    if bad.any().any():
        row, col = map(int, np.argwhere(bad.to_numpy())[0])
        raise ValueError(f"{path} row {row + 2}: {values.columns[col]}={raw[values.columns[col]].iloc[row]!r} "
                         "is not a number >= 0")
    shape = values.iloc[0]
    if (int(shape.n_embd), int(shape.n_head), int(shape.n_kv_head), int(shape.n_expanded_embd)) != (
            spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.intermediate_size):
        raise ValueError(f"{path}: its shape (hidden {int(shape.n_embd)}, heads {int(shape.n_head)}/"
                         f"{int(shape.n_kv_head)}, MLP {int(shape.n_expanded_embd)}) is not conf/model/{conf_name}.yaml's")
    medians = values.groupby(["num_tokens", "num_tensor_parallel_workers"], as_index=False).median()
    out = []
    for tp, group in medians.groupby("num_tensor_parallel_workers"):
        tp = int(tp)
        gemm, widths = linear_shapes(spec, tp), stream_widths(spec, tp)
        tokens = group["num_tokens"].to_numpy(dtype=int)
        ms = {c: group[f"time_stats.{c}.median"].to_numpy() for c in
              {c for cols in OP_COLUMNS.values() for c in cols} | {c for pair in norms for c in pair}}
        calls = [(op, sum(ms[c] for c in cols)) for op, cols in OP_COLUMNS.items()]
        calls = [("gelu" if op == "silu_mul" and not spec.gated_mlp else op, t) for op, t in calls]
        norm_op = "rmsnorm" if spec.norm == "rmsnorm" else "layernorm"  # different kernels, own laws
        calls += [(norm_op, ms[norm] + ms[add]) for norm, add in norms]
        for op, times in calls:
            rows = pd.DataFrame({"op": op, "kind": "public", "tokens": tokens})
            for col in COLUMNS[2:]:
                rows[col] = rows.get(col, 0)
            if op in gemm:
                rows["k_in"], rows["k_out"] = gemm[op]
            else:
                rows["width"] = widths[STREAM_WIDTH_OF.get(op, op)]
            rows["n_repeats"], rows["median_ms"] = 20, times
            rows["p10_ms"] = rows["p90_ms"] = times  # the public files give min/max, not percentiles
            rows["model"], rows["tp"] = conf_name, tp
            out.append(rows)
    table = pd.concat(out, ignore_index=True)
    return table[table["median_ms"] > 0].reset_index(drop=True)  # a 0 is below the 1 us resolution


def write_profile(data_dir: Path, gpu: str, out_dir: Path) -> Path:
    """The public rows of `gpu` as a profile directory (`profile.csv` + `metadata.json`, the files
    `python -m profiler` writes, with `model` and `tp` columns added: the rows span models)."""
    table = read_public(data_dir, gpu)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / PROFILE_TABLE, index=False)
    info = PUBLIC_GPUS[gpu]
    (out_dir / PROFILE_METADATA).write_text(json.dumps({
        "device": info.name, "device_kind": "public", "source": SOURCE, "dtype": "fp16",
        "timing": "sum of CUDA kernel times per op call (torch profiler), median of 20 repeats",
        "models": sorted(table["model"].unique()), "tp": sorted(int(t) for t in table["tp"].unique()),
    }, indent=2))
    return out_dir
