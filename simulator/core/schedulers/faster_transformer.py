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

    def schedule(self, now: float) -> Batch | None:
        batch = Batch()
        if self.running:
            self._decode_pass(batch)
            return batch
        waiting = self.waiting
        while waiting and self._try_admit(waiting[0]):
            req = waiting.popleft()
            batch.add_prefill(req, req.prefill_len)
        return batch if batch.size else None
