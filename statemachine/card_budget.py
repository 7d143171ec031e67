"""The retry budget of one card across executions: the attempts card networks allow.

Card networks charge for excess retries of a declined card: Visa allows 15 retries of
one card in 30 days, Mastercard 10 in 24 hours and 35 in 30 days (and Stripe blocks a
card after repeated declines: `previously_declined_do_not_retry`,
https://docs.stripe.com/declines/codes). paystep counts every attempt on a card that
was declined, by the card's fingerprint (the same card number has the same
fingerprint across customers and PaymentMethods:
https://docs.stripe.com/api/payment_methods/object#payment_method_object-card-fingerprint).

One DynamoDB item per card: a map of attempt -> epoch second (an attempt is
`<execution>#<attempt>`, one off-session charge, so a decline seen twice is counted
once), a version and an `expires_at` TTL one window past the last attempt, so DynamoDB
deletes a quiet card's item, late (TTL deletes within days:
https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/howitworks-ttl.html;
entries older than the longest window are dropped on every write and never counted).

- A declined attempt is recorded by whoever sees its decline first (`record_decline`:
  the worker's create, the webhook's `payment_intent.payment_failed`, reconcile's
  replay of it; the same key from each), never refused: the first attempt is the
  customer's own try. It answers whether another attempt would still fit, so a card
  at its limit fails at once.
- A retry reserves its attempt before its charge (`reserve`, the worker): refused
  past the budget.

Both write conditionally on the version they read (optimistic concurrency), so
concurrent executions of one card cannot together overshoot: each decision is made on
the exact set of attempts the write replaces. The table is read on a decline only: a
payment that succeeds at once costs no DynamoDB call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
from botocore.exceptions import ClientError

log = structlog.get_logger("paystep.card_budget")

DAY_S: Final = 86_400
# Two writers of one card rarely meet more than a few times; past this many lost races in
# a row the message is retried later (the write stays atomic, only slower).
MAX_CONFLICTS: Final = 20


class BudgetContention(Exception):
    """Too many concurrent writes of one card's item: try the task again later."""


@dataclass(frozen=True, slots=True)
class Window:
    """At most `limit` attempts on a card within `seconds`."""

    limit: int
    seconds: int


@dataclass(frozen=True, slots=True)
class Budgets:
    """The windows of each card network (`card.brand`), and of every other network."""

    by_brand: Mapping[str, tuple[Window, ...]]
    other: tuple[Window, ...]

    def windows(self, brand: str) -> tuple[Window, ...]:
        return self.by_brand.get(brand, self.other)

    @property
    def horizon_s(self) -> int:
        windows = [w for ws in (*self.by_brand.values(), self.other) for w in ws]
        return max((w.seconds for w in windows), default=30 * DAY_S)


@dataclass(frozen=True, slots=True)
class Card:
    """A card as its declines name it: the fingerprint and the network."""

    fingerprint: str
    brand: str

    @classmethod
    def of(cls, payment_method: Any) -> Card | None:
        """The card of a PaymentMethod (a StripeObject or a dict); None if not a card."""
        data = payment_method.to_dict() if hasattr(payment_method, "to_dict") else payment_method
        if not isinstance(data, Mapping):
            return None
        card = data.get("card") or {}
        fingerprint = card.get("fingerprint") if isinstance(card, Mapping) else None
        if not fingerprint:
            return None
        return cls(str(fingerprint), str(card.get("brand") or "unknown"))


def attempt_key(execution_id: str, attempt: int | str) -> str:
    """One attempt of an execution: one off-session charge, however often it is reported."""
    return f"{execution_id}#{attempt}"


@dataclass(frozen=True, slots=True)
class Recorded:
    """An attempt recorded (or found), and whether one more attempt fits the budget."""

    room_for_another: bool
    attempts_in_longest_window: int


@dataclass
class CardBudget:
    """The per-card attempt counts in one DynamoDB table, over an injected aioboto3 client."""

    dynamodb: Any
    table: str
    budgets: Budgets
    clock: Callable[[], float] = field(default=time.time)

    async def record_decline(self, card: Card, attempt: str) -> Recorded:
        """Count a declined attempt (once, whoever reports it); never refused."""
        result = await self._write(card, attempt, refuse_past_budget=False)
        assert result is not None
        return result

    async def reserve(self, card: Card, attempt: str) -> bool:
        """Count a retry before it is charged; False (nothing written) past the budget."""
        return await self._write(card, attempt, refuse_past_budget=True) is not None

    async def _write(
        self, card: Card, attempt: str, *, refuse_past_budget: bool
    ) -> Recorded | None:
        windows = self.budgets.windows(card.brand)
        horizon_s = self.budgets.horizon_s
        for _ in range(MAX_CONFLICTS):
            attempts, version = await self._read(card)
            now = int(self.clock())
            live = {key: at for key, at in attempts.items() if at > now - horizon_s}
            if attempt not in live:
                if refuse_past_budget and not _fits(live, windows, now):
                    log.info("card_budget.refused", card=card.fingerprint, brand=card.brand)
                    return None
                live[attempt] = now
                if not await self._put(card, live, version, now + horizon_s):
                    continue  # another writer came first: decide again on what it wrote
            return Recorded(_fits(live, windows, now), len(live))
        raise BudgetContention(f"card {card.fingerprint}: {MAX_CONFLICTS} conflicting writes")

    async def _read(self, card: Card) -> tuple[dict[str, int], int]:
        answer = await self.dynamodb.get_item(
            TableName=self.table, Key={"card": {"S": card.fingerprint}}, ConsistentRead=True
        )
        item = answer.get("Item")
        if not item:
            return {}, 0
        attempts = {key: int(value["N"]) for key, value in item["attempts"]["M"].items()}
        return attempts, int(item["version"]["N"])

    async def _put(self, card: Card, attempts: dict[str, int], version: int, expires: int) -> bool:
        condition = (
            {"ConditionExpression": "attribute_not_exists(card)"}
            if version == 0
            else {
                "ConditionExpression": "version = :version",
                "ExpressionAttributeValues": {":version": {"N": str(version)}},
            }
        )
        try:
            await self.dynamodb.put_item(
                TableName=self.table,
                Item={
                    "card": {"S": card.fingerprint},
                    "brand": {"S": card.brand},
                    "attempts": {"M": {k: {"N": str(v)} for k, v in attempts.items()}},
                    "version": {"N": str(version + 1)},
                    "expires_at": {"N": str(expires)},
                },
                **condition,
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True


def _fits(attempts: Mapping[str, int], windows: tuple[Window, ...], now: int) -> bool:
    """Whether one more attempt now stays within every window."""
    return all(
        sum(1 for at in attempts.values() if at > now - w.seconds) + 1 <= w.limit for w in windows
    )
