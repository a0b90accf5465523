"""Sarathi-Serve: stall-free batching with chunked prefills (reference-semantics §4).

Each iteration first gives every running decode its token (decodes are never held back), then
spends what is left of the `chunk_size` token budget on prompts: first continuing the partially
prefilled ones, oldest first, then admitting new ones chunk by chunk. A long prompt thus rolls
over several iterations while decodes keep flowing.
"""
from __future__ import annotations

from ..batch import Batch
from .base import Scheduler, SchedulerConfig


class SarathiScheduler(Scheduler):
    name = "sarathi"

    @classmethod
    def profile_prompt_lengths(cls, config: SchedulerConfig) -> list[int]:
        return [min(config.chunk_size, config.max_model_len)]  # one full chunk (reference §6)

    def _build_batch(self) -> Batch:
        batch = Batch()
        partial = self._decode_pass(batch)
        budget = self.config.chunk_size - len(batch.decodes)
        for req in partial:
            if budget <= 0:
                break  # the rest keep their blocks and wait for a later iteration
            chunk = min(req.remaining_prefill, budget)
            batch.add_prefill(req, chunk)
            budget -= chunk
        waiting = self.waiting
        while budget > 0 and (req := self._waiting_head()) is not None:
            # Under compat reference a request preempted earlier in this call still shows its old
            # progress (§4): a decoding one gives a zero chunk, which stops admission; a partly
            # prefilled one is readmitted with its old remainder as its first chunk.
            chunk = min(req.remaining_prefill, budget)
            if not chunk or not self._try_admit(req):
                break
            waiting.popleft()
            batch.add_prefill(req, chunk)
            budget -= chunk
        return batch
