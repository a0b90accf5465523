"""What one model iteration processes: the contract between a scheduler and an executor.

The simulator's executor turns a batch into seconds through a cost model; the GPU backend runs
exactly these tokens. A batch is built by `Scheduler.schedule` and must be handed back, unchanged,
to `Scheduler.on_batch_end`.

Per request it lists:
- prefills: (request, start, chunk) -- `chunk` prompt tokens at positions start .. start+chunk-1,
  attending to the `start` tokens already in the KV cache;
- decodes: the request feeds its last output token at position `request.context_len - 1`.
The block table of each request is `request.blocks` (valid from `schedule` to `on_batch_end`).

The aggregate fields are what cost models need; the scheduler fills them while it builds the batch
so that no one walks the request lists twice.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .request import Request


@dataclass(eq=False)
class Batch:
    decodes: list[Request] = field(default_factory=list)
    prefills: list[tuple[Request, int, int]] = field(default_factory=list)  # (request, start, chunk)
    preempted: list[Request] = field(default_factory=list)  # preempted while building this batch
    # the decodes' request ids, from the scheduler (which keeps them so that the metrics need not
    # read every request each iteration): read-only, shared with the scheduler
    decode_ids: list[int] | None = None
    # ---- aggregates for cost models -------------------------------------------------------
    num_prefill_tokens: int = 0
    decode_kv_tokens: int = 0      # sum of KV lengths the decodes attend to (incl. their new token)
    prefill_kv_tokens: int = 0     # sum over chunks of start + chunk (KV read by prefill attention)
    prefill_attn_pairs: int = 0    # sum over chunks of causal (query, key) pairs: chunk*start + chunk*(chunk+1)/2

    @property
    def num_decode_tokens(self) -> int:
        return len(self.decodes)

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + len(self.decodes)

    @property
    def num_prefills(self) -> int:
        return len(self.prefills)

    @property
    def size(self) -> int:
        return len(self.decodes) + len(self.prefills)

    def add_prefill(self, req: Request, chunk: int) -> None:
        start = req.prefilled
        self.prefills.append((req, start, chunk))
        self.num_prefill_tokens += chunk
        self.prefill_kv_tokens += start + chunk
        self.prefill_attn_pairs += chunk * start + chunk * (chunk + 1) // 2


@dataclass(frozen=True)
class BatchShape:
    """The aggregate features of a batch, as stored in the batches table and read by cost models.

    Every field also names a column of the batches table, so a cost model can price one batch
    (`CostModel.batch_time(batch)`) or a whole table at once (`CostModel.breakdown(columns)`).
    """
    num_prefill_tokens: int
    num_decode_tokens: int
    num_prefills: int
    decode_kv_tokens: int
    prefill_kv_tokens: int
    prefill_attn_pairs: int

    FIELDS = ("num_prefill_tokens", "num_decode_tokens", "num_prefills", "decode_kv_tokens",
              "prefill_kv_tokens", "prefill_attn_pairs")
