"""Wait for something that happens elsewhere (a process, moto, the emulator) with a deadline.

    described = eventually(lambda: sfn.describe_execution(executionArn=arn),
                           until=ended, what=f"{arn} to end")
    await eventually_async(lambda: stack.payment_intents_of(order_id), what="a PaymentIntent")

The condition is asked at once and then every `interval_s` until its value
satisfies `until` (truthy by default); after `timeout_s` it raises `NotInTime`,
an AssertionError naming what was awaited and the last value seen. A deadline
bounds how long a failing test hangs; it is not a timing assertion.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

T = TypeVar("T")

TIMEOUT_S: Final = 30.0
INTERVAL_S: Final = 0.2


class NotInTime(AssertionError):
    """The awaited condition did not hold within the deadline; `last` is the last value."""

    def __init__(self, what: str, timeout_s: float, last: object) -> None:
        shown = repr(last)
        if len(shown) > 500:
            shown = shown[:500] + "..."
        super().__init__(f"not within {timeout_s:g} s: {what} (last seen: {shown})")
        self.last = last


def eventually(
    condition: Callable[[], T],
    *,
    until: Callable[[T], object] = bool,
    timeout_s: float = TIMEOUT_S,
    interval_s: float = INTERVAL_S,
    what: str = "",
) -> T:
    """`condition()`'s first value that satisfies `until`."""
    deadline = _Deadline(what or _name(condition), timeout_s)
    while not until(value := condition()):
        deadline.check(value)
        time.sleep(interval_s)
    return value


async def eventually_async(
    condition: Callable[[], Awaitable[T]],
    *,
    what: str = "",
    until: Callable[[T], object] = bool,
    timeout_s: float = TIMEOUT_S,
    interval_s: float = INTERVAL_S,
) -> T:
    """`await condition()`'s first value that satisfies `until`."""
    deadline = _Deadline(what or _name(condition), timeout_s)
    while not until(value := await condition()):
        deadline.check(value)
        await asyncio.sleep(interval_s)
    return value


class _Deadline:
    def __init__(self, what: str, timeout_s: float) -> None:
        self.what, self.timeout_s = what, timeout_s
        self.at = time.monotonic() + timeout_s

    def check(self, last: object) -> None:
        """Raise `NotInTime` once past the deadline."""
        if time.monotonic() > self.at:
            raise NotInTime(self.what, self.timeout_s, last)


def ended(described: Mapping[str, Any]) -> bool:
    """A Step Functions `DescribeExecution` answer of an execution no longer running."""
    return bool(described["status"] != "RUNNING")


def _name(condition: Callable[..., object]) -> str:
    return getattr(condition, "__qualname__", repr(condition))
