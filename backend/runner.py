"""One rank's model runner: a batch description in, sampled tokens and timings out.

A `Step` is the plain-data form of a scheduler `Batch` (picklable, sent to every TP rank): per
sequence `(start, num_tokens, block table)`, and the token id fed at every position. Prompt
tokens are all 1 (as in the reference); position `prompt_len + i` holds the request's output
token `i`. A decode thus feeds the request's latest output token, and the recompute prefill of a
preempted request (prompt + the k tokens it had generated, simulator/core/request.py) feeds its
k outputs after the prompt. Every sequence samples at its last position (greedy); the token
sampled after a prompt chunk that does not finish the prefill is simply not used.

Timing (`StepTimes`). Building the input tensors and the attention metadata is `prep` (CPU). On a
GPU, the host enqueues the forward pass and sampling (`launch`, CPU: hundreds of kernels) while
the GPU spins (`lead`, sized from the previous step's launch time, as profiler/measure.py does),
and CUDA events bracket the forward on the GPU (`gpu`): it starts when the GPU starts the work,
so launch gaps are not booked as kernel time. A step thus takes prep + launch (or the lead, if
longer) + gpu of wall time, and launches are never hidden behind GPU work: the additive picture
the cost models draw (CPU overhead + GPU time). On the CPU the forward is synchronous:
`time.perf_counter` brackets it (`gpu`), and launch and lead are 0. Inputs are not padded: the
GEMMs take any token count.

KV capacity (reference-semantics §6): after the weights are loaded, one forward of the largest
batch the scheduler can issue (`Scheduler.profile_prompt_lengths`, the same batch the simulator's
KV-capacity estimate assumes) measures the activation peak; the cache then gets
total memory × gpu_memory_utilization − (memory in use + activation peak), bounded by what is
actually free. On the CPU the block count is configured.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import torch

from simulator.core.batch import Batch
from simulator.core.block_manager import KVCacheTooSmallError
from simulator.core.model_spec import ModelSpec
from simulator.core.request import Request

from .attention import AttentionMetadata, KERNELS_INTERPRETED, warm_up_kernels
from .kv_cache import PagedKVCache
from .model import LlamaShard
from .spin import spin
from .weights import init_random_weights

PROMPT_TOKEN = 1
GIB = 1024 ** 3
# The GPU's head start over the host's launches: the last launch time x margin, within bounds.
LEAD_MARGIN = 1.25
MIN_LEAD_S, MAX_LEAD_S = 0.2e-3, 50e-3


class StepTimes(NamedTuple):
    """Seconds one step took, by what (module docstring)."""
    gpu: float     # forward pass and sampling on the device
    prep: float    # input tensors and attention metadata (CPU)
    launch: float  # enqueueing the forward (CPU; 0 on the CPU device)
    lead: float    # the spin that gave the GPU its head start (0 on the CPU device)


def lead_seconds(last_launch_s: float) -> float:
    """The spin before a forward whose launches should take about `last_launch_s`."""
    return min(max(LEAD_MARGIN * last_launch_s, MIN_LEAD_S), MAX_LEAD_S)


@dataclass(frozen=True)
class RunnerConfig:
    model: ModelSpec
    tp: int = 1
    num_layers: int | None = None       # override model.num_layers for short validation runs
    block_size: int = 16
    seed: int = 42
    device: str = "auto"                # "auto": cuda if available, else cpu
    dtype: str = "auto"                 # "auto": bfloat16 on cuda, float32 on cpu
    weights: str = "auto"               # "exact" | "per_rank"; "auto": exact on cpu, per_rank on cuda
    num_blocks: int | None = None       # KV blocks per rank; required on cpu, measured on cuda if None
    gpu_memory_utilization: float = 0.85
    emulation: str | None = None        # tp>1 on one device: "omit" | "modelled" (see collectives.py)

    def resolved(self) -> "RunnerConfig":
        """Every "auto" replaced by its value on this machine; the layer override applied."""
        device = self.device if self.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        on_gpu = device.startswith("cuda")
        if not on_gpu and self.num_blocks is None:
            raise ValueError("real.num_blocks must be set when running on the CPU "
                             "(there is no GPU memory to size the KV cache from)")
        model = self.model
        if self.num_layers is not None:
            model = dataclasses.replace(model, num_layers=self.num_layers)
        return dataclasses.replace(
            self, model=model, num_layers=None, device=device,
            dtype=self.dtype if self.dtype != "auto" else ("bfloat16" if on_gpu else "float32"),
            weights=self.weights if self.weights != "auto" else ("per_rank" if on_gpu else "exact"))


@dataclass
class Step:
    seqs: list[tuple[int, int, list[int]]]  # (start, num_tokens, block table) per sequence
    token_ids: np.ndarray                   # int64, the token fed at each position, sequence by sequence

    def __post_init__(self):
        self.token_ids = np.asarray(self.token_ids, dtype=np.int64)
        num_tokens = sum(n for _, n, _ in self.seqs)
        if self.token_ids.shape != (num_tokens,):
            raise ValueError(f"a step of {len(self.seqs)} sequences and {num_tokens} tokens got "
                             f"token ids of shape {self.token_ids.shape}")

    @classmethod
    def from_batch(cls, batch: Batch, outputs: Mapping[int, Sequence[int]]) -> "Step":
        """Decodes first (request order of `batch.decodes`), then prompt chunks. `outputs` holds
        every request's output tokens so far (an empty list before its first)."""
        seqs = [(req.context_len - 1, 1, req.blocks) for req in batch.decodes]
        seqs += [(start, chunk, req.blocks) for req, start, chunk in batch.prefills]
        ids = np.full(batch.num_tokens, PROMPT_TOKEN, dtype=np.int64)
        for i, req in enumerate(batch.decodes):
            ids[i] = _history(outputs, req)[-1]  # at context_len - 1 = prompt_len + generated - 1
        offset = len(batch.decodes)
        for req, start, chunk in batch.prefills:
            first = max(start, req.prompt_len)  # the first position past the prompt, if any
            if first < start + chunk:           # a recompute prefill: feed the outputs again
                ids[offset + first - start: offset + chunk] = \
                    _history(outputs, req)[first - req.prompt_len: start + chunk - req.prompt_len]
            offset += chunk
        return cls(seqs, ids)

    @classmethod
    def dummy(cls, lengths: list[int], block_size: int) -> "Step":
        """Prompts of the given lengths from position 0, on consecutive blocks from block 0."""
        seqs, block = [], 0
        for n in lengths:
            count = -(-n // block_size)
            seqs.append((0, n, list(range(block, block + count))))
            block += count
        return cls(seqs, np.full(sum(lengths), PROMPT_TOKEN, dtype=np.int64))


def _history(outputs: Mapping[int, Sequence[int]], req: Request) -> Sequence[int]:
    """`req`'s output tokens, which must be all it has generated."""
    history = outputs[req.id]
    if len(history) != req.generated:
        raise RuntimeError(f"request {req.id} has generated {req.generated} tokens but the engine "
                           f"holds {len(history)} of them")
    return history


class ModelRunner:
    def __init__(self, cfg: RunnerConfig, rank: int, comm):
        self.cfg = cfg  # resolved
        self.device = torch.device(cfg.device)
        self.on_gpu = self.device.type == "cuda"
        self.dtype = getattr(torch, cfg.dtype)
        self.model = LlamaShard(cfg.model, cfg.tp, rank, comm, self.dtype, self.device)
        init_random_weights(self.model, cfg.seed, cfg.weights)
        self.kv: PagedKVCache | None = None
        self._last_launch_s = MAX_LEAD_S  # until a step has measured it

    def _new_cache(self, num_blocks: int) -> PagedKVCache:
        m = self.cfg.model
        return PagedKVCache(m.num_layers, num_blocks, self.cfg.block_size,
                            m.kv_heads_per_rank(self.cfg.tp), m.head_dim, self.dtype, self.device)

    def block_bytes(self) -> int:
        m = self.cfg.model
        return PagedKVCache.bytes_per_block(m.num_layers, self.cfg.block_size,
                                            m.kv_heads_per_rank(self.cfg.tp), m.head_dim, self.dtype)

    def measure_kv_blocks(self, lengths: list[int]) -> tuple[int, str]:
        """KV blocks that fit next to the weights and the activations of a `lengths` forward,
        and one line saying how they were counted."""
        step = Step.dummy(lengths, self.cfg.block_size)
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        in_use = torch.cuda.memory_allocated(self.device)
        self.kv = self._new_cache(sum(len(blocks) for _, _, blocks in step.seqs))
        cache_bytes = torch.cuda.memory_allocated(self.device) - in_use
        self.execute(step)
        activations = torch.cuda.max_memory_allocated(self.device) - in_use - cache_bytes
        self.kv = None
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(self.device).total_memory
        free, _ = torch.cuda.mem_get_info(self.device)
        usable = min(total * self.cfg.gpu_memory_utilization - in_use - activations, free - activations)
        note = (f"measured: {total / GIB:.1f} GiB × {self.cfg.gpu_memory_utilization} − "
                f"{in_use / GIB:.1f} GiB in use (weights) − {activations / GIB:.2f} GiB activation "
                f"peak of a {sum(lengths)}-token forward; {free / GIB:.1f} GiB free")
        return max(0, int(usable // self.block_bytes())), note

    def allocate_kv(self, num_blocks: int) -> None:
        self.kv = self._new_cache(num_blocks)

    def warm_up_kernels(self) -> int:
        """Compile every attention kernel variant on this cache (0 launches where attention runs
        the PyTorch reference, on the CPU without the interpreter)."""
        if not (self.on_gpu or KERNELS_INTERPRETED):
            return 0
        m = self.cfg.model
        return warm_up_kernels(self.kv.k[0], self.kv.v[0], m.heads_per_rank(self.cfg.tp), m.head_dim ** -0.5)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)

    def execute(self, step: Step) -> tuple[list[int], StepTimes]:
        """Run one step; returns the sampled token per sequence and what the step took."""
        t0 = time.perf_counter()
        counts = np.fromiter((n for _, n, _ in step.seqs), dtype=np.int64, count=len(step.seqs))
        starts = np.fromiter((s for s, _, _ in step.seqs), dtype=np.int64, count=len(step.seqs))
        ends = np.cumsum(counts)
        positions = np.arange(ends[-1]) + np.repeat(starts - (ends - counts), counts)
        token_ids = self._tensor(step.token_ids)
        positions, sample_idx = self._tensor(positions), self._tensor(ends - 1)
        meta = AttentionMetadata.build(step.seqs, self.cfg.block_size, self.device)
        prep = time.perf_counter() - t0

        if not self.on_gpu:
            t1 = time.perf_counter()
            tokens = self.model(token_ids, positions, meta, self.kv, sample_idx).argmax(dim=-1)
            return tokens.tolist(), StepTimes(time.perf_counter() - t1, prep, 0.0, 0.0)
        lead = lead_seconds(self._last_launch_s)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        spin(self.device, lead)
        start.record()
        t1 = time.perf_counter()
        tokens = self.model(token_ids, positions, meta, self.kv, sample_idx).argmax(dim=-1)
        end.record()
        self._last_launch_s = time.perf_counter() - t1
        end.synchronize()
        times = StepTimes(start.elapsed_time(end) * 1e-3, prep, self._last_launch_s, lead)
        return tokens.tolist(), times


def check_kv_blocks(num_blocks: int, block_size: int, max_model_len: int) -> None:
    needed = -(-max_model_len // block_size)
    if num_blocks < needed:
        raise KVCacheTooSmallError(
            f"KV cache: num_blocks={num_blocks} ({num_blocks * block_size} tokens) cannot hold one "
            f"request of max_model_len={max_model_len} ({needed} blocks of {block_size}); raise "
            "gpu_memory_utilization or tp, lower max_model_len, or configure more num_blocks")
