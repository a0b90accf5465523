"""vLLM v0: prefill-prioritising iteration-level batching (reference-semantics §3).

Whenever an arrived request can be admitted, the iteration runs only whole prompts, up to
`max_tokens_in_batch` prompt tokens, and every running decode waits: the generation stall that
Figure 1 shows. Decodes run only when nothing can be admitted. Prompts are never chunked.
"""
from __future__ import annotations

from ..batch import Batch
from .base import Scheduler, SchedulerConfig


class VLLMScheduler(Scheduler):
    name = "vllm"

    @classmethod
    def prompt_token_cap(cls, config: SchedulerConfig) -> int:
        return config.max_tokens_in_batch or config.max_model_len

    def _build_batch(self) -> Batch:
        batch = Batch()
        waiting = self.waiting
        token_cap = self.prompt_token_cap(self.config)
        # Head-of-line: stop at the first waiting request that does not fit.
        while (req := self._waiting_head()) is not None:
            if batch.num_prefill_tokens + req.prefill_len > token_cap or not self._try_admit(req):
                break
            waiting.popleft()
            batch.add_prefill(req, req.prefill_len)
        if batch.prefills:
            return batch  # prefills and decodes are never mixed
        # (The reference returns an empty step when it only ignored requests and decodes in the
        # next one, at the same instant: the same decisions as decoding here.)
        self._decode_pass(batch)
        return batch
