"""An adaptive limit on Stripe calls in flight: additive increase, multiplicative decrease.

Stripe answers 429 when an account goes over its rate
(https://docs.stripe.com/rate-limits: 25 requests/s per endpoint by default, 100/s
per account in live mode). Each 429 halves the calls this process keeps in flight;
each success adds 1/limit, about one more call per round trip. A fleet of workers
settles just under the account's rate instead of hammering it, the way TCP shares
a link.

A burst of 429s for calls that were all sent before the cut is one signal, not
many: only a call sent after the last cut can cut again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final

DECREASE_FACTOR: Final = 0.5


class AdaptiveLimit:
    def __init__(
        self,
        *,
        maximum: int,
        minimum: int = 1,
        on_change: Callable[[float], None] | None = None,
    ) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum ({minimum}) <= maximum ({maximum})")
        self.minimum = minimum
        self.maximum = maximum
        self._limit = float(maximum)
        self._in_flight = 0
        self._epoch = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._on_change = on_change
        if on_change is not None:
            on_change(self._limit)

    @property
    def limit(self) -> float:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def acquire(self) -> int:
        """Wait for room; returns the epoch to pass back to `release`."""
        if self._waiters or self._in_flight >= int(self._limit):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    # Room was handed to us as we were cancelled: pass it on.
                    self._in_flight -= 1
                    self._wake()
                else:
                    self._waiters.remove(waiter)
                raise
        else:
            self._in_flight += 1
        return self._epoch

    def release(self, epoch: int, *, throttled: bool) -> None:
        self._in_flight -= 1
        if throttled:
            if epoch == self._epoch:
                self._set(max(float(self.minimum), self._limit * DECREASE_FACTOR))
                self._epoch += 1
        elif self._limit < self.maximum:
            self._set(min(float(self.maximum), self._limit + 1.0 / self._limit))
        self._wake()

    def _set(self, limit: float) -> None:
        self._limit = limit
        if self._on_change is not None:
            self._on_change(limit)

    def _wake(self) -> None:
        while self._waiters and self._in_flight < int(self._limit):
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_flight += 1
                waiter.set_result(None)
