"""Orca: iteration-level batching without chunking (reference-semantics §5).

Every iteration decodes all running requests and, in the same batch, prefills every arrived
request that fits, whole. Each request reserves KV for `max_model_len` tokens at admission, so
Orca never preempts; memory, not a token budget, bounds the batch.
"""
from __future__ import annotations

from ..batch import Batch
from .base import Scheduler


class OrcaScheduler(Scheduler):
    name = "orca"
    reserves_max_len = True

    def schedule(self, now: float) -> Batch | None:
        batch = Batch()
        self._decode_pass(batch)  # never needs a block: max_model_len is reserved
        waiting = self.waiting
        while waiting and self._try_admit(waiting[0]):
            req = waiting.popleft()
            batch.add_prefill(req, req.prefill_len)
        return batch if batch.size else None
