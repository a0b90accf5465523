"""Paged attention: the PyTorch oracle, the KV writes, and the Triton kernel against the oracle.

The Triton kernel runs natively when CUDA is present. Without CUDA it runs under Triton's
interpreter, which has to be switched on (TRITON_INTERPRET=1) before `backend.attention` is
imported; since other test modules may import it first, the kernel cases then run in a child
pytest process with the variable set (`test_kernel_cases_under_interpreter`). If the whole
run already has TRITON_INTERPRET=1, they run in-process instead. Without a GPU the kernels are
also compiled for an H100 (sm_90), which catches compile errors the interpreter cannot see.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the backend needs torch (pip install -e .[cpu])")
pytest.importorskip("triton", reason="the backend needs triton (pip install -e .[cpu])")

from backend.attention import (FUSED_FP, KERNELS_INTERPRETED, AttentionMetadata,  # noqa: E402
                               _combine_splits_kernel, _paged_attention_kernel, kernel_config,
                               paged_attention, reference_attention, triton_paged_attention,
                               write_kv)
from backend.kv_cache import PagedKVCache  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
KERNEL_RUNNABLE = HAS_CUDA or KERNELS_INTERPRETED
DEVICE = "cuda" if HAS_CUDA else "cpu"
BLOCK_SIZE = 16
REL_TOL = 1e-2


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def make_batch(seqs: list[tuple[int, int]], num_q_heads: int, num_kv_heads: int, head_dim: int,
               dtype: torch.dtype, device: str, seed: int = 0, poison: bool = True):
    """A batch of `(start, num_query)` sequences over randomly scattered cache blocks.

    With `poison`, every slot that no sequence has written holds NaN, so a kernel that reads
    outside a sequence's context (or through table padding) produces NaN."""
    gen = torch.Generator().manual_seed(seed)
    blocks_needed = [math.ceil((start + n) / BLOCK_SIZE) for start, n in seqs]
    # Block 0 stays unused: block tables are padded with 0, so reading padding hits poison.
    num_blocks = sum(blocks_needed) + 7
    ids = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
    tables = []
    for count in blocks_needed:
        tables.append(ids[:count])
        ids = ids[count:]

    fill = float("nan") if poison else 0.0
    cache = PagedKVCache(1, num_blocks, BLOCK_SIZE, num_kv_heads, head_dim, dtype, device)
    k_cache, v_cache = cache.k[0], cache.v[0]
    k_cache.fill_(fill)
    v_cache.fill_(fill)
    # Write every token of every context (earlier steps' and this step's) through write_kv.
    contexts = [(0, start + n, table) for (start, n), table in zip(seqs, tables)]
    whole = AttentionMetadata.build(contexts, BLOCK_SIZE, device)
    num_context = whole.slot_mapping.shape[0]
    keys = torch.randn(num_context, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    values = torch.randn(num_context, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    write_kv(keys, values, k_cache, v_cache, whole.slot_mapping)

    meta = AttentionMetadata.build([(start, n, table) for (start, n), table in zip(seqs, tables)],
                                   BLOCK_SIZE, device)
    num_tokens = sum(n for _, n in seqs)
    # A strided view, as the model slices queries out of its fused q/k projection.
    fused = torch.randn(num_tokens, num_q_heads + num_kv_heads, head_dim, generator=gen)
    query = fused.to(device, dtype)[:, :num_q_heads]
    return query, k_cache, v_cache, meta, tables


def naive_attention(query, k_cache, v_cache, seqs, tables, scale):
    """One query token and head at a time, slot by slot, in float64."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    group = query.shape[1] // num_kv_heads
    k_slots = k_cache.reshape(-1, num_kv_heads, head_dim).double()
    v_slots = v_cache.reshape(-1, num_kv_heads, head_dim).double()
    out = torch.empty(query.shape, dtype=torch.float64)
    row = 0
    for (start, num_query), table in zip(seqs, tables):
        for j in range(num_query):
            pos = start + j
            slots = [table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(pos + 1)]
            for head in range(query.shape[1]):
                k = k_slots[slots, head // group]
                v = v_slots[slots, head // group]
                weights = torch.softmax(k @ query[row, head].double() * scale, dim=0)
                out[row, head] = weights @ v
            row += 1
    return out


def test_build_metadata():
    meta = AttentionMetadata.build([(0, 3, [5]), (20, 1, [2, 9]), (16, 4, [4, 1])], BLOCK_SIZE,
                                   "cpu")
    assert meta.query_start.tolist() == [0, 3, 4, 8]
    assert meta.context_lens.tolist() == [3, 21, 20]
    assert meta.block_tables.tolist() == [[5, 0], [2, 9], [4, 1]]
    assert meta.slot_mapping.tolist() == [80, 81, 82, 9 * 16 + 4, 16, 17, 18, 19]
    assert (meta.max_query_len, meta.max_context_len) == (4, 21)
    for index in (meta.query_start, meta.context_lens, meta.block_tables):
        assert index.dtype == torch.int32
    assert meta.slot_mapping.dtype == torch.int64


def test_write_kv_fills_exactly_the_mapped_slots():
    cache = PagedKVCache(2, 6, BLOCK_SIZE, 2, 8, torch.float32, "cpu")
    meta = AttentionMetadata.build([(14, 4, [3, 1]), (0, 2, [5])], BLOCK_SIZE, "cpu")
    key = torch.randn(6, 2, 8)
    value = torch.randn(6, 2, 8)
    write_kv(key, value, cache.k[1], cache.v[1], meta.slot_mapping)
    # (block, offset) of each token: positions 14..17 of table [3, 1], then 0..1 of [5].
    expected = [(3, 14), (3, 15), (1, 0), (1, 1), (5, 0), (5, 1)]
    for token, (block, offset) in enumerate(expected):
        assert torch.equal(cache.k[1][block, offset], key[token])
        assert torch.equal(cache.v[1][block, offset], value[token])
    written = len(expected) * 2 * 8
    assert cache.k[1].count_nonzero() == written and cache.v[1].count_nonzero() == written
    assert cache.k[0].count_nonzero() == 0 and cache.v[0].count_nonzero() == 0


def test_bytes_per_block():
    assert PagedKVCache.bytes_per_block(60, 16, 4, 128, torch.bfloat16) == 2 * 60 * 16 * 4 * 128 * 2


def test_reference_matches_naive_loop():
    seqs = [(0, 5), (18, 1), (7, 12), (33, 1)]
    query, k_cache, v_cache, meta, tables = make_batch(seqs, 6, 2, 8, torch.float32, "cpu")
    scale = 8 ** -0.5
    expected = naive_attention(query, k_cache, v_cache, seqs, tables, scale)
    actual = reference_attention(query, k_cache, v_cache, meta, scale)
    torch.testing.assert_close(actual.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(KERNELS_INTERPRETED, reason="the Triton interpreter replaces the CPU fallback")
def test_cpu_dispatch_uses_reference():
    query, k_cache, v_cache, meta, _ = make_batch([(3, 4), (9, 1)], 4, 2, 16, torch.float32, "cpu")
    assert torch.equal(paged_attention(query, k_cache, v_cache, meta, 0.25),
                       reference_attention(query, k_cache, v_cache, meta, 0.25))


# Small mixed batches: (start, num_query) per sequence, query heads, KV heads, head_dim.
KERNEL_CASES = {
    # Decodes only, including a first token (context 1) and contexts ending mid-block.
    "decodes": ([(0, 1), (16, 1), (39, 1), (94, 1)], 8, 2, 32),
    # Fresh prompt, resumed chunks with nonzero start spanning several query tiles, decodes.
    "mixed": ([(0, 37), (49, 1), (23, 20), (129, 1), (64, 70)], 4, 2, 64),
    # Group of 3 query heads per KV head: padded rows inside every tile.
    "group3": ([(5, 33), (80, 1), (0, 1), (16, 16)], 6, 2, 16),
    # One query head per KV head, and a chunk after many short sequences: later sequences'
    # tiles start past the spare tiles of earlier ones.
    "mha": ([(3, 16)] + [(10 * i, 1) for i in range(1, 9)] + [(40, 16), (2, 5)], 2, 2, 16),
}
KERNEL_DTYPES = [
    torch.float32,
    torch.float16,
    pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
        not HAS_CUDA, reason="bf16 tl.dot is wrong under the Triton interpreter; GPU only")),
]


@pytest.mark.skipif(not KERNEL_RUNNABLE, reason="no CUDA and no interpreter in this process: "
                    "run by test_kernel_cases_under_interpreter in a child process")
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("num_kv_splits", [1, 3])
@pytest.mark.parametrize("case", sorted(KERNEL_CASES))
def test_kernel_matches_reference(case, num_kv_splits, dtype):
    seqs, num_q_heads, num_kv_heads, head_dim = KERNEL_CASES[case]
    query, k_cache, v_cache, meta, _ = make_batch(seqs, num_q_heads, num_kv_heads, head_dim,
                                                  dtype, DEVICE, seed=len(seqs) + num_kv_splits)
    scale = head_dim ** -0.5
    out = torch.full_like(query, float("nan"))  # every element must be overwritten
    triton_paged_attention(query, k_cache, v_cache, meta, scale, out=out,
                           num_kv_splits=num_kv_splits)
    expected = reference_attention(query, k_cache, v_cache, meta, scale)
    assert not out.isnan().any(), "kernel left output unwritten or read unwritten cache slots"
    assert rel_err(out, expected) <= REL_TOL


@pytest.mark.skipif(KERNEL_RUNNABLE, reason="kernel cases already run in this process")
def test_kernel_cases_under_interpreter():
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{Path(__file__).resolve()}::test_kernel_matches_reference"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    report = child.stdout + child.stderr
    assert child.returncode == 0, report
    # Guard against a child that silently skipped everything: fp32 and fp16 must have run.
    passed = re.search(r"(\d+) passed", report)
    assert passed and int(passed.group(1)) == len(KERNEL_CASES) * 2 * 2, report


def compile_for_hopper(kernel, arg_types: dict[str, str], constexprs: dict, **options):
    """Compile `kernel` for sm_90 as a launch would, without needing a GPU."""
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {name: "constexpr" if name in constexprs else arg_types.get(name, "i32")
                 for name in kernel.arg_names}
    # Launches see 16-byte aligned pointers and strides; tell the compiler the same so that it
    # vectorises and pipelines the loads as it would at run time.
    aligned = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]]
               for name, kind in signature.items() if kind.startswith("*") or
               (name.startswith("stride") and name != "stride_bt")}
    return triton_compile(ASTSource(kernel, signature, constexprs, aligned),
                          target=GPUTarget("cuda", 90, 32), options=options)


@pytest.mark.skipif(KERNELS_INTERPRETED or HAS_CUDA,
                    reason="interpreted kernels are not compiled; on a GPU the launches compile")
@pytest.mark.parametrize("max_query_len", [1536, 1])
def test_kernels_compile_for_hopper(max_query_len):
    """Compiling for an H100 on the CPU catches what the interpreter cannot: type errors in
    control flow, unsupported layouts, and tiles that overflow shared memory."""
    config = kernel_config(28, 4, 128, BLOCK_SIZE, max_query_len)
    options = {key: config.pop(key) for key in ("num_warps", "num_stages", "enable_fp_fusion")}
    pointer_types = {"q_ptr": "*bf16", "k_cache_ptr": "*bf16", "v_cache_ptr": "*bf16",
                     "out_ptr": "*bf16", "part_acc_ptr": "*fp32", "part_m_ptr": "*fp32",
                     "part_l_ptr": "*fp32", "query_start_ptr": "*i32",
                     "context_lens_ptr": "*i32", "block_tables_ptr": "*i32", "qk_scale": "fp32"}
    max_shared = 227 * 1024  # per thread block on an H100
    for write_partials in (False, True):
        compiled = compile_for_hopper(_paged_attention_kernel, pointer_types,
                                      dict(config, WRITE_PARTIALS=write_partials), **options)
        assert compiled.metadata.shared <= max_shared
    compiled = compile_for_hopper(_combine_splits_kernel, pointer_types,
                                  dict(NUM_Q_HEADS=28, HEAD_DIM=128, SPLITS_PAD=8), num_warps=4, **FUSED_FP)
    assert compiled.metadata.shared <= max_shared


# Yi-34B sharded over 2 GPUs: 28 query heads, 4 KV heads, head_dim 128.
@pytest.mark.skipif(not HAS_CUDA, reason="realistic shapes need a GPU (too slow interpreted)")
@pytest.mark.parametrize("seqs", [
    pytest.param([(2047, 1)] * 64 + [(1024, 1536)], id="64_decodes_and_chunk"),
    pytest.param([(2047, 1)] * 32, id="32_decodes_auto_split"),
])
def test_kernel_matches_reference_bf16_realistic(seqs):
    query, k_cache, v_cache, meta, _ = make_batch(seqs, 28, 4, 128, torch.bfloat16, "cuda",
                                                  poison=False)
    scale = 128 ** -0.5
    out = torch.full_like(query, float("nan"))
    triton_paged_attention(query, k_cache, v_cache, meta, scale, out=out)
    expected = reference_attention(query, k_cache, v_cache, meta, scale)
    assert not out.isnan().any()
    assert rel_err(out, expected) <= REL_TOL


class CompileKeyRecorder:
    """Stands in for a Triton kernel: each launch records the cache key Triton's own argument
    binder gives it for an H100/H200 (sm_90), i.e. which compiled binary the launch would use.
    `specialize=False` ignores the kernel's `do_not_specialize`, as an undecorated kernel would."""

    def __init__(self, kernel, specialize: bool = True):
        import copy

        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import compute_cache_key, create_function_from_signature

        params = kernel.params
        if not specialize:
            params = [copy.copy(p) for p in params]
            for p in params:
                p.do_not_specialize = False
        self._binder = create_function_from_signature(kernel.signature, params,
                                                      make_backend(GPUTarget("cuda", 90, 32)))
        self._key = compute_cache_key
        self.keys: set[str] = set()

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            _, specialization, options = self._binder(*args, **kwargs)
            self.keys.add(self._key({}, specialization, options))
        return launch


def replayed_attention_batches(scheduler: str) -> list:
    """The attention metadata of every batch the validation workload (conf/validate.yaml: 48
    arXiv requests at QPS 2) gives `scheduler` on the Yi-34B TP-2 shard, as the engine builds it."""
    from backend.runner import Step
    from experiments.validate import plan_pairs
    from simulator.core.schedulers import make_scheduler
    from simulator.engine import simulate
    from simulator.run import make_requests, prepare
    from tests.test_simulator import compose_config

    # The analytical clock paces the replay: what matters is the mix of batch shapes it yields.
    config = compose_config("validate", ["cost_model=analytical"], Path("/nonexistent"))
    (pair,) = [p for p in plan_pairs(config) if p.scheduler == scheduler]
    setup = prepare(pair.sim_cfg)
    metas = []

    def batch_time(batch):
        generated = {req.id: [PROMPT] * req.generated for req in batch.decodes}
        generated.update({req.id: [PROMPT] * req.generated for req, _, _ in batch.prefills})
        metas.append(AttentionMetadata.build(Step.from_batch(batch, generated).seqs, BLOCK_SIZE, "cpu"))
        return setup.cost_model.batch_time(batch)

    simulate(make_requests(setup.workload),
             make_scheduler(scheduler, setup.scheduler_config, setup.num_blocks), batch_time)
    return metas


PROMPT = 1
H100_SMS = 132  # H100 SXM and H200 alike


@pytest.mark.skipif(KERNELS_INTERPRETED, reason="needs the kernels as Triton JIT functions")
def test_warm_up_compiles_every_variant_a_replayed_workload_reaches(monkeypatch):
    """No Triton compile after the warm-up: every launch of a replayed validation workload (both
    schedulers, Yi-34B TP-2 shard shapes, an H100's SM count) maps to a binary that
    `warm_up_kernels` already compiled. Without `do_not_specialize` the same replay would need
    binaries the warm-up never built, so the check can fail."""
    import backend.attention as attention

    num_q_heads, num_kv_heads, head_dim = 28, 4, 128
    cache = PagedKVCache(1, 64, BLOCK_SIZE, num_kv_heads, head_dim, torch.bfloat16, "cpu")
    scale = head_dim ** -0.5
    monkeypatch.setattr(attention, "KERNELS_INTERPRETED", True)  # let CPU tensors reach the launch

    def launch_keys(batches, specialize=True) -> tuple[set[str], set[str]]:
        main = CompileKeyRecorder(_paged_attention_kernel, specialize)
        combine = CompileKeyRecorder(_combine_splits_kernel, specialize)
        monkeypatch.setattr(attention, "_paged_attention_kernel", main)
        monkeypatch.setattr(attention, "_combine_splits_kernel", combine)
        if batches is None:
            assert attention.warm_up_kernels(cache.k[0], cache.v[0], num_q_heads, scale) > 0
        for meta in batches or []:
            tokens = meta.slot_mapping.shape[0]
            # As the model slices queries out of its fused q/k projection.
            fused = torch.empty((tokens, num_q_heads + num_kv_heads, head_dim), dtype=torch.bfloat16)
            triton_paged_attention(fused[:, :num_q_heads], cache.k[0], cache.v[0], meta, scale,
                                   num_sms=H100_SMS)
        return main.keys, combine.keys

    warm_main, warm_combine = launch_keys(None)
    replay = replayed_attention_batches("vllm") + replayed_attention_batches("sarathi")
    main, combine = launch_keys(replay)
    assert len(replay) > 500 and len({m.max_query_len for m in replay}) > 20
    assert len(main) >= 3 and combine, "the replay should reach several tile sizes and split runs"
    assert main <= warm_main, f"{len(main - warm_main)} kernel variants compile after the warm-up"
    assert combine <= warm_combine, f"{len(combine - warm_combine)} combine variants compile after it"

    unspecialized = launch_keys(replay, specialize=False)
    warm_unspecialized = launch_keys(None, specialize=False)
    assert not (unspecialized[0] <= warm_unspecialized[0]), "without do_not_specialize it must miss"
