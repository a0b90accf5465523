"""The discrete-event engine: requests arrive, replicas run batches, time is simulated.

One clock drives one or more replicas, each with its own scheduler and KV cache. Two kinds of
events exist, kept in time order:
- an arrival: the router picks a replica and its scheduler gets the request; an idle replica
  starts its next batch at once (after every request arriving at that same instant is in);
- a batch end: the replica's scheduler applies the batch, the recorder logs it, and the replica
  starts its next batch, or goes idle until a request is routed to it.
Busy replicas wait in a heap keyed by (batch end, replica index), so ties resolve the same way
in every run. An arrival at the same instant as a batch end is handled first.
"""
from __future__ import annotations

import gc
import heapq
import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from .core.batch import Batch
from .core.metrics import MetricsRecorder
from .core.request import Request
from .core.schedulers import Scheduler, SchedulerStuckError
from .router import Router


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The event loop makes no reference cycles, while the objects it keeps (requests, pending
    metrics rows) grow: the cyclic garbage collector's passes over them cost ~15% of the loop."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def simulate(requests: Sequence[Request], schedulers: Scheduler | Sequence[Scheduler],
             batch_time: Callable[[Batch], float], router: Router | None = None,
             on_progress: Callable[[int], None] | None = None, keep_tokens: bool = True,
             keep_batches: bool = True) -> MetricsRecorder:
    """Run all `requests` (ids 0..n-1, sorted by arrival) to completion; returns the recorder.

    With several schedulers (one per replica) a `router` assigns each arrival to a replica, and
    every batch row carries its `replica` index. `keep_tokens=False`, `keep_batches=False`: no
    token or batch table, only what the summary needs (memory then grows far slower).
    """
    replicas = [schedulers] if isinstance(schedulers, Scheduler) else list(schedulers)
    if router is None:
        if len(replicas) > 1:
            raise ValueError("a cluster of replicas needs a router")
        router = Router.make("round_robin", 1)
    checked = set()
    for scheduler in replicas:  # reject impossible requests before anything runs
        kind = (type(scheduler), scheduler.config, scheduler.blocks.num_blocks)
        if kind not in checked:  # replicas alike accept alike: a cluster checks each request once
            scheduler.check_requests(requests)
            checked.add(kind)
    recorder = MetricsRecorder(requests, compat=replicas[0].config.compat, keep_tokens=keep_tokens,
                               keep_batches=keep_batches, num_groups=len(replicas))
    record_replica = len(replicas) > 1
    running: list[Batch | None] = [None] * len(replicas)  # the batch each replica is running
    started = [0.0] * len(replicas)
    busy: list[tuple[float, int]] = []                     # (batch end, replica)
    n = len(requests)
    next_arrival = 0
    finished_total = 0

    def start_batch(r: int, now: float) -> None:
        nonlocal finished_total
        scheduler = replicas[r]
        batch = scheduler.schedule(now)
        if scheduler.ignored:  # compat reference: too long for max_model_len, dropped and counted
            ignored = scheduler.take_ignored()
            recorder.on_ignored(ignored, now)
            finished_total += len(ignored)
            router.on_finished(r, len(ignored))
        if batch is None:
            if scheduler.waiting or scheduler.running:
                raise SchedulerStuckError(
                    f"{scheduler.name} (replica {r}) scheduled nothing at t={now:.3f}s with "
                    f"{len(scheduler.waiting)} waiting and {len(scheduler.running)} running")
            running[r] = None
            return
        running[r] = batch
        started[r] = now
        heapq.heappush(busy, (now + batch_time(batch), r))

    with _collector_paused():
        while finished_total < n:
            arrival = requests[next_arrival].arrival if next_arrival < n else math.inf
            if busy and busy[0][0] < arrival:
                now, r = heapq.heappop(busy)
                batch = running[r]
                scheduler = replicas[r]
                emitted, finished = scheduler.on_batch_end(batch, now)
                if record_replica:
                    recorder.on_batch(batch, started[r], now, emitted, finished, scheduler.blocks.num_used,
                                      replica=r)
                else:
                    recorder.on_batch(batch, started[r], now, emitted, finished, scheduler.blocks.num_used)
                if finished:
                    finished_total += len(finished)
                    router.on_finished(r, len(finished))
                    if on_progress is not None:
                        on_progress(len(finished))
                start_batch(r, now)
                continue
            if arrival == math.inf:
                stuck = [f"replica {r}: {len(s.waiting)} waiting, {len(s.running)} running"
                         for r, s in enumerate(replicas) if s.waiting or s.running]
                raise SchedulerStuckError(f"every replica is idle with {n - finished_total} requests "
                                          f"unfinished ({'; '.join(stuck) or 'none queued'})")
            now = arrival
            woken: list[int] = []
            # Every request arriving at this instant is queued before any idle replica schedules,
            # so a burst (all arrivals at t=0) is seen whole by the first batch.
            while next_arrival < n and requests[next_arrival].arrival == now:
                req = requests[next_arrival]
                next_arrival += 1
                r = router.route(req)
                replicas[r].add_request(req)
                if running[r] is None and r not in woken:
                    woken.append(r)
            for r in sorted(woken):
                start_batch(r, now)
    return recorder
