"""Routing arrivals to the replicas of a cluster (`cluster.router`).

- `round_robin`: the i-th arrival goes to replica i mod R; counts differ by at most one.
- `least_outstanding`: the replica with the fewest requests routed to it and not yet finished,
  the lowest index on a tie (the live state at the arrival instant, as a load balancer sees it).
- `random`: uniformly at random, from a numpy generator seeded with `cluster.seed`; same seed,
  same assignment.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from .core.request import Request

ROUTERS = ("round_robin", "least_outstanding", "random")


class Router:
    name: ClassVar[str]

    def __init__(self, num_replicas: int):
        self.num_replicas = num_replicas
        self.assigned: list[int] = []  # replica of each routed request, in arrival order

    @staticmethod
    def make(name: str, num_replicas: int, seed: int = 0) -> "Router":
        if not isinstance(num_replicas, int) or isinstance(num_replicas, bool) or num_replicas < 1:
            raise ValueError(f"cluster.num_replicas={num_replicas!r} must be a positive integer")
        if name == "round_robin":
            return RoundRobinRouter(num_replicas)
        if name == "least_outstanding":
            return LeastOutstandingRouter(num_replicas)
        if name == "random":
            return RandomRouter(num_replicas, seed)
        raise ValueError(f"cluster.router={name!r} is unknown; use one of {list(ROUTERS)}")

    def route(self, req: Request) -> int:
        """The replica index that serves `req` (called once per request, in arrival order)."""
        r = self._pick(req)
        self.assigned.append(r)
        return r

    def _pick(self, req: Request) -> int:
        raise NotImplementedError

    def on_finished(self, replica: int, count: int) -> None:
        """`count` requests routed to `replica` finished."""


class RoundRobinRouter(Router):
    name = "round_robin"

    def __init__(self, num_replicas: int):
        super().__init__(num_replicas)
        self._next = 0

    def _pick(self, req: Request) -> int:
        r = self._next
        self._next = (r + 1) % self.num_replicas
        return r


class LeastOutstandingRouter(Router):
    name = "least_outstanding"

    def __init__(self, num_replicas: int):
        super().__init__(num_replicas)
        self.outstanding = [0] * num_replicas

    def _pick(self, req: Request) -> int:
        counts = self.outstanding
        r = counts.index(min(counts))
        counts[r] += 1
        return r

    def on_finished(self, replica: int, count: int) -> None:
        self.outstanding[replica] -= count


class RandomRouter(Router):
    name = "random"
    _DRAW = 65_536  # draws taken from the generator at a time: one numpy call per many arrivals

    def __init__(self, num_replicas: int, seed: int):
        super().__init__(num_replicas)
        self._rng = np.random.default_rng(seed)
        self._draws: list[int] = []

    def _pick(self, req: Request) -> int:
        if not self._draws:
            self._draws = self._rng.integers(0, self.num_replicas, size=self._DRAW).tolist()[::-1]
        return self._draws.pop()
