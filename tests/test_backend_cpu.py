"""The GPU backend's model, tensor parallelism and engine, checked on the CPU with a tiny model."""
from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the backend needs torch (pip install -e .[cpu])")

import torch.nn.functional as F  # noqa: E402

from backend.attention import AttentionMetadata  # noqa: E402
from backend.collectives import Distributed, Emulated, SingleGPU  # noqa: E402
from backend.engine import serve  # noqa: E402
from backend.kv_cache import PagedKVCache  # noqa: E402
from backend.model import LlamaShard  # noqa: E402
from backend.runner import RunnerConfig, Step, check_kv_blocks  # noqa: E402
from backend.tp import LocalExecutor, RayTPExecutor, build_executor  # noqa: E402
from backend.weights import init_random_weights  # noqa: E402
from simulator.core.block_manager import KVCacheTooSmallError  # noqa: E402
from simulator.core.metrics import check_conservation  # noqa: E402
from simulator.core.model_spec import ModelSpec  # noqa: E402
from simulator.core.request import Request  # noqa: E402
from simulator.core.schedulers import SchedulerConfig, make_scheduler  # noqa: E402
from simulator.core.schedulers.base import SchedulerStuckError  # noqa: E402

TINY = ModelSpec("tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
                 intermediate_size=128, vocab_size=128, rope_theta=10000.0, max_position=512,
                 dtype_bytes=4)
BLOCK = 4
CPU = torch.device("cpu")

# Two sequences through chunked prefill, then decodes (teacher-forced with the true next token):
# per step, (sequence, start, num_tokens). A: 35-token prompt in chunks 13/16/6; B: 30 tokens
# in chunks 7/23 sharing steps with A; then both decode together.
LENGTHS = {"A": 40, "B": 35}
STEPS = ([[("A", 0, 13)], [("A", 13, 16), ("B", 0, 7)], [("B", 7, 23), ("A", 29, 6)]]
         + [[("A", 35 + i, 1), ("B", 30 + i, 1)] for i in range(5)])


def tiny_model(tp: int = 1, rank: int = 0, comm=None, spec: ModelSpec = TINY) -> LlamaShard:
    model = LlamaShard(spec, tp, rank, comm or SingleGPU(CPU), torch.float32, CPU)
    init_random_weights(model, seed=7, mode="exact")
    return model


def sequences():
    gen = torch.Generator().manual_seed(3)
    tokens = {name: torch.randint(0, TINY.vocab_size, (n,), generator=gen) for name, n in LENGTHS.items()}
    blocks = torch.randperm(24, generator=gen).tolist()  # scattered, disjoint block tables
    tables = {"A": blocks[:10], "B": blocks[10:19]}
    return tokens, tables


def paged_logits(model: LlamaShard) -> list[torch.Tensor]:
    """Logits at each step's sampling positions, run through the paged KV cache."""
    tokens, tables = sequences()
    kv = PagedKVCache(model.spec.num_layers, 24, BLOCK, model.spec.kv_heads_per_rank(model.tp),
                      model.spec.head_dim, torch.float32, CPU)
    out = []
    for step in STEPS:
        ids = torch.cat([tokens[s][start:start + n] for s, start, n in step])
        positions = torch.cat([torch.arange(start, start + n) for _, start, n in step])
        sample_idx = torch.tensor(np.cumsum([n for _, _, n in step]) - 1)
        meta = AttentionMetadata.build([(start, n, tables[s]) for s, start, n in step], BLOCK, CPU)
        out.append(model(ids, positions, meta, kv, sample_idx))
    return out


def dense_logits(model: LlamaShard, ids: torch.Tensor) -> torch.Tensor:
    """A plain full-sequence forward of the same (tp=1) weights: no cache, no paging."""
    spec, n = model.spec, len(ids)
    d, group = spec.head_dim, spec.num_heads // spec.num_kv_heads

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    def rope(x):  # [n, heads, d]: rotate the pairs (i, i + d/2) by position × frequency_i
        freq = spec.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        angle = (torch.arange(n, dtype=torch.float64)[:, None] * freq)[:, None, :]
        x1, x2 = x[..., : d // 2].double(), x[..., d // 2:].double()
        return torch.cat((x1 * angle.cos() - x2 * angle.sin(),
                          x2 * angle.cos() + x1 * angle.sin()), -1).float()

    x = model.embed[ids]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for layer in model.layers:
        q, k, v = (rms(x, layer.input_norm) @ layer.qkv.T).split(
            (spec.num_heads * d, spec.num_kv_heads * d, spec.num_kv_heads * d), -1)
        q = rope(q.view(n, -1, d))
        k = rope(k.view(n, -1, d)).repeat_interleave(group, 1)
        v = v.reshape(n, -1, d).repeat_interleave(group, 1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * d ** -0.5
        attn = torch.einsum("hqk,khd->qhd", scores.masked_fill(~causal, -torch.inf).softmax(-1), v)
        x = x + attn.reshape(n, -1) @ layer.o_proj.T
        gate, up = (rms(x, layer.post_norm) @ layer.gate_up.T).chunk(2, -1)
        x = x + (F.silu(gate) * up) @ layer.down.T
    return rms(x, model.final_norm) @ model.lm_head.T


def test_paged_chunked_model_matches_dense_forward():
    model = tiny_model()
    tokens, _ = sequences()
    dense = {s: dense_logits(model, tokens[s]) for s in LENGTHS}
    for step, logits in zip(STEPS, paged_logits(model)):
        expected = torch.stack([dense[s][start + n - 1] for s, start, n in step])
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def _tp_rank(rank: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=2)
    model = tiny_model(tp=2, rank=rank, comm=Distributed(2, CPU))
    logits = paged_logits(model)
    if rank == 0:
        torch.save(logits, out_file)
    torch.distributed.destroy_process_group()


def test_tp2_gloo_matches_tp1():
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.pt")
        torch.multiprocessing.spawn(_tp_rank, args=(os.path.join(tmp, "init"), out), nprocs=2)
        tp2 = torch.load(out)
    for a, b in zip(tp2, paged_logits(tiny_model())):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_ray_tp_executor_samples_like_tp1():
    cfg = RunnerConfig(TINY, tp=2, block_size=BLOCK, num_blocks=24, seed=7).resolved()
    steps = [Step([(0, 13, [0, 1, 2, 3])], [5] * 13),
             Step([(12, 1, [0, 1, 2, 3]), (0, 9, [4, 5, 6])], [9] + [1] * 9),
             Step([(13, 1, [0, 1, 2, 3]), (9, 1, [4, 5, 6])], [3, 4])]
    local = LocalExecutor(dataclasses.replace(cfg, tp=1), [])
    ray_tp = RayTPExecutor(cfg, [])
    try:
        assert ray_tp.label == "tp=2 on 2 CPUs (gloo)"
        for step in steps:
            assert ray_tp.execute(step)[0] == local.execute(step)[0]
    finally:
        ray_tp.shutdown()


def _workload() -> list[Request]:
    return [Request(i, arrival=0.005 * i, prompt_len=9 + 11 * i, decode_len=2 + i % 5) for i in range(8)]


@pytest.mark.parametrize("scheduler", ["sarathi", "vllm"])
def test_engine_runs_workload_end_to_end(scheduler):
    sched_cfg = SchedulerConfig(max_model_len=128, chunk_size=32, block_size=BLOCK)
    executor = build_executor(RunnerConfig(TINY, block_size=BLOCK, num_blocks=96), scheduler, sched_cfg)
    requests = _workload()
    lines = []
    recorder = serve(requests, make_scheduler(scheduler, sched_cfg, executor.num_blocks), executor,
                     progress=False, log=lines.append)
    tables = recorder.finalize()
    check_conservation(tables.conservation)
    produced = np.bincount(tables.tokens["request_id"], minlength=len(requests))
    assert produced.tolist() == [r.decode_len for r in requests]
    assert (tables.batches["gpu_time"] > 0).all() and (tables.batches["cpu_time"] > 0).all()
    assert np.all(np.diff(tables.batches["start"]) > 0)
    assert "KV cache: 96 blocks" in lines[0] and "warm-up" in lines[1]


def _preempting_workload() -> list[Request]:
    # All arrive at once, so the batches (and the preemptions) do not depend on the wall clock.
    return [Request(i, arrival=0.0, prompt_len=8 + 3 * i, decode_len=24 + 2 * (i % 3)) for i in range(6)]


@pytest.mark.parametrize("scheduler", ["vllm", "sarathi"])
def test_preempted_requests_recompute_their_outputs(scheduler):
    """A 20-block cache preempts; the outputs must be those of a run with room for everything.

    Decoding is greedy, so a request's tokens depend only on the tokens it is fed, which a
    preemption must not change: its recompute prefill feeds the prompt and then the tokens it had
    generated. Tokens are compared exactly. The two runs batch differently, so their fp32 logits
    may differ in the last bits (~1e-6); the tiny model's top-2 logit margins are orders of
    magnitude wider (≥ 8e-4 over these runs, median 0.12), so argmax cannot flip. The run is
    pinned to the CPU in fp32 (bf16 on a GPU would not be exact). Feeding the prompt token
    instead of the outputs (the old bug) changes the outputs of every preempted request here.
    """
    sched_cfg = SchedulerConfig(max_model_len=64, chunk_size=16, block_size=BLOCK)
    executor = build_executor(RunnerConfig(TINY, block_size=BLOCK, num_blocks=200, device="cpu"),
                              scheduler, sched_cfg)
    runs = {}
    for num_blocks in (20, 200):
        requests, outputs = _preempting_workload(), {}
        recorder = serve(requests, make_scheduler(scheduler, sched_cfg, num_blocks), executor,
                         progress=False, log=lambda _: None, outputs=outputs)
        check_conservation(recorder.finalize().conservation)
        assert [len(outputs[r.id]) for r in requests] == [r.decode_len for r in requests]
        runs[num_blocks] = requests, outputs
    (small, small_out), (large, large_out) = runs[20], runs[200]
    preempted = [r.id for r in small if r.num_preemptions]
    assert preempted and not any(r.num_preemptions for r in large)
    for i in preempted:
        assert len(set(small_out[i])) > 1, "a constant output could not tell fed tokens apart"
    assert small_out == large_out


def test_engine_refuses_a_stuck_scheduler_and_a_short_executor():
    sched_cfg = SchedulerConfig(max_model_len=128, chunk_size=32, block_size=BLOCK)
    executor = build_executor(RunnerConfig(TINY, block_size=BLOCK, num_blocks=96, device="cpu"),
                              "sarathi", sched_cfg)
    stuck = make_scheduler("sarathi", sched_cfg, executor.num_blocks)
    stuck.schedule = lambda now: None
    with pytest.raises(SchedulerStuckError, match="scheduled nothing .* 1 waiting"):
        serve(_workload()[:1], stuck, executor, progress=False, log=lambda _: None)

    class DropsOne:
        num_blocks, kv_note, label = executor.num_blocks, "configured", "drops a token"
        warm_up_kernels = staticmethod(executor.warm_up_kernels)

        def execute(self, step):
            tokens, times = executor.execute(step)
            return tokens[:-1], times

    with pytest.raises(RuntimeError, match=r"sampled \d+ tokens for a batch of \d+"):
        serve(_workload(), make_scheduler("sarathi", sched_cfg, executor.num_blocks), DropsOne(),
              progress=False, log=lambda _: None)
    with pytest.raises(ValueError, match="token ids of shape"):
        Step([(0, 3, [0])], [1, 1])


def test_emulated_tp_is_labelled_and_modelled_delay_spins():
    sched_cfg = SchedulerConfig(max_model_len=128, chunk_size=32, block_size=BLOCK)
    cfg = RunnerConfig(TINY, tp=2, block_size=BLOCK, num_blocks=96, emulation="omit")
    executor = build_executor(cfg, "sarathi", sched_cfg)
    where = "GPU" if torch.cuda.is_available() else "CPU"  # device=auto
    assert executor.label == f"tp=2 emulated on 1 {where}: all-reduce omitted"
    recorder = serve(_workload(), make_scheduler("sarathi", sched_cfg, executor.num_blocks), executor,
                     progress=False, log=lambda _: None)
    check_conservation(recorder.finalize().conservation)

    class TenMilliseconds:  # an all-reduce time model that charges 10 ms for anything
        source = "test constant"
        seconds = all_gather_seconds = staticmethod(lambda nbytes: 0.01)

    comm = Emulated(2, CPU, "modelled", TenMilliseconds())
    assert comm.label == "tp=2 emulated on 1 CPU: all-reduce modelled (test constant)"
    import time
    t0 = time.perf_counter()
    comm.all_reduce(torch.ones(4))
    assert time.perf_counter() - t0 >= 0.01


def test_impossible_configs_fail_in_one_line():
    with pytest.raises(KVCacheTooSmallError, match=r"num_blocks=10 .* max_model_len=256 \(64 blocks"):
        check_kv_blocks(10, 4, 256)
    with pytest.raises(ValueError, match="real.num_blocks must be set"):
        RunnerConfig(TINY, device="cpu").resolved()
    with pytest.raises(ValueError, match="real.emulation='skip' must be one of"):
        Emulated(2, CPU, "skip")
    small = SchedulerConfig(max_model_len=256, chunk_size=32, block_size=BLOCK)
    with pytest.raises(KVCacheTooSmallError, match="num_blocks=8"):
        build_executor(RunnerConfig(TINY, block_size=BLOCK, num_blocks=8), "sarathi", small)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 + Triton attention)")
def test_gpu_bf16_model_matches_fp32_dense_and_sizes_kv_cache():
    gpu = torch.device("cuda")
    model = tiny_model()
    shard = LlamaShard(TINY, 1, 0, SingleGPU(gpu), torch.bfloat16, gpu)
    for (_, a), (_, b) in zip(shard.named_parameters(), model.named_parameters()):
        a.copy_(b)
    tokens, tables = sequences()
    kv = PagedKVCache(TINY.num_layers, 24, BLOCK, TINY.num_kv_heads, TINY.head_dim, torch.bfloat16, gpu)
    dense = {s: dense_logits(model, tokens[s]) for s in LENGTHS}
    for step in STEPS:
        ids = torch.cat([tokens[s][start:start + n] for s, start, n in step]).to(gpu)
        positions = torch.cat([torch.arange(start, start + n) for _, start, n in step]).to(gpu)
        sample_idx = torch.tensor(np.cumsum([n for _, _, n in step]) - 1, device=gpu)
        meta = AttentionMetadata.build([(start, n, tables[s]) for s, start, n in step], BLOCK, gpu)
        expected = torch.stack([dense[s][start + n - 1] for s, start, n in step])
        torch.testing.assert_close(shard(ids, positions, meta, kv, sample_idx).cpu(), expected,
                                   atol=0.1, rtol=0.05)
    sched_cfg = SchedulerConfig(max_model_len=256, chunk_size=64, block_size=16)
    executor = build_executor(RunnerConfig(TINY, gpu_memory_utilization=0.1), "sarathi", sched_cfg)
    assert executor.num_blocks > 1000 and executor.kv_note.startswith("measured")


class FakeGpu:
    """A GPU clock for the spin calibration: cycles run at 0.6 GHz until the GPU has done 50 ms of
    work, then at 1.98 GHz (as a GPU leaves its idle clocks). Events and `_sleep` follow it."""
    IDLE_HZ, BOOST_HZ, RAMP_S = 0.6e9, 1.98e9, 0.05

    def __init__(self):
        self.now = self.busy = 0.0

    def run(self, seconds: float) -> None:
        self.now += seconds
        self.busy += seconds

    def sleep(self, cycles: int) -> None:
        self.run(cycles / (self.BOOST_HZ if self.busy >= self.RAMP_S else self.IDLE_HZ))

    def event(self, **_):
        gpu = self

        class Event:
            def record(self):
                self.t = gpu.now

            def synchronize(self):
                pass

            def elapsed_time(self, end):
                return (end.t - self.t) * 1e3
        return Event()


@pytest.fixture
def fake_gpu(monkeypatch):
    import contextlib

    from backend import spin

    gpu = FakeGpu()
    monkeypatch.setattr(torch.cuda, "Event", gpu.event)
    monkeypatch.setattr(torch.cuda, "_sleep", gpu.sleep)
    monkeypatch.setattr(torch.cuda, "device", lambda _: contextlib.nullcontext())
    monkeypatch.setattr(spin, "_gemms", lambda device: lambda: gpu.run(0.004))  # 4 ms of GEMMs
    spin.calibration.cache_clear()
    yield gpu
    spin.calibration.cache_clear()


def test_spin_is_calibrated_at_working_clocks(fake_gpu, monkeypatch):
    from backend import spin

    rate = spin.calibration(0)
    assert rate.warmup_s >= 0.1 and rate.cycles_per_second == pytest.approx(FakeGpu.BOOST_HZ)
    before = fake_gpu.now
    spin.spin(torch.device("cuda", 0), 0.002)
    assert fake_gpu.now - before == pytest.approx(0.002), "a spin lasts what it was asked at working clocks"
    # Calibrated without the warm-up on a GPU fresh from idle, the rate is the idle clock's and
    # every spin afterwards 3.3x too short.
    spin.calibration.cache_clear()
    fake_gpu.busy = 0.0
    monkeypatch.setattr(spin, "WARMUP_S", 0.0)
    assert spin.calibration(0).cycles_per_second < FakeGpu.BOOST_HZ / 2


def test_timer_lead_covers_the_last_launch_within_bounds():
    from backend.runner import MAX_LEAD_S, MIN_LEAD_S, lead_seconds

    assert lead_seconds(0.010) == pytest.approx(0.0125)
    assert lead_seconds(0.0) == MIN_LEAD_S and lead_seconds(10.0) == MAX_LEAD_S
