"""Metrics from hand-made batch events: TTFT, TBT, conservation and the generation-stall figure."""
from __future__ import annotations

import math

import pytest

from simulator.core.batch import Batch
from simulator.core.metrics import ConservationError, MetricsRecorder, check_conservation
from simulator.core.request import Request
from simulator.outputs import longest_generation_stall


def record(recorder, start, end, prefills=(), decodes=(), emitted=(), finished=()):
    batch = Batch(decodes=list(decodes))
    for req in prefills:
        batch.add_prefill(req, req.prefill_len)
    recorder.on_batch(batch, start, end, list(emitted), list(finished), kv_blocks_in_use=0)


def two_requests():
    a, b = Request(0, 0.0, 10, 3), Request(1, 0.5, 10, 2)
    return a, b, MetricsRecorder([a, b])


def test_ttft_tbt_and_conservation():
    a, b, rec = two_requests()
    record(rec, 0.0, 1.0, prefills=[a], emitted=[a])             # a: token 1 at 1.0
    record(rec, 1.0, 3.0, prefills=[b], emitted=[b])             # b: token 1 at 3.0; a stalls
    record(rec, 3.0, 3.5, decodes=[a, b], emitted=[a, b], finished=[b])
    record(rec, 3.5, 4.0, decodes=[a], emitted=[a], finished=[a])
    t = rec.finalize()
    assert t.requests["ttft"].tolist() == [1.0, 2.5]
    assert t.requests["first_scheduled"].tolist() == [0.0, 1.0]
    assert t.requests["e2e"].tolist() == [4.0, 3.0]
    tbt = {(r, i): v for r, i, v in zip(t.tokens["request_id"], t.tokens["token_index"], t.tokens["tbt"])}
    assert math.isnan(tbt[(0, 1)]) and tbt[(0, 2)] == 2.5 and tbt[(0, 3)] == 0.5 and tbt[(1, 2)] == 0.5
    assert t.conservation["ok"]
    check_conservation(t.conservation)
    # a waits 2.5 s (1.0 -> 3.5) mid-generation: the prompt-only batch at 1.0-3.0 does not end it.
    assert longest_generation_stall(t) == 2.5


def test_a_missing_or_extra_token_fails_conservation():
    a, b, rec = two_requests()
    record(rec, 0.0, 1.0, prefills=[a, b], emitted=[a, b])
    record(rec, 1.0, 2.0, decodes=[a, b], emitted=[a, b, b], finished=[b])  # b counted twice
    t = rec.finalize()
    assert not t.conservation["ok"]
    assert t.conservation["finished_exactly_once"] == 1  # a never finished
    assert t.conservation["requests_with_wrong_token_count"] == 2
    with pytest.raises(ConservationError):
        check_conservation(t.conservation)


def test_consecutive_prompt_only_batches_are_one_stall():
    reqs = [Request(i, 0.0, 100, 4) for i in range(4)]
    rec = MetricsRecorder(reqs)
    record(rec, 0.0, 1.0, prefills=reqs[:1], emitted=reqs[:1])
    for i in (1, 2, 3):  # three prompt-only batches: request 0 gets no decode for 3 s
        record(rec, float(i), i + 1.0, prefills=[reqs[i]], emitted=[reqs[i]])
    for step in range(3):
        finished = reqs if step == 2 else []
        record(rec, 4.0 + step, 5.0 + step, decodes=reqs, emitted=reqs, finished=finished)
    assert longest_generation_stall(rec.finalize()) == 4.0  # from request 0's first token to 5.0
