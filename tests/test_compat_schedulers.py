"""Each quirk of `compat: reference` on a hand-built workload, vllm and sarathi: the iteration-by-
iteration trace derived by hand from reference-semantics.md, against the corrected default.

A trace lists, per iteration, the batch ("d<id>" a decode, "p<id>:<chunk>" a prompt chunk,
"x<id>" a request preempted while the batch was built) and then "+<id>" for each output token the
iteration emitted. Every batch takes one time unit; requests arrive at the times given.
"""
from __future__ import annotations

import pytest

from simulator.core.request import Request, State
from simulator.core.schedulers import RequestRejectedError, SchedulerConfig, make_scheduler


def trace(name, compat, requests, num_blocks, **config):
    """Run to completion; returns (the trace, the scheduler)."""
    config = {"block_size": 4, "watermark": 0.0, "max_model_len": 16, **config}
    scheduler = make_scheduler(name, SchedulerConfig(compat=compat, **config), num_blocks)
    pending = sorted(requests, key=lambda r: r.arrival)
    lines, now, done = [], 0.0, 0
    while done < len(requests):
        while pending and pending[0].arrival <= now:
            scheduler.add_request(pending.pop(0))
        batch = scheduler.schedule(now)
        done += len(scheduler.take_ignored())
        if batch is None:
            assert pending or done == len(requests), "stuck"
            if pending:
                now = pending[0].arrival
            continue
        for req in batch.preempted:  # reset by the time schedule returns, in both modes
            assert req.state in (State.WAITING, State.PREFILLING) and req.num_preemptions, req
        now += 1.0
        emitted, finished = scheduler.on_batch_end(batch, now)
        done += len(finished)
        lines.append(" ".join([f"d{r.id}" for r in batch.decodes] + [f"x{r.id}" for r in batch.preempted]
                              + [f"p{r.id}:{c}" for r, _, c in batch.prefills]
                              + [f"+{r.id}" for r in emitted]))
        assert len(lines) < 100
    return lines, scheduler


# ---- the completing prompt chunk emits no token; token #1 comes one iteration later (§2.2) ----

def test_first_token_vllm():
    make = lambda: [Request(0, 0.0, 4, 3)]
    assert trace("vllm", "corrected", make(), 10)[0] == ["p0:4 +0", "d0 +0", "d0 +0"]
    assert trace("vllm", "reference", make(), 10)[0] == ["p0:4", "d0 +0", "d0 +0", "d0 +0"]


def test_first_token_sarathi():
    make = lambda: [Request(0, 0.0, 5, 2)]
    assert trace("sarathi", "corrected", make(), 10, chunk_size=3)[0] == ["p0:3", "p0:2 +0", "d0 +0"]
    assert trace("sarathi", "reference", make(), 10, chunk_size=3)[0] == ["p0:3", "p0:2", "d0 +0", "d0 +0"]


# ---- a request preempted after k tokens generates k + D in total (§2.4) ------------------------

def test_preempted_request_makes_k_plus_d_tokens_vllm():
    # Two 4-token prompts in 3 blocks of 4: the second one loses its KV when both need a 2nd block.
    make = lambda: [Request(0, 0.0, 4, 4), Request(1, 0.0, 4, 4)]
    lines, _ = trace("vllm", "corrected", make(), 3)
    assert lines == ["p0:4 p1:4 +0 +1", "d0 x1 +0", "d0 +0", "d0 +0",
                     "p1:5 +1", "d1 +1", "d1 +1"]          # B: 1 + 3 tokens = D
    lines, _ = trace("vllm", "reference", make(), 3)
    assert lines == ["p0:4 p1:4", "d0 d1 +0 +1", "d0 x1 +0", "d0 +0", "d0 +0",
                     "p1:5", "d1 +1", "d1 +1", "d1 +1", "d1 +1"]  # B: 1 + 4 tokens = k + D
    assert sum(line.count("+1") for line in lines) == 5


def test_preempted_request_makes_k_plus_d_tokens_sarathi():
    make = lambda: [Request(0, 0.0, 4, 4), Request(1, 0.0, 4, 4)]
    lines, _ = trace("sarathi", "corrected", make(), 3, chunk_size=8)
    assert lines == ["p0:4 p1:4 +0 +1", "d0 x1 +0", "d0 +0", "d0 +0", "p1:5 +1", "d1 +1", "d1 +1"]
    lines, _ = trace("sarathi", "reference", make(), 3, chunk_size=8)
    assert lines == ["p0:4 p1:4", "d0 d1 +0 +1", "d0 x1 +0", "d0 +0", "d0 +0",
                     "p1:5", "d1 +1", "d1 +1", "d1 +1", "d1 +1"]


# ---- every decode needs a free block, new block or not (§2.3) ---------------------------------

def test_decode_needs_a_free_block_vllm():
    # Two 2-token prompts fill the 2 blocks exactly; no decode ever needs a new block.
    make = lambda: [Request(0, 0.0, 2, 2), Request(1, 0.0, 2, 2)]
    assert trace("vllm", "corrected", make(), 2)[0] == ["p0:2 p1:2 +0 +1", "d0 d1 +0 +1"]
    assert trace("vllm", "reference", make(), 2)[0] == [
        "p0:2 p1:2", "d0 x1 +0", "p1:2", "d0 x1 +0", "p1:2", "d1 +1", "d1 +1"]


def test_decode_needs_a_free_block_sarathi():
    make = lambda: [Request(0, 0.0, 2, 2), Request(1, 0.0, 2, 2)]
    assert trace("sarathi", "corrected", make(), 2, chunk_size=16)[0] == ["p0:2 p1:2 +0 +1", "d0 d1 +0 +1"]
    # The victim was decoding: in the same call its stale progress gives a zero chunk (§4).
    assert trace("sarathi", "reference", make(), 2, chunk_size=16)[0] == [
        "p0:2 p1:2", "d0 x1 +0", "d0 p1:2 +0", "d1 +1", "d1 +1"]


# ---- preempted requests are reset only when schedule returns (§2.4, §4) -----------------------

def test_stale_decoding_victim_stops_admission_sarathi():
    # C arrives after the first batch and would fit once B is preempted, but B's zero chunk stops
    # admission in that call.
    make = lambda: [Request(0, 0.0, 2, 3), Request(1, 0.0, 2, 3), Request(2, 1.0, 2, 1)]
    lines, _ = trace("sarathi", "reference", make(), 2, chunk_size=16)
    assert lines[:2] == ["p0:2 p1:2", "d0 x1 +0"]
    lines, _ = trace("sarathi", "corrected", make(), 2, chunk_size=16)
    assert lines[:3] == ["p0:2 p1:2 +0 +1", "d0 d1 +0 +1", "d0 d1 +0 +1"]


def test_stale_prefilling_victim_is_readmitted_with_its_old_remainder_sarathi():
    # B (8-token prompt) is partly prefilled when A's decode finds no free block: B is preempted
    # and, in the same call, readmitted with a chunk sized by its stale remainder; its prompt then
    # restarts with that chunk done. The same id is preempted and scheduled in one batch.
    make = lambda: [Request(0, 0.0, 3, 4), Request(1, 1.0, 8, 1)]
    lines, scheduler = trace("sarathi", "reference", make(), 3, chunk_size=4)
    assert lines == ["p0:3", "d0 p1:3 +0", "d0 x1 p1:3 +0", "d0 x1 +0", "d0 +0", "p1:4", "p1:4", "d1 +1"]
    lines, _ = trace("sarathi", "corrected", make(), 3, chunk_size=4)
    assert lines == ["p0:3 +0", "d0 p1:3 +0", "d0 x1 +0", "d0 +0", "p1:4", "p1:4 +1"]


def test_deferred_reset_changes_nothing_for_vllm():
    # vLLM admits only before its decode pass, so a victim is never seen stale: the preempted
    # request is back in the queue, reset, when schedule returns (checked by `trace`).
    lines, scheduler = trace("vllm", "reference", [Request(0, 0.0, 4, 4), Request(1, 0.0, 4, 4)], 3)
    assert "d0 x1 +0" in lines and not scheduler.waiting


# ---- a request longer than max_model_len is ignored and counted, not rejected (§3) -------------

@pytest.mark.parametrize("name", ["vllm", "sarathi"])
def test_overlong_requests_are_ignored_under_reference(name):
    def make():  # B's prompt exceeds max_model_len; C's prompt fits but prompt + output do not
        return [Request(0, 0.0, 4, 2), Request(1, 0.0, 10, 2), Request(2, 0.0, 4, 1), Request(3, 0.0, 6, 4)]
    with pytest.raises(RequestRejectedError, match="max_model_len=8"):
        make_scheduler(name, SchedulerConfig(max_model_len=8, block_size=4), 20).add_request(make()[1])
    with pytest.raises(RequestRejectedError, match="max_model_len=8"):
        make_scheduler(name, SchedulerConfig(max_model_len=8, block_size=4), 20).add_request(make()[3])
    requests = make()
    lines, scheduler = trace(name, "reference", requests, 20, max_model_len=8, chunk_size=16,
                             max_tokens_in_batch=16)
    assert lines[0] == "p0:4 p2:4 p3:6"  # B dropped at the head; A, C and D admitted
    assert requests[1].state == State.IGNORED and requests[1].generated == 0
    assert [r.generated for r in requests] == [2, 0, 1, 4]
