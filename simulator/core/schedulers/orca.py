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

    def _build_batch(self) -> Batch:
        batch = Batch()
        self._decode_pass(batch)  # never needs a block: max_model_len is reserved
        waiting = self.waiting
        while (req := self._waiting_head()) is not None and self._try_admit(req):
            waiting.popleft()
            batch.add_prefill(req, req.prefill_len)
        return batch
