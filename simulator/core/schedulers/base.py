"""What every scheduler shares: the waiting queue, the running list, admission checks, the decode
pass with recompute preemption, and the bookkeeping when a batch ends.

A scheduler reads no clock. The engine that drives it (the simulated replica or the GPU loop)
calls `add_request` when a request arrives, `schedule(now)` for the next batch, and
`on_batch_end(batch, now)` when that batch has run. Policies differ only in `_build_batch`.

`compat: reference` runs the same code with the reference artifact's quirks switched on
(reference-semantics.md; docs/serving-model.md lists each): no token from the iteration that
completes a prompt, k + D tokens after a preemption at k, a free block required before every
decode, preempted requests reset only when `schedule` returns, and over-long requests ignored
instead of rejected.
"""
from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

from ..batch import Batch
from ..config_fields import from_mapping
from ..block_manager import BlockManager, KVCacheTooSmallError
from ..request import Request, State
from .decode_set import DecodeSet, fcfs

_FINISHED = State.FINISHED
_PREFILLING = State.PREFILLING
COMPAT_MODES = ("corrected", "reference")


class RequestRejectedError(ValueError):
    """A request the configured model or KV cache can never serve."""


class SchedulerStuckError(RuntimeError):
    """Nothing could be scheduled although requests wait or run: a scheduler bug, never normal."""


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_model_len: int = 8192
    block_size: int = 16
    watermark: float = 0.01
    chunk_size: int = 1536                  # sarathi: token budget per iteration
    max_tokens_in_batch: int | None = None  # vllm: prompt tokens per batch (default max_model_len)
    compat: str = "corrected"               # "reference": the artifact's decisions, quirks included

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "SchedulerConfig":
        config = from_mapping(cls, cfg, "scheduler",
                              positive=("max_num_seqs", "max_model_len", "block_size", "chunk_size"))
        check_compat(config.compat, "scheduler.compat")
        if config.max_tokens_in_batch is not None and config.max_tokens_in_batch < config.max_model_len:
            raise ValueError(
                f"scheduler.max_tokens_in_batch={config.max_tokens_in_batch} is below "
                f"max_model_len={config.max_model_len}: a full-length prompt could never be admitted; "
                "raise it or leave it unset (defaults to max_model_len)")
        return config


def check_compat(value: Any, key: str) -> str:
    if value not in COMPAT_MODES:
        raise ValueError(f"{key}={value!r} is unknown; use {key}=corrected (the default) or "
                         f"{key}=reference (the published artifact's behaviour and metrics)")
    return value


class Scheduler:
    name: ClassVar[str]
    # vLLM/Sarathi reserve the current prompt at admission and keep a watermark for decodes;
    # Orca/FasterTransformer reserve max_model_len per request and need no watermark.
    reserves_max_len: ClassVar[bool] = False

    def __init__(self, config: SchedulerConfig, num_blocks: int):
        self.config = config
        watermark = 0.0 if self.reserves_max_len else config.watermark
        self.blocks = BlockManager(num_blocks, config.block_size, watermark)
        needed = self.blocks.blocks_for(config.max_model_len) + self.blocks.watermark_blocks
        if self.reserves_max_len and needed > num_blocks:
            raise KVCacheTooSmallError(
                f"KV cache of {num_blocks} blocks cannot hold one request of max_model_len="
                f"{config.max_model_len} tokens ({needed} blocks); lower max_model_len or give the "
                "cache more memory")
        self.waiting: deque[Request] = deque()  # arrived, not running; preempted ones at the front
        self.running: list[Request] = []       # admitted, oldest arrival first (FCFS)
        self.reference = config.compat == "reference"
        self.ignored: list[Request] = []       # compat reference: dropped as too long, not yet taken
        self._admissions = 0                   # requests admitted so far: FCFS order among equal arrivals
        self._decode_set = DecodeSet(config.block_size)

    @classmethod
    def profile_prompt_lengths(cls, config: SchedulerConfig) -> list[int]:
        """The prompts of the largest forward pass this policy can issue, as the reference profiles
        it to size the activation reserve (reference-semantics §6): `max_num_seqs` prompts
        sharing the prompt-token cap. Both the KV-capacity estimate and the GPU backend use it."""
        tokens = cls.prompt_token_cap(config)
        n = min(config.max_num_seqs, tokens)
        return [tokens // n + (i < tokens % n) for i in range(n)]

    @classmethod
    def prompt_token_cap(cls, config: SchedulerConfig) -> int:
        """Prompt tokens one batch may hold."""
        return config.max_model_len

    # ---- requests in -------------------------------------------------------------------------
    def check_requests(self, requests: Sequence[Request]) -> None:
        """What an engine checks before it starts: ids 0..n-1 in order of arrival, each servable."""
        for i, req in enumerate(requests):
            if req.id != i:
                raise ValueError(f"request ids must be 0..n-1 in list order; position {i} holds id {req.id}")
            if i and req.arrival < requests[i - 1].arrival:
                raise ValueError(f"requests must be sorted by arrival; request {i} arrives at "
                                 f"{req.arrival} before request {i - 1} at {requests[i - 1].arrival}")
            self.check_request(req)

    def check_request(self, req: Request) -> None:
        """Raise RequestRejectedError if this request can never be served."""
        cfg = self.config
        if self.reference and req.prompt_len > cfg.max_model_len:
            return  # ignored when it reaches the head of the queue (reference §3)
        if req.total_len > cfg.max_model_len and not self.reference:
            raise RequestRejectedError(
                f"request {req.id} needs {req.total_len} tokens (prompt {req.prompt_len} + output "
                f"{req.decode_len}) but max_model_len={cfg.max_model_len}; clip the workload "
                "(workload.max_tokens) or raise max_model_len")
        # The most KV it ever holds is all but its last token (the last is sampled, never fed):
        # its last decode, or its largest recompute prompt, which must fit above the watermark.
        needed = self.blocks.blocks_for(req.total_len - 1) + self.blocks.watermark_blocks
        if not self.reserves_max_len and needed > self.blocks.num_blocks:
            raise RequestRejectedError(
                f"request {req.id} needs {needed} KV blocks ({req.total_len - 1} tokens) but the cache "
                f"has {self.blocks.num_blocks}; shorten requests or give the KV cache more memory")

    def add_request(self, req: Request) -> None:
        """Called when `req` arrives (never before: the queue holds only arrived requests)."""
        self.check_request(req)
        self.waiting.append(req)

    # ---- the policy ----------------------------------------------------------------------------
    def schedule(self, now: float) -> Batch | None:
        """The next batch, or None when there is nothing to run until another request arrives."""
        batch = self._build_batch()
        if self.reference:
            # The reference resets its victims only after scheduling (§2.4), so later admission
            # in the same call saw their stale progress.
            for req in batch.preempted:
                if req.is_released:
                    req.reset_for_recompute(restart_output_count=True)
        return batch if batch.size else None

    def _build_batch(self) -> Batch:
        raise NotImplementedError

    def take_ignored(self) -> list[Request]:
        """The requests ignored since the last call (compat reference), for the engine to count."""
        ignored, self.ignored = self.ignored, []
        return ignored

    # ---- shared mechanisms ---------------------------------------------------------------------
    def _waiting_head(self) -> Request | None:
        """The request admission looks at next. Under compat reference a head longer than
        max_model_len (its prompt, plus any tokens it generated before a preemption) is ignored
        first: dropped and counted (§3)."""
        waiting = self.waiting
        if self.reference:
            limit = self.config.max_model_len
            while waiting and waiting[0].context_len > limit:
                req = waiting.popleft()
                if req.is_released:  # preempted in this call: drop it as it stands
                    req.reset_for_recompute(restart_output_count=True)
                req.state = State.IGNORED
                self.ignored.append(req)
        return waiting[0] if waiting else None

    def _admission_blocks(self, req: Request) -> int:
        return self.blocks.blocks_for(self.config.max_model_len if self.reserves_max_len else req.prefill_len)

    def _try_admit(self, req: Request) -> bool:
        """Reserve KV for `req` and move it to running, if memory and the batch-size cap allow."""
        if len(self.running) >= self.config.max_num_seqs:
            return False
        needed = self._admission_blocks(req)
        if not self.blocks.can_allocate(needed):
            return False
        if req.is_released:  # compat reference: readmitted in the call that preempted it (§4)
            req.reset_for_recompute(restart_output_count=True)
        req.start_prefill(self.blocks.allocate(needed))
        self._admissions += 1
        req.fcfs_key = (req.arrival, self._admissions)
        bisect.insort(self.running, req, key=fcfs)  # FCFS: by arrival, ties in admission order
        self._decode_set.admit(req)
        return True

    def _preempt(self, req: Request, batch: Batch) -> None:
        self.blocks.free(req.release())
        if not self.reference:  # the reference resets it when `schedule` returns
            req.reset_for_recompute(restart_output_count=False)
        self.waiting.appendleft(req)
        batch.preempted.append(req)

    def _decode_pass(self, batch: Batch) -> list[Request]:
        """Give every running, prompt-complete request one decode token, oldest first.

        When a decode needs a new block and none is free, the youngest running request not yet
        visited is preempted (recompute); if none is left, the request itself is. Under compat
        reference every decode needs a free block, new block or not (§2.3). Returns the running
        requests whose prompt is still incomplete, in FCFS order.

        When the free blocks cover every decode that needs one (under compat reference, with one
        to spare), nobody can be preempted, and the pass is what the decode set already knows:
        only the requests crossing into a new block are touched. Otherwise the full loop runs.
        """
        decode_set = self._decode_set
        needy = decode_set.due()
        free = self.blocks._free
        if len(needy) > len(free) - self.reference:
            return self._full_decode_pass(batch)
        for req in needy:  # in FCFS order, so each gets the block the full loop would give it
            req.blocks.append(free.pop())
        decode_set.end_pass(needy)
        batch.decodes = decode_set.decoding.copy()
        batch.decode_ids = decode_set.ids
        batch.decode_kv_tokens = decode_set.kv_tokens
        return decode_set.prefilling.copy()

    def _full_decode_pass(self, batch: Batch) -> list[Request]:
        """`_decode_pass` by walking every running request, preempting where blocks run out."""
        running = self.running
        block_size = self.blocks.block_size
        free = self.blocks._free  # direct access: this loop runs once per decode token
        strict = self.reference
        decodes = batch.decodes
        partial = []
        kv_tokens = 0
        i, end = 0, len(running)
        while i < end:
            req = running[i]
            i += 1
            if req.state == _PREFILLING:
                partial.append(req)
                continue
            context = req.prompt_len + req.generated
            if context > len(req.blocks) * block_size or (strict and not free):
                while not free and end > i:
                    end -= 1
                    self._preempt(running[end], batch)
                if not free:
                    self._preempt(req, batch)
                    continue
                if context > len(req.blocks) * block_size:  # recomputed here to keep the common path lean
                    req.blocks.append(free.pop())
            decodes.append(req)
            kv_tokens += context
        batch.decode_kv_tokens = kv_tokens
        if batch.preempted:
            self.running = [r for r in running if r.blocks]  # victims hold none
        self._decode_set.resync(self.running)
        batch.decode_ids = self._decode_set.ids  # the requests left decoding are the batch's decodes
        return partial

    def on_batch_end(self, batch: Batch, now: float) -> tuple[list[Request], list[Request]]:
        """Apply a finished batch; returns (requests that emitted a token, requests that finished)."""
        decodes = batch.decodes
        emitted = decodes.copy()
        decode_set = self._decode_set
        # (a batch without a decode pass finds the previous pass's list, already taken: empty)
        if decodes:  # each decoding request made a token: its count reads the cohort's counter
            decode_set.tokens_counted += 1
        finished = decode_set.finishing() if decodes else []
        num_finished_decodes = len(finished)
        decode_set.kv_tokens += len(decodes)
        # The reference's OSDI branch discards the token sampled when a prompt completes (§2.2).
        prompt_emits = not self.reference
        for req, _start, chunk in batch.prefills:
            if req.finish_chunk(chunk):
                if prompt_emits:
                    req.generated += 1
                    emitted.append(req)
                    if req.generated == req.finish_at:
                        finished.append(req)
                decode_set.prompt_done(req)
        if finished:
            for req in finished:
                req.state = _FINISHED
                req.leave_cohort()
                self.blocks.free(req.blocks)
                req.blocks = []
                self.running.remove(req)
            if num_finished_decodes:
                decode_set.drop_finished(finished[:num_finished_decodes])
        return emitted, finished
