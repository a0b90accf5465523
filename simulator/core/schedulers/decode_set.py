"""The running requests as the decode pass's common case needs them, kept up to date incrementally.

In steady state a decode pass changes almost nothing: every prompt-complete request gains one
token, and only one in `block_size` crosses into a new KV block. Walking the whole running list to
find that out is what made the pass cost O(running) per iteration. A `DecodeSet` instead keeps,
for one scheduler:

- `decoding`: the prompt-complete running requests, `prefilling`: the others, each in the running
  list's FCFS order;
- `kv_tokens`: the sum of the decoding requests' contexts at the coming pass;
- for each coming pass, the requests whose context outgrows their blocks in it (`due`), and those
  that make their last token in it (`finishing`), so that a batch's end finds its finished
  requests without comparing every request's count.

A pass in which no request can be preempted (enough free blocks for every due request) then does
Python work only for the due requests (the batch's lists are copies, made in C). Any other pass
runs the scheduler's full loop, which calls `resync` after it.
"""
from __future__ import annotations

import bisect
import operator

from ..request import Request, State

_DECODING = State.DECODING
_PREFILLING = State.PREFILLING
# The running list's order: by arrival, ties in admission order (what its `insort_right` by arrival
# produces, since a new admission comes after every equal arrival already running).
fcfs = operator.attrgetter("fcfs_key")


class DecodeSet:
    def __init__(self, block_size: int):
        self.block_size = block_size
        self.decoding: list[Request] = []
        self.prefilling: list[Request] = []
        # `decoding`'s request ids, for the metrics (`Batch.decode_ids`): replaced on change, never
        # changed in place, so that the batches can share it
        self.ids: list[int] = []
        self.kv_tokens = 0  # sum over `decoding` of prompt_len + generated (the context at the pass)
        self.passes = 0     # decode passes so far, i.e. the index of the coming one
        # passes whose tokens are counted (at their batch's end): every request in `decoding`
        # reads its output count off this (`Request.join_cohort`), none is written per token
        self.tokens_counted = 0
        self._due: dict[int, list[Request]] = {}  # pass index -> requests that need a block in it
        self._finishing: dict[int, list[Request]] = {}  # pass index -> requests whose last token it makes

    def _file(self, req: Request, at_pass: int, context: int) -> None:
        """Note when `req`, whose context is `context` at pass `at_pass`, next needs a block: its
        context grows by one a pass. Never before `at_pass`: a decoding request's context exceeds
        its blocks by at most the token the pass adds (block sizing at admission and one block per
        crossing keep it so; tests/test_schedulers.py checks it after every batch)."""
        due = at_pass + len(req.blocks) * self.block_size - context + 1
        assert due >= at_pass, (req, at_pass, context)
        self._due.setdefault(due, []).append(req)

    def _file_finish(self, req: Request, at_pass: int) -> None:
        """Note the pass in which `req`, decoding from pass `at_pass` on with `generated` tokens
        before it, makes its last token: one token a pass."""
        self._finishing.setdefault(at_pass + req.finish_at - req.generated - 1, []).append(req)

    def finishing(self) -> list[Request]:
        """The requests whose last token the latest pass made, FCFS (call once per pass, after the
        pass's tokens are counted)."""
        bucket = self._finishing.pop(self.passes - 1, None)
        if bucket is None:
            return []
        if len(bucket) > 1:
            bucket.sort(key=fcfs)
        assert all(r.state == _DECODING and r.generated == r.finish_at for r in bucket), bucket
        return bucket

    # ---- what the scheduler reports ----------------------------------------------------------
    def admit(self, req: Request) -> None:
        bisect.insort_right(self.prefilling, req, key=fcfs)

    def prompt_done(self, req: Request) -> None:
        """`req` completed its prompt (after its batch's tokens are counted): it decodes from the
        coming pass on, unless the prompt's own token was its last."""
        self.prefilling.remove(req)
        if req.generated < req.finish_at:
            req.join_cohort(self)
            at = bisect.bisect_right(self.decoding, req.fcfs_key, key=fcfs)
            self.decoding.insert(at, req)
            self.ids = self.ids.copy()
            self.ids.insert(at, req.id)
            context = req.prompt_len + req.generated
            self.kv_tokens += context
            self._file(req, self.passes, context)
            self._file_finish(req, self.passes)

    def drop_finished(self, finished: list[Request]) -> None:
        """Decoding requests that emitted their last token."""
        decoding, ids = self.decoding, self.ids.copy()
        for req in finished:
            at = decoding.index(req)
            del decoding[at], ids[at]
            self.kv_tokens -= req.prompt_len + req.generated
        self.ids = ids

    # ---- the fast pass -----------------------------------------------------------------------
    def due(self) -> list[Request]:
        """The decoding requests whose context outgrows their blocks in the coming pass, FCFS."""
        bucket = self._due.pop(self.passes, None)
        if bucket is None:
            return []
        needy = [r for r in bucket if r.state == _DECODING]  # filed before they finished, some
        if len(needy) > 1:
            needy.sort(key=fcfs)
        return needy

    def end_pass(self, granted: list[Request]) -> None:
        """A pass without preemption ran: `granted` got one block each; every decoding request's
        context (counted at its batch's end) will be one larger at the next pass."""
        next_pass = self.passes + 1
        if granted:
            # `_file(req, next_pass, context + 1)`, inlined: this runs at every block crossing
            due = self._due
            block_size = self.block_size
            for req in granted:
                spare = len(req.blocks) * block_size - (req.prompt_len + req.generated)
                when = next_pass + spare
                bucket = due.get(when)
                if bucket is None:
                    due[when] = [req]
                else:
                    bucket.append(req)
        self.passes = next_pass

    def resync(self, running: list[Request]) -> None:
        """After the full loop has run a pass (and possibly preempted): rebuild from `running`,
        in which every prompt-complete request has just decoded."""
        self.passes += 1
        self.decoding = [r for r in running if r.state == _DECODING]
        for req in self.decoding:  # joined when their prompt completed; joining again is a no-op
            req.join_cohort(self)
        self.ids = [r.id for r in self.decoding]
        self.prefilling = [r for r in running if r.state == _PREFILLING]
        self.kv_tokens = 0
        self._due = {}
        self._finishing = {}
        for req in self.decoding:
            context = req.prompt_len + req.generated
            self.kv_tokens += context
            self._file(req, self.passes, context + 1)
            self._file_finish(req, self.passes - 1)  # the pass just run has not counted its token yet
