"""One inference request and its life: waiting -> prefilling (in chunks) -> decoding -> finished.

A preempted request goes back to waiting and loses its KV cache; when it is admitted again it
recomputes its prompt *and* the tokens it had already generated (recompute preemption, as vLLM v0
and Sarathi-Serve do). By default it still produces exactly `decode_len` output tokens in total:
what it generated before the preemption counts. Under `compat: reference` (reference-semantics
§2.4) a request preempted after k tokens produces k + `decode_len`: `finish_at` says which.

Whether the iteration that completes the prompt emits output token #1 (by default) or not (the
reference's OSDI branch, §2.2) is the scheduler's call: `finish_chunk` only records progress.
"""
from __future__ import annotations

from enum import IntEnum


class State(IntEnum):
    WAITING = 0
    PREFILLING = 1
    DECODING = 2
    FINISHED = 3
    IGNORED = 4   # compat reference: prompt longer than max_model_len, dropped and counted


class Request:
    # __slots__ because the hot loops of the schedulers touch these fields once per token.
    __slots__ = (
        "id", "arrival", "prompt_len", "decode_len", "state",
        "_generated",     # output tokens produced so far, over all lives (while in a cohort: at `_since`)
        "_cohort",        # the decode cohort counting its tokens (a `DecodeSet`), or None
        "_since",         # the cohort's decode-pass count when `_generated` was last settled
        "prefill_len",    # tokens this life must prefill: prompt + tokens generated before a preemption
        "prefilled",      # tokens of `prefill_len` whose KV has been computed in this life
        "blocks",         # KV block ids held now (the block table)
        "num_preemptions",
        "finish_at",      # `generated` count at which the request is done
        "fcfs_key",       # (arrival, its scheduler's admission count) when last admitted: FCFS order
    )

    def __init__(self, id: int, arrival: float, prompt_len: int, decode_len: int):
        if prompt_len < 1 or decode_len < 1:
            raise ValueError(f"request {id}: prompt_len={prompt_len} and decode_len={decode_len} "
                             "must both be >= 1")
        self.id = id
        self.arrival = arrival
        self.prompt_len = prompt_len
        self.decode_len = decode_len
        self.state = State.WAITING
        self._generated = 0
        self._cohort = None
        self._since = 0
        self.prefill_len = prompt_len
        self.prefilled = 0
        self.blocks: list[int] = []
        self.num_preemptions = 0
        self.finish_at = decode_len
        self.fcfs_key = (arrival, 0)

    # ---- output tokens ------------------------------------------------------------------------
    # A decoding request gains one token every decode pass of its scheduler, so while it decodes
    # its count is read off the cohort's pass counter instead of being written once per token.
    @property
    def generated(self) -> int:
        """Output tokens produced so far, over all lives."""
        cohort = self._cohort
        return self._generated if cohort is None else self._generated + cohort.tokens_counted - self._since

    @generated.setter
    def generated(self, value: int) -> None:
        self._generated = value
        if self._cohort is not None:
            self._since = self._cohort.tokens_counted

    def join_cohort(self, cohort) -> None:
        """From now on `cohort` (anything with a `tokens_counted` pass counter) counts its tokens."""
        if self._cohort is cohort:
            return
        self._generated = self.generated
        self._cohort = cohort
        self._since = cohort.tokens_counted

    def leave_cohort(self) -> None:
        self._generated = self.generated
        self._cohort = None

    @property
    def total_len(self) -> int:
        """Prompt + output tokens: what `max_model_len` must cover."""
        return self.prompt_len + self.decode_len

    @property
    def context_len(self) -> int:
        """Tokens with KV after the next step: prompt + generated (a decode feeds the last output)."""
        return self.prompt_len + self.generated

    @property
    def remaining_prefill(self) -> int:
        return self.prefill_len - self.prefilled

    # ---- transitions (called by schedulers; each checks where it comes from) ---------------
    def start_prefill(self, blocks: list[int]) -> None:
        assert self.state == State.WAITING, self
        self.state = State.PREFILLING
        self.blocks = blocks

    def finish_chunk(self, chunk: int) -> bool:
        """Record a processed prompt chunk; True if it completed the prompt."""
        assert self.state == State.PREFILLING and 0 < chunk <= self.remaining_prefill, (self, chunk)
        self.prefilled += chunk
        if self.prefilled < self.prefill_len:
            return False
        self.state = State.DECODING
        return True

    def release(self) -> list[int]:
        """Drop the KV cache (preemption); returns the blocks to free. The request keeps its
        progress until `reset_for_recompute`."""
        assert self.state in (State.PREFILLING, State.DECODING) and self.blocks, self
        self.leave_cohort()  # it decodes no more
        blocks, self.blocks = self.blocks, []
        return blocks

    def reset_for_recompute(self, restart_output_count: bool) -> None:
        """Back to waiting after `release`. `restart_output_count`: the reference's stop rule,
        which counts only this life's tokens, so `decode_len` more are due (§2.4)."""
        assert self.state in (State.PREFILLING, State.DECODING) and not self.blocks, self
        self.state = State.WAITING
        self.num_preemptions += 1
        # The recompute prefill feeds the prompt and every generated token (the last one's KV was
        # never written) and samples the next token from the last position.
        self.prefill_len = self.prompt_len + self.generated
        self.prefilled = 0
        if restart_output_count:
            self.finish_at = self.generated + self.decode_len

    @property
    def is_released(self) -> bool:
        """Preempted in the current `schedule` call and not reset yet (compat reference only)."""
        return not self.blocks and self.state in (State.PREFILLING, State.DECODING)

    def __repr__(self) -> str:
        return (f"Request(id={self.id}, {self.state.name}, P={self.prompt_len}, D={self.decode_len}, "
                f"generated={self.generated}, prefilled={self.prefilled}/{self.prefill_len}, "
                f"blocks={len(self.blocks)})")
