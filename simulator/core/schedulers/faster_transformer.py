"""FasterTransformer: request-level (static) batching (reference-semantics §5).

A group of requests is admitted together only when nothing is running; the group then decodes
until its last member finishes, while new arrivals wait. Like Orca it reserves `max_model_len`
of KV per request and never preempts.
"""
from __future__ import annotations

from ..batch import Batch
from .base import Scheduler


class FasterTransformerScheduler(Scheduler):
    name = "faster_transformer"
    reserves_max_len = True

    def _build_batch(self) -> Batch:
        batch = Batch()
        if self.running:
            self._decode_pass(batch)
            return batch
        waiting = self.waiting
        while (req := self._waiting_head()) is not None and self._try_admit(req):
            waiting.popleft()
            batch.add_prefill(req, req.prefill_len)
        return batch
