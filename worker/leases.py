"""The messages this process holds, from receive until deleted or handed back.

A received message stays invisible to other consumers for the visibility timeout.
A task that runs longer than half of it gets its lease extended, so a slow Stripe
call never lets a second worker start the same task; whatever is still held at
shutdown is handed back (visibility 0) for another worker to take at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from worker.queue import Message


@dataclass(slots=True)
class Lease:
    message: Message
    visible_at: float


class Leases:
    def __init__(
        self, visibility_timeout_s: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.visibility_timeout_s = visibility_timeout_s
        self._clock = clock
        self._held: dict[str, Lease] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, message: Message) -> None:
        self._held[message.receipt_handle] = Lease(
            message, self._clock() + self.visibility_timeout_s
        )

    def settle(self, message: Message) -> None:
        """The message is deleted or its visibility set: no longer ours to extend or release."""
        self._held.pop(message.receipt_handle, None)

    def due(self) -> list[Message]:
        """Messages with less than half their visibility left; their clock restarts now."""
        now = self._clock()
        threshold = now + self.visibility_timeout_s / 2
        due = [lease for lease in self._held.values() if lease.visible_at < threshold]
        for lease in due:
            lease.visible_at = now + self.visibility_timeout_s
        return [lease.message for lease in due]

    def release_all(self) -> list[Message]:
        released = [lease.message for lease in self._held.values()]
        self._held.clear()
        return released
