"""Stripe's idempotency keys, as the local doubles of Stripe honour them.

What Stripe does (https://docs.stripe.com/api/idempotent_requests):

- the first POST with a key runs and its status and body are stored once the
  endpoint ran (a decline included); a request refused before it ran (a
  parameter validation failure, a rate limit, a server error) stores nothing;
- the same key with the same parameters replays the stored answer with
  `Idempotent-Replayed: true`;
- the same key with other parameters is a 400 `idempotency_error`;
- a request arriving while another with the same key runs is a 409
  `idempotency_key_in_use`
  (https://docs.stripe.com/error-codes#idempotency-key-in-use); with
  `same_key_in_flight="wait"` it waits for the first and replays instead;
- keys are pruned after 24 hours: `forget()`.

The store keeps answers of any body type (a decoded dict for the fake, raw
bytes for the proxy); the caller says how parameters compare by its
`fingerprint` and turns an `IdempotencyError` into its own answer.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Final, Generic, Literal, TypeVar

SameKeyInFlight = Literal["conflict", "wait"]
Body = TypeVar("Body")

# Answers Stripe does not keep for a key: the request may be sent again as it was.
NOT_STORED_STATUSES: Final = frozenset({409, 429})
REPLAYED_HEADER: Final = "Idempotent-Replayed"


@dataclass(frozen=True)
class Reply(Generic[Body]):
    """An answer to a request; `ran` is False when the endpoint refused it before acting."""

    status: int
    body: Body
    headers: Mapping[str, str] = field(default_factory=dict)
    replayed: bool = False
    ran: bool = True

    @property
    def storable(self) -> bool:
        return self.ran and self.status < 500 and self.status not in NOT_STORED_STATUSES


class IdempotencyError(Exception):
    """A request the key refuses, answered in Stripe's error shape (`body`)."""

    status: ClassVar[int]
    error: ClassVar[dict[str, str]]

    def __init__(self) -> None:
        super().__init__(self.error["message"])
        self.body: dict[str, Any] = {"error": dict(self.error)}


class ParametersDiffer(IdempotencyError):
    status = 400
    error: ClassVar[dict[str, str]] = {
        "type": "idempotency_error",
        "message": "Keys for idempotent requests can only be used with the same parameters "
        "they were first used with.",
    }


class KeyInUse(IdempotencyError):
    status = 409
    error: ClassVar[dict[str, str]] = {
        "type": "invalid_request_error",
        "code": "idempotency_key_in_use",
        "message": "There is currently another in-progress request using this Idempotent Key "
        "(that probably means you submitted twice, and the other request is still going "
        "through).",
    }


@dataclass(frozen=True)
class _Stored(Generic[Body]):
    fingerprint: str
    reply: Reply[Body]


class IdempotencyStore(Generic[Body]):
    """Keys of one Stripe account; used from one event loop.

    `counts()`: replayed, conflicts (409s), waits (requests that waited for the
    first), mismatches (400s).
    """

    def __init__(self, *, same_key_in_flight: SameKeyInFlight = "conflict") -> None:
        self.same_key_in_flight: SameKeyInFlight = same_key_in_flight
        self._stored: dict[str, _Stored[Body]] = {}
        self._in_flight: dict[str, asyncio.Event] = {}
        self._counts: Counter[str] = Counter()

    async def run(
        self, key: str, fingerprint: str, call: Callable[[], Awaitable[Reply[Body]]]
    ) -> Reply[Body]:
        """The stored answer of `key`, or `call()`'s, stored when Stripe would keep it.

        Raises `ParametersDiffer` or `KeyInUse`.
        """
        while True:
            stored = self._stored.get(key)
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    self._counts["mismatches"] += 1
                    raise ParametersDiffer
                self._counts["replayed"] += 1
                headers = {**stored.reply.headers, REPLAYED_HEADER: "true"}
                return replace(stored.reply, headers=headers, replayed=True)
            running = self._in_flight.get(key)
            if running is None:
                break
            if self.same_key_in_flight == "conflict":
                self._counts["conflicts"] += 1
                raise KeyInUse
            self._counts["waits"] += 1
            await running.wait()
        done = asyncio.Event()
        # The key is taken for the whole request, latency included, as on Stripe's side.
        self._in_flight[key] = done
        try:
            reply = await call()
            if reply.storable:
                self._stored[key] = _Stored(fingerprint, reply)
            return reply
        finally:
            del self._in_flight[key]
            done.set()

    def forget(self) -> None:
        """What Stripe does to keys older than 24 hours."""
        self._stored.clear()

    def counts(self) -> dict[str, int]:
        return dict(self._counts)
