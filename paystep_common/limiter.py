"""The pace of Stripe calls: each worker finds its part of the account's rate on its own.

Stripe counts requests per second, per account (100/s in live mode) and per
endpoint (25/s by default), and answers 429 beyond them with a
`Stripe-Rate-Limited-Reason` header naming the limiter
(https://docs.stripe.com/rate-limits). Every pod of a deployment draws on the
same account and none knows how many others there are, so each paces its calls
(a start every 1/rate seconds) and adjusts the rate from what Stripe answers:

- per window (a second of calls, and at least 8 answers: a pod of a fleet sends
  a few calls a second, and one 429 among 3 answers says little): if f of the
  calls started in it were refused, the rate is cut to (1 - f) of the rate the
  window started at (at most halved; a pod with less work than its rate allows
  is cut from what it sent before its first 429 of the window). Each pod then
  keeps what Stripe let through; together the pods land on the limit in one
  window, however many they are, instead of sawing between it and half of it;
- each 429 of the current window also takes half a call a second off the rate at
  once (off the rate the pod sends at, once a quarter of the window has shown it):
  the bucket's one second of burst hides an overshoot until it is spent, and from
  then every 200 ms of waiting for the window's end costs a fifth of the excess in
  429s. The window's share cut still settles the rate at its end, and the two
  are not added: the deeper stays;
- the rate a window's share cut gives is the plateau: what Stripe let this pod
  have. Windows without 429s while calls were waiting for their turn climb fast,
  half the way per window, to 97 % of it (from a deeper cut: the 429s' own, or
  the one below), then probe beyond it slowly (half of `probe_share` of the rate
  plus half of `probe_per_s` per window). Sitting a few percent below the limit
  lets the bucket refill, and the refilled burst absorbs the timing jitter of the
  pods' starts; probing at full speed from there would cross the limit every
  few seconds;
- one window with a lone 429 after a cut, while the pod still sends below 97 %
  of the plateau, is the bucket not yet refilled, not a lower limit: that 429
  only takes its half call a second off, and the plateau stays. Cutting by its
  share (one call in ten is 10 %) left a pod at 85 % of a halved limit. A second
  such window cuts as any other: the plateau was too high (a window that still
  had the burst's tokens lets more through than the limit);
- after 20 windows in a row without 429s the plateau is forgotten and the probe
  is the full one again (`probe_share` of the rate plus `probe_per_s`, twice as
  much after every 10 such windows in a row): it finds the room a pod that left
  or a raised limit makes;
- only answers to calls started in the current window count: the 429s of calls
  sent before a cut say nothing of the rate after it.

Pods start at the full rate, not with a slow start: Stripe's bucket admits a
second's worth of calls beyond its rate before the first 429
(https://docs.stripe.com/rate-limits), so a pod growing by a factor per clean
window is told of the limit only several windows after passing it, sending up to
that factor above it; the fleet's first 429s (at most a burst's worth later, at
the excess the orders bring) are cut at once instead.

There is a pacer for the account and one per endpoint (operation); a call waits
for both, and a 429 cuts the one its reason header names (`global-*`: the
account's; `endpoint-*`, `resource-specific` or none: the endpoint's). A 429 with
code `lock_timeout` is a lock on one object, not a limit: it cuts nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import stripe

REASON_HEADER: Final = "stripe-rate-limited-reason"
# The answer of a 429 without the header: the endpoint's pacer takes it.
UNNAMED_LIMITER: Final = "unnamed"
MAX_CUT: Final = 0.5
WINDOW_S: Final = 1.0
# Growth per window without 429s: 0.8 % of the rate (the fleet's growth, whatever its
# size, so its overshoot into 429s stays near 1 % of payments) plus 0.02/s per pod,
# which lets a pod that was cut deep catch up with the others.
PROBE_SHARE: Final = 0.008
PROBE_PER_S: Final = 0.02
# Every 10 windows in a row without 429s double the 0.8 %: a fleet cut deep (an outage
# of 429s, a limit raised) is back at 25/s within about a minute, not several.
SPEED_UP_EVERY: Final = 10
# Per 429, at once: half a call a second. Summed over the pods it removes the fleet's
# excess at half the rate 429s come in; the window's share cut does the rest.
CUT_PER_REFUSAL_PER_S: Final = 0.5
# The rate a pod sends at is read from a quarter of a window at least: fewer calls
# say too little of it.
SENT_RATE_SPAN: Final = 0.25
# After a cut, clean windows climb half the way per window to 97 % of the plateau (the
# rate the cut landed on), then probe at half speed: the 3 % below the limit refill the
# bucket, whose burst absorbs the jitter of the starts.
CLIMB_TO: Final = 0.97
CLIMB_GAP: Final = 0.5
SLOW_PROBE: Final = 0.5
# Windows in a row without 429s after which the plateau says nothing any more.
FORGET_AFTER: Final = 20
# 429s in a window below the plateau that are the empty bucket's, not a lower limit
# (once per cut).
STRAY_REFUSALS: Final = 1
MIN_RATE_PER_S: Final = 0.5
# A window also holds this many answers: a pod of a fleet sends a few calls a second,
# and one 429 among 3 answers would cut it by a third.
MIN_ANSWERS: Final = 8


class Pacer:
    """One limiter's rate: `wait()` says how long until the next start may go, `start()` takes it.

    Pure arithmetic on an injected clock; `Budget` does the waiting.
    """

    def __init__(
        self,
        *,
        max_per_s: float,
        min_per_s: float = MIN_RATE_PER_S,
        window_s: float = WINDOW_S,
        probe_share: float = PROBE_SHARE,
        probe_per_s: float = PROBE_PER_S,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[float], None] | None = None,
    ) -> None:
        if not 0 < min_per_s <= max_per_s:
            raise ValueError(f"need 0 < min_per_s ({min_per_s}) <= max_per_s ({max_per_s})")
        self.max_per_s = max_per_s
        self.min_per_s = min_per_s
        self.window_s = window_s
        self.probe_share = probe_share
        self.probe_per_s = probe_per_s
        self._clock = clock
        self._on_change = on_change
        self._rate = max_per_s
        self._next_at = clock()
        self._epoch = 0
        self._window_at = self._next_at
        self._started = 0
        self._answered = 0
        self._refused = 0
        self._waited = False
        self._window_rate = self._rate
        self._sent_per_s: float | None = None
        self._clean_windows = 0
        self._plateau: float | None = None
        self._stray_allowed = False
        self.cuts = 0
        if on_change is not None:
            on_change(self._rate)

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def plateau(self) -> float | None:
        """The rate the last cut landed on, until 20 clean windows make it stale."""
        return self._plateau

    def wait(self) -> float:
        """Seconds until the next call may start (0: now)."""
        return max(0.0, self._next_at - self._clock())

    def start(self, *, waited: bool) -> int:
        """A call starts now; returns the window to pass to `finish`."""
        now = self._clock()
        self._close_window(now)
        self._waited = self._waited or waited
        self._started += 1
        # A start late by timer jitter keeps its slot: the average stays at the rate.
        self._next_at = max(self._next_at, now - 1.0 / self._rate) + 1.0 / self._rate
        return self._epoch

    def finish(self, epoch: int, *, refused: bool) -> None:
        now = self._clock()
        if epoch == self._epoch:
            self._answered += 1
            self._refused += refused
            if refused:
                self._cut_now(now)
        self._close_window(now)

    def _cut_now(self, now: float) -> None:
        span = now - self._window_at
        if self._sent_per_s is None and span >= SENT_RATE_SPAN * self.window_s:
            # Read before this window's cuts slow the pod: the window's end cuts from it.
            self._sent_per_s = self._started / span
        base = self._base()
        rate = min(self._rate, base) - CUT_PER_REFUSAL_PER_S / self.window_s
        self._set(max(rate, base * MAX_CUT))

    def _close_window(self, now: float) -> None:
        if now - self._window_at < self.window_s or self._answered < MIN_ANSWERS:
            return
        if self._refused:
            if self._sent_per_s is None:
                self._sent_per_s = self._started / (now - self._window_at)
            climbing = self._plateau is not None and self._base() < CLIMB_TO * self._plateau
            if self._stray_allowed and climbing and self._refused <= STRAY_REFUSALS:
                self._stray_allowed = False
            else:
                # The share cut and the cuts the window's 429s made at once: the deeper stays.
                self._plateau = self._base() * self._keep()
                self._set(min(self._rate, self._plateau))
                self._stray_allowed = True
                self.cuts += 1
            self._clean_windows = 0
        elif self._waited:
            self._clean_windows += 1
            self._probe()
        self._epoch += 1
        self._window_at = now
        self._started = self._answered = self._refused = 0
        self._waited = False
        self._window_rate = self._rate
        self._sent_per_s = None

    def _probe(self) -> None:
        if self._plateau is not None and self._clean_windows > FORGET_AFTER:
            self._plateau = None
            self._clean_windows = 1
        if self._plateau is None:
            speed_up = 2 ** (self._clean_windows // SPEED_UP_EVERY)
            self._set(self._rate * (1.0 + self.probe_share * speed_up) + self.probe_per_s)
            return
        slow = self._rate * (1.0 + self.probe_share * SLOW_PROBE) + self.probe_per_s * SLOW_PROBE
        target = CLIMB_TO * self._plateau
        climb = self._rate + CLIMB_GAP * (target - self._rate)
        self._set(max(slow, min(target, climb)))

    def _base(self) -> float:
        # A pod with fewer calls than its rate allows is cut from what it sent: the rate
        # it never used says nothing of what Stripe lets through. What it sent after its
        # first 429 went at a rate already cut: that is not counted.
        if self._sent_per_s is None:
            return self._window_rate
        return min(self._window_rate, self._sent_per_s)

    def _keep(self) -> float:
        return max(MAX_CUT, 1.0 - self._refused / max(self._answered, 1))

    def _set(self, rate: float) -> None:
        rate = min(self.max_per_s, max(self.min_per_s, rate))
        # A slower rate applies to the very next start: the slot already given goes by it.
        self._next_at += 1.0 / rate - 1.0 / self._rate
        self._rate = rate
        if self._on_change is not None:
            self._on_change(rate)


@dataclass(frozen=True, slots=True)
class Ticket:
    operation: str
    endpoint_epoch: int
    account_epoch: int


def refusal(error: stripe.StripeError) -> str | None:
    """The limiter a 429 names, `UNNAMED_LIMITER` if none, None if it is no rate limit."""
    if error.http_status != 429 or error.code == "lock_timeout":
        return None
    for name, value in (error.headers or {}).items():
        if name.lower() == REASON_HEADER:
            return str(value)
    return UNNAMED_LIMITER


class Budget:
    """The account's pacer and one per operation; FIFO waiting for both."""

    def __init__(
        self,
        *,
        account_per_s: float,
        endpoint_per_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_change: Callable[[str, float], None] | None = None,
    ) -> None:
        self._endpoint_per_s = endpoint_per_s
        self._clock = clock
        self._sleep = sleep
        self._on_change = on_change
        self.account = self._pacer("account", account_per_s)
        self._endpoints: dict[str, Pacer] = {}
        self._turns: dict[str, asyncio.Lock] = {"account": asyncio.Lock()}

    def endpoint(self, operation: str) -> Pacer:
        pacer = self._endpoints.get(operation)
        if pacer is None:
            pacer = self._endpoints[operation] = self._pacer(operation, self._endpoint_per_s)
            self._turns[operation] = asyncio.Lock()
        return pacer

    async def acquire(self, operation: str) -> Ticket:
        endpoint_epoch = await self._take(operation, self.endpoint(operation))
        account_epoch = await self._take("account", self.account)
        return Ticket(operation, endpoint_epoch, account_epoch)

    def release(self, ticket: Ticket, *, refused_by: str | None) -> None:
        """After the answer; `refused_by` is `refusal(error)` for a failed call, else None."""
        endpoint = self.endpoint(ticket.operation)
        on_account = refused_by is not None and refused_by.startswith("global")
        if not on_account:
            endpoint.finish(ticket.endpoint_epoch, refused=refused_by is not None)
        if refused_by is None or on_account:
            self.account.finish(ticket.account_epoch, refused=on_account)

    async def _take(self, name: str, pacer: Pacer) -> int:
        waited = False
        async with self._turns[name]:
            # The rate can drop while this call sleeps: look again after each sleep.
            while (delay := pacer.wait()) > 0:
                waited = True
                await self._sleep(delay)
            return pacer.start(waited=waited)

    def _pacer(self, name: str, max_per_s: float) -> Pacer:
        on_change = None if self._on_change is None else _bind(self._on_change, name)
        return Pacer(
            max_per_s=max_per_s,
            min_per_s=min(MIN_RATE_PER_S, max_per_s),
            clock=self._clock,
            on_change=on_change,
        )


def _bind(on_change: Callable[[str, float], None], name: str) -> Callable[[float], None]:
    return lambda rate: on_change(name, rate)
