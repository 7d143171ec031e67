"""Stripe event → Step Functions callback: the one table both the webhook and reconciliation use.

`plan(event)` is the pure part: which callback an event asks for and with which
token. `handle_event(event, callbacks)` carries it out. The token always comes
from the event's own PaymentIntent snapshot, never from a fresh fetch, so an
old event can only act on the token of its own attempt; if that task is closed
by now, Step Functions says so and nothing changes.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import stripe
import structlog
from pydantic import ValidationError

from paystep_common.logging import token_hash
from statemachine import causes
from statemachine.callbacks import CallbackError, CallbackResult, Callbacks
from statemachine.codec import TokenCodecError, decode_token
from statemachine.models import PaymentOutcome, describe_validation_error
from webhook.events import MalformedEvent, PaymentIntentSnapshot, StripeEvent, parse_event

log = structlog.get_logger("webhook.mapping")

# Metadata keys the worker writes beside the token, read here for logs only.
ORDER_KEY: Final = "order_id"
EXECUTION_KEY: Final = "paystep_execution"
ATTEMPT_KEY: Final = "paystep_attempt"


@dataclass(frozen=True)
class Succeed:
    output: PaymentOutcome
    action: Literal["succeed"] = "succeed"


@dataclass(frozen=True)
class Fail:
    failure: causes.Failure
    action: Literal["fail"] = "fail"


@dataclass(frozen=True)
class Heartbeat:
    action: Literal["heartbeat"] = "heartbeat"


Callback = Succeed | Fail | Heartbeat


@dataclass(frozen=True)
class Plan:
    """Send `callback` on `token`, the task token stored in `payment_intent`."""

    token: str = field(repr=False)
    callback: Callback
    payment_intent: PaymentIntentSnapshot


class IgnoreReason(enum.StrEnum):
    UNHANDLED_TYPE = "unhandled_type"
    NO_TOKEN = "no_token"
    INCOMPLETE_TOKEN = "incomplete_token"


@dataclass(frozen=True)
class Ignore:
    reason: IgnoreReason
    payment_intent: PaymentIntentSnapshot | None = None


class Result(enum.StrEnum):
    DELIVERED = "delivered"
    ALREADY_CLOSED = "already_closed"
    IGNORED = "ignored"


@dataclass(frozen=True)
class EventOutcome:
    """What became of one event; `callback_s` is how long Step Functions took."""

    result: Result
    action: str | None = None
    reason: IgnoreReason | None = None
    callback_s: float | None = None


def _succeeded(event: StripeEvent, pi: PaymentIntentSnapshot) -> Callback:
    # Stripe always reports amount_received; the local emulator leaves it out,
    # and a succeeded PaymentIntent received its whole amount.
    received = pi.amount if pi.amount_received is None else pi.amount_received
    return Succeed(_outcome(event, pi, "succeeded", received))


def _capturable(event: StripeEvent, pi: PaymentIntentSnapshot) -> Callback:
    return Succeed(_outcome(event, pi, "requires_capture", pi.amount_received or 0))


def _payment_failed(event: StripeEvent, pi: PaymentIntentSnapshot) -> Callback:
    return Fail(causes.declined(pi.id, pi.last_payment_error, event_id=event.id))


def _canceled(event: StripeEvent, pi: PaymentIntentSnapshot) -> Callback:
    return Fail(causes.canceled(pi.id, pi.cancellation_reason, event_id=event.id))


def _heartbeat(_event: StripeEvent, _pi: PaymentIntentSnapshot) -> Callback:
    return Heartbeat()


EVENT_TABLE: Final[Mapping[str, Callable[[StripeEvent, PaymentIntentSnapshot], Callback]]] = {
    "payment_intent.succeeded": _succeeded,
    "payment_intent.payment_failed": _payment_failed,
    "payment_intent.canceled": _canceled,
    "payment_intent.processing": _heartbeat,
    "payment_intent.requires_action": _heartbeat,
    "payment_intent.amount_capturable_updated": _capturable,
}
"""Event types that resume (or keep alive) an execution; every other type is ignored."""


def plan(event: StripeEvent) -> Plan | Ignore:
    """The callback `event` asks for; raises `MalformedEvent` if its PaymentIntent is unreadable."""
    handler = EVENT_TABLE.get(event.type)
    if handler is None:
        return Ignore(IgnoreReason.UNHANDLED_TYPE)
    pi = event.payment_intent()
    try:
        token = decode_token(pi.metadata)
    except TokenCodecError:
        return Ignore(IgnoreReason.INCOMPLETE_TOKEN, pi)
    if token is None:
        return Ignore(IgnoreReason.NO_TOKEN, pi)
    try:
        return Plan(token, handler(event, pi), pi)
    except ValidationError as exc:
        raise MalformedEvent(describe_validation_error(exc)) from exc


async def handle_event(
    event: StripeEvent | Mapping[str, Any] | stripe.StripeObject, callbacks: Callbacks
) -> EventOutcome:
    """Carry out what `event` asks for: one callback at most.

    Raises `MalformedEvent` for an event that cannot be read, and `CallbackError`
    when Step Functions did not take the callback (retrying later may help).
    """
    if not isinstance(event, StripeEvent):
        event = parse_event(event)
    bound = log.bind(event_id=event.id, event_type=event.type)
    decision = plan(event)
    if decision.payment_intent is not None:
        bound = bound.bind(**_context(decision.payment_intent))
    if isinstance(decision, Ignore):
        if decision.reason is IgnoreReason.INCOMPLETE_TOKEN:
            bound.warning("webhook.event_ignored", reason=decision.reason)
        else:
            bound.debug("webhook.event_ignored", reason=decision.reason)
        return EventOutcome(Result.IGNORED, reason=decision.reason)

    callback = decision.callback
    bound = bound.bind(action=callback.action, token_hash=token_hash(decision.token))
    started = time.perf_counter()
    try:
        result = await _send(callbacks, decision.token, callback)
    except CallbackError as exc:
        bound.warning(
            "webhook.callback_failed",
            code=exc.code,
            throttled=exc.throttled,
            callback_s=round(time.perf_counter() - started, 4),
        )
        raise
    elapsed_s = time.perf_counter() - started
    outcome = Result(result.value)
    bound.info(f"webhook.callback_{outcome}", callback_s=round(elapsed_s, 4))
    return EventOutcome(outcome, action=callback.action, callback_s=elapsed_s)


async def _send(callbacks: Callbacks, token: str, callback: Callback) -> CallbackResult:
    match callback:
        case Succeed(output=output):
            return await callbacks.succeed(token, output)
        case Fail(failure=failure):
            return await callbacks.fail(token, failure.error, failure.cause)
        case Heartbeat():
            return await callbacks.heartbeat(token)


def _outcome(
    event: StripeEvent,
    pi: PaymentIntentSnapshot,
    status: Literal["succeeded", "requires_capture"],
    amount_received: int,
) -> PaymentOutcome:
    return PaymentOutcome(
        payment_intent_id=pi.id,
        status=status,
        amount_received=amount_received,
        currency=pi.currency,
        latest_charge=pi.latest_charge,
        event_id=event.id,
    )


def _context(pi: PaymentIntentSnapshot) -> dict[str, str]:
    metadata = pi.metadata
    context = {
        "payment_intent": pi.id,
        "order_id": metadata.get(ORDER_KEY),
        "execution": metadata.get(EXECUTION_KEY),
        "attempt": metadata.get(ATTEMPT_KEY),
    }
    return {key: value for key, value in context.items() if value is not None}
