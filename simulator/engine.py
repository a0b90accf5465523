"""The discrete-event engine: requests arrive, one replica runs batches, time is simulated.

Two simpy processes tell the story:
- `arrivals` wakes at each arrival time and hands the request to the scheduler;
- `replica` asks the scheduler for a batch, asks the cost model how long it takes, waits that
  long, and tells the scheduler the batch ended. With nothing to run it sleeps until the next
  arrival instead of spinning.
"""
from __future__ import annotations

from typing import Callable, Sequence

import simpy

from .core.metrics import MetricsRecorder
from .core.request import Request
from .core.schedulers import Scheduler, SchedulerStuckError


def simulate(requests: Sequence[Request], scheduler: Scheduler, batch_time: Callable[[object], float],
             on_progress: Callable[[int], None] | None = None) -> MetricsRecorder:
    """Run all `requests` (ids 0..n-1, sorted by arrival) to completion; returns the recorder."""
    scheduler.check_requests(requests)  # reject impossible requests before anything runs
    env = simpy.Environment()
    recorder = MetricsRecorder(requests)
    blocks = scheduler.blocks
    wakeup = [env.event()]
    pending = [len(requests)]  # requests not yet arrived

    def arrivals():
        for req in requests:
            if req.arrival > env.now:
                yield env.timeout(req.arrival - env.now)
            scheduler.add_request(req)
            pending[0] -= 1
            if not wakeup[0].triggered:
                wakeup[0].succeed()

    def replica():
        finished_total = 0
        while finished_total < len(requests):
            batch = scheduler.schedule(env.now)
            if batch is None:
                if scheduler.waiting or scheduler.running or not pending[0]:
                    raise SchedulerStuckError(
                        f"{scheduler.name} scheduled nothing at t={env.now:.3f}s with "
                        f"{len(scheduler.waiting)} waiting, {len(scheduler.running)} running and "
                        f"{pending[0]} requests still to arrive")
                wakeup[0] = env.event()
                yield wakeup[0]
                continue
            start = env.now
            yield env.timeout(batch_time(batch))
            emitted, finished = scheduler.on_batch_end(batch, env.now)
            recorder.on_batch(batch, start, env.now, emitted, finished, blocks.num_used)
            if finished:
                finished_total += len(finished)
                if on_progress is not None:
                    on_progress(len(finished))

    env.process(arrivals())
    env.run(until=env.process(replica()))
    return recorder
