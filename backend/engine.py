"""The real engine: the simulator's replica loop (simulator/engine.py) on the wall clock, with
batches run on the model by an executor (tp.py) instead of priced by a cost model.

Requests join the scheduler once the time since the run started passes their arrival; with
nothing waiting or running, the loop sleeps until the next arrival (a scheduler that schedules
nothing while requests wait or run is stuck: `SchedulerStuckError`, as in the simulator). The
engine keeps every unfinished request's output tokens: decodes feed the latest, and a preempted
request's recompute prefill feeds them all again after its prompt. Per batch it records, besides the
events the simulator records, `gpu_time` (the forward pass and sampling on the device, from when
the device starts it), `cpu_time` (scheduling, input preparation and kernel launches),
`launch_time` (the launches alone) and `lead_time` (the spin that covers the launches; see
backend/runner.py). A batch starts when it is scheduled and ends when its tokens are back on the
host (its wall time, launches included); times are seconds since the run started.

Before the timed run the warm-up compiles every attention kernel variant a batch can reach
(`backend.attention.warm_up_kernels`) and runs a few iterations (a prompt chunk, a decode, both
together) that load the remaining kernels; none of it is timed or recorded, and the log says
how much ran.
"""
from __future__ import annotations

import itertools
import time
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from simulator.core.metrics import MetricsRecorder
from simulator.core.request import Request
from simulator.core.schedulers import Scheduler
from simulator.core.schedulers.base import SchedulerStuckError

from .runner import Step

WARMUP_TOKENS = 64


def warm_up(executor, rounds: int, num_blocks: int, block_size: int) -> tuple[int, int]:
    """Compile the attention kernels, then run `rounds` × (prompt chunk, decode, mixed) steps;
    returns the number of kernel launches and of iterations."""
    launches = executor.warm_up_kernels()
    prompt = Step.dummy([min(WARMUP_TOKENS, num_blocks * block_size)], block_size)
    _, n, blocks = prompt.seqs[0]
    decode_blocks = list(range(num_blocks - len(blocks), num_blocks))  # away from the prompt's
    decode = Step([(n - 1, 1, decode_blocks)], prompt.token_ids[:1])
    mixed = Step(decode.seqs + prompt.seqs, np.concatenate([decode.token_ids, prompt.token_ids]))
    for _ in range(rounds):
        for step in (prompt, decode, mixed):
            executor.execute(step)
    return launches, 3 * rounds


def serve(requests: Sequence[Request], scheduler: Scheduler, executor, warmup_rounds: int = 1,
          progress: bool = True, log: Callable[[str], None] = print,
          outputs: dict[int, list[int]] | None = None) -> MetricsRecorder:
    """Run all `requests` (ids 0..n-1, sorted by arrival) to completion; returns the recorder.

    Pass a dict as `outputs` to get every request's output token ids (request id -> tokens);
    without one, a request's tokens are dropped when it finishes."""
    scheduler.check_requests(requests)  # reject impossible requests before anything runs
    blocks = scheduler.blocks
    if blocks.num_blocks > executor.num_blocks:
        raise ValueError(f"the scheduler manages {blocks.num_blocks} KV blocks but the executor's "
                         f"cache holds {executor.num_blocks}; build the scheduler with "
                         "executor.num_blocks")
    log(f"real engine: {executor.label}; KV cache: {blocks.num_blocks} blocks of "
        f"{blocks.block_size} tokens ({blocks.num_blocks * blocks.block_size:,} tokens) per rank "
        f"({executor.kv_note})")
    launches, iterations = warm_up(executor, warmup_rounds, blocks.num_blocks, blocks.block_size)
    log(f"warm-up: {launches} attention-kernel launches (every variant) and {iterations} iterations "
        "before the timed run (not recorded)")

    recorder = MetricsRecorder(requests)
    keep = outputs is not None
    history: dict[int, list[int]] = outputs if keep else {}  # request id -> its output tokens
    n, arrived, finished_total = len(requests), 0, 0
    t0 = time.perf_counter()
    with tqdm(total=n, desc="requests finished", disable=not progress) as bar:
        while finished_total < n:
            now = time.perf_counter() - t0
            while arrived < n and requests[arrived].arrival <= now:
                scheduler.add_request(requests[arrived])
                history[requests[arrived].id] = []
                arrived += 1
            batch = scheduler.schedule(now)
            if batch is None:
                if scheduler.waiting or scheduler.running or arrived == n:
                    raise SchedulerStuckError(
                        f"{scheduler.name} scheduled nothing at t={now:.3f}s with "
                        f"{len(scheduler.waiting)} waiting, {len(scheduler.running)} running and "
                        f"{n - arrived} requests still to arrive")
                time.sleep(max(0.0, requests[arrived].arrival - (time.perf_counter() - t0)))
                continue
            step = Step.from_batch(batch, history)
            schedule_time = time.perf_counter() - t0 - now
            tokens, times = executor.execute(step)
            if len(tokens) != batch.size:
                raise RuntimeError(f"the executor sampled {len(tokens)} tokens for a batch of "
                                   f"{batch.size} sequences")
            sequences = itertools.chain(batch.decodes, (req for req, _, _ in batch.prefills))
            sampled = {req.id: token for req, token in zip(sequences, tokens, strict=True)}
            end = time.perf_counter() - t0
            emitted, finished = scheduler.on_batch_end(batch, end)
            for req in emitted:  # not the chunks that leave part of the prefill to later
                history[req.id].append(sampled[req.id])
            recorder.on_batch(batch, now, end, emitted, finished, blocks.num_used,
                              gpu_time=times.gpu, cpu_time=schedule_time + times.prep + times.launch,
                              launch_time=times.launch, lead_time=times.lead)
            if not keep:
                for req in finished:
                    del history[req.id]
            finished_total += len(finished)
            bar.update(len(finished))
    return recorder
