"""Stripe event → Step Functions callback: the one table both the webhook and reconciliation use.

`plan(event, reader)` is the pure part: which callback an event asks for and with
which token. `handle_event(event, callbacks, reader, checks)` carries it out. The token
always comes from the event's own PaymentIntent snapshot, never from a fresh
fetch, so an old event can only act on the token of its own attempt; if that
task is closed by now, Step Functions says so and nothing changes.

The token opens only with the associated data of that same snapshot (amount,
currency, execution, attempt, the event's mode): metadata copied onto another
PaymentIntent is a mismatch, ignored, and the execution keeps waiting for its own.
An execution of another state machine (another deployment on the same Stripe
account) is not ours to resume: ignored too. Every ignore is an answer, never an
error, so Stripe stops redelivering it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import stripe
import structlog
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from paystep_common.logging import token_hash
from statemachine import causes, declines, metadata
from statemachine.callbacks import CallbackError, CallbackResult, Callbacks
from statemachine.card_budget import BudgetContention, Card, Recorded, attempt_key
from statemachine.models import CheckPaymentTask, PaymentOutcome, describe_validation_error
from statemachine.seal import Damaged, Mismatch, TokenKeys, UnknownKey
from webhook.checks import PaymentChecks
from webhook.events import MalformedEvent, PaymentIntentSnapshot, StripeEvent, parse_event
from webhook.notices import ActionRequired, CustomerNotices
from webhook.settings import EventSettings

log = structlog.get_logger("webhook.mapping")


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


@dataclass(frozen=True)
class AskCustomer:
    """A decline only the customer can fix: keep the task open (a heartbeat) and tell them."""

    notice: ActionRequired
    action: Literal["ask_customer"] = "ask_customer"


Callback = Succeed | Fail | Heartbeat | AskCustomer


@dataclass(frozen=True)
class Counted:
    """A declined attempt to count against its card before the callback."""

    card: Card
    attempt: str


@dataclass(frozen=True)
class Plan:
    """Send `callback` on `token`, the task token stored in `payment_intent`; count the
    decline first when it names a card (`counted`)."""

    token: str = field(repr=False)
    callback: Callback
    payment_intent: PaymentIntentSnapshot
    counted: Counted | None = None


class DeclineCounter(Protocol):
    async def record_decline(self, card: Card, attempt: str) -> Recorded: ...


class IgnoreReason(enum.StrEnum):
    UNHANDLED_TYPE = "unhandled_type"
    NO_TOKEN = "no_token"
    DAMAGED_TOKEN = "damaged_token"
    UNKNOWN_KEY = "unknown_key"
    MISMATCH = "mismatch"
    OTHER_STATE_MACHINE = "other_state_machine"


# Worth a warning: someone or something changed paystep's metadata, or a key is missing.
SUSPICIOUS: Final = frozenset(
    {IgnoreReason.DAMAGED_TOKEN, IgnoreReason.UNKNOWN_KEY, IgnoreReason.MISMATCH}
)


@dataclass(frozen=True)
class TokenReader:
    """Opens the tokens this deployment sealed, for executions of its own state machine."""

    keys: TokenKeys = field(repr=False)
    state_machine_arn: str

    @classmethod
    def from_settings(cls, settings: EventSettings) -> TokenReader:
        return cls(settings.keyring, settings.state_machine_arn)

    def owns(self, execution_arn: str) -> bool:
        """`arn:...:execution:<machine>:<name>` (or `express:`) of our state machine.

        https://docs.aws.amazon.com/step-functions/latest/dg/concepts-state-machine-executions.html
        """
        machine = self.state_machine_arn.split(":")
        execution = execution_arn.split(":")
        return (
            len(execution) >= 8
            and execution[:5] == machine[:5]
            and execution[5] in ("execution", "express")
            and execution[6] == machine[6]
        )

    def read(self, pi: PaymentIntentSnapshot, livemode: bool) -> str | IgnoreReason:
        """The token `pi` carries for one of our executions, or why it is ignored."""
        execution = pi.metadata.get(metadata.EXECUTION_KEY)
        if metadata.TOKEN_PARTS_KEY not in pi.metadata:
            return IgnoreReason.NO_TOKEN
        if execution is not None and not self.owns(execution):
            return IgnoreReason.OTHER_STATE_MACHINE
        try:
            token = metadata.read_token(
                self.keys, pi.metadata, amount=pi.amount, currency=pi.currency, livemode=livemode
            )
        except Damaged:
            return IgnoreReason.DAMAGED_TOKEN
        except UnknownKey:
            return IgnoreReason.UNKNOWN_KEY
        except Mismatch:
            return IgnoreReason.MISMATCH
        return IgnoreReason.NO_TOKEN if token is None else token


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
    checked: bool = False
    """A success met a closed task: the payment was handed to the worker to keep or refund."""


def _succeeded(event: StripeEvent, pi: PaymentIntentSnapshot) -> Callback:
    # Stripe always reports amount_received; the local emulator leaves it out,
    # and a succeeded PaymentIntent received its whole amount.
    received = pi.amount if pi.amount_received is None else pi.amount_received
    return Succeed(_outcome(event, pi, received))


def _payment_failed(event: StripeEvent, pi: PaymentIntentSnapshot) -> Callback:
    verdict = declines.decide(pi.last_payment_error)
    if verdict.kind == declines.ASK_CUSTOMER:
        # The token in this PaymentIntent resumes the execution when the customer confirms
        # it; failing the task would retry off-session, which cannot succeed.
        charge = pi.last_payment_error.charge if pi.last_payment_error else None
        return AskCustomer(
            ActionRequired(
                order_id=pi.metadata.get(metadata.ORDER_KEY),
                execution_id=pi.metadata.get(metadata.EXECUTION_KEY),
                payment_intent_id=pi.id,
                action=declines.customer_action(verdict),
                reason=verdict.reason,
                dedupe_key=charge or f"{pi.id}:{event.id}",
            )
        )
    return Fail(causes.declined(pi.id, pi.last_payment_error, verdict=verdict, event_id=event.id))


def _authorized(event: StripeEvent, pi: PaymentIntentSnapshot) -> Callback:
    # Stripe always reports amount_capturable; the local emulator leaves it out, and an
    # authorisation holds the whole amount.
    capturable = pi.amount if pi.amount_capturable is None else pi.amount_capturable
    return Succeed(
        PaymentOutcome(
            payment_intent_id=pi.id,
            status="requires_capture",
            amount_received=pi.amount_received or 0,
            amount_capturable=capturable,
            currency=pi.currency,
            latest_charge=pi.latest_charge,
            event_id=event.id,
        )
    )


def _canceled(event: StripeEvent, pi: PaymentIntentSnapshot) -> Callback:
    if pi.cancellation_reason in EXPIRED_REASONS:
        # Stripe canceled an authorisation left uncaptured too long: the same end as
        # paystep's own capture deadline.
        return Fail(
            causes.authorization_expired(
                pi.id, cancellation_reason=pi.cancellation_reason, event_id=event.id
            )
        )
    return Fail(causes.canceled(pi.id, pi.cancellation_reason, event_id=event.id))


def _heartbeat(_event: StripeEvent, _pi: PaymentIntentSnapshot) -> Callback:
    return Heartbeat()


# https://docs.stripe.com/api/payment_intents/object#payment_intent_object-cancellation_reason
EXPIRED_REASONS: Final = frozenset({"automatic", "expired"})
# https://docs.stripe.com/api/payment_intents/object#payment_intent_object-status: funds held,
# to be captured (manual capture).
AUTHORIZED: Final = "requires_capture"

EVENT_TABLE: Final[Mapping[str, Callable[[StripeEvent, PaymentIntentSnapshot], Callback]]] = {
    "payment_intent.succeeded": _succeeded,
    "payment_intent.payment_failed": _payment_failed,
    "payment_intent.canceled": _canceled,
    "payment_intent.processing": _heartbeat,
    "payment_intent.requires_action": _heartbeat,
    # https://docs.stripe.com/api/events/types#event_types-payment_intent.amount_capturable_updated:
    # manual capture, the funds are held. The worker resumes the task from its create too.
    "payment_intent.amount_capturable_updated": _authorized,
}
"""Event types that resume (or keep alive) an execution; every other type is ignored.

Whatever the type, a PaymentIntent in `requires_capture` resumes its task as authorised."""


def plan(event: StripeEvent, reader: TokenReader) -> Plan | Ignore:
    """The callback `event` asks for; raises `MalformedEvent` if its PaymentIntent is unreadable."""
    handler = EVENT_TABLE.get(event.type)
    if handler is None:
        return Ignore(IgnoreReason.UNHANDLED_TYPE)
    pi = event.payment_intent()
    if pi.status == AUTHORIZED:
        handler = _authorized
    token = reader.read(pi, event.livemode)
    if isinstance(token, IgnoreReason):
        return Ignore(token, pi)
    try:
        return Plan(token, handler(event, pi), pi, _counted(event, pi))
    except ValidationError as exc:
        raise MalformedEvent(describe_validation_error(exc)) from exc


def _counted(event: StripeEvent, pi: PaymentIntentSnapshot) -> Counted | None:
    """The card and attempt of a declined charge, keyed as the worker keys it."""
    error = pi.last_payment_error
    if event.type != "payment_intent.payment_failed" or error is None:
        return None
    card = Card.of(error.payment_method)
    execution = pi.metadata.get(metadata.EXECUTION_KEY)
    attempt = pi.metadata.get(metadata.ATTEMPT_KEY)
    if card is None or not execution or not attempt:
        return None
    return Counted(card, attempt_key(execution, attempt))


async def handle_event(
    event: StripeEvent | Mapping[str, Any] | stripe.StripeObject,
    callbacks: Callbacks,
    reader: TokenReader,
    checks: PaymentChecks,
    notices: CustomerNotices,
    budget: DeclineCounter,
) -> EventOutcome:
    """Carry out what `event` asks for: one callback at most, a check of a closed success,
    a notice to the customer of a decline they must fix while the task waits for them.

    Raises `MalformedEvent` for an event that cannot be read, `CallbackError` when
    Step Functions did not take the callback, `CheckError` when a check could not
    be queued and `NoticeError` when a notice could not be published (retrying later
    may help, for all three).
    """
    if not isinstance(event, StripeEvent):
        event = parse_event(event)
    bound = log.bind(event_id=event.id, event_type=event.type)
    decision = plan(event, reader)
    if decision.payment_intent is not None:
        bound = bound.bind(**_context(decision.payment_intent))
    if isinstance(decision, Ignore):
        if decision.reason in SUSPICIOUS and decision.payment_intent is not None:
            pi = decision.payment_intent
            # The ids and the hash of what was found: enough to find the PaymentIntent and
            # compare it with its execution, nothing that opens anything.
            bound.warning(
                "webhook.event_ignored",
                reason=decision.reason,
                amount=pi.amount,
                currency=pi.currency,
                livemode=event.livemode,
                token_hash=token_hash(metadata.sealed_value(pi.metadata)),
            )
        else:
            bound.debug("webhook.event_ignored", reason=decision.reason)
        return EventOutcome(Result.IGNORED, reason=decision.reason)

    callback = decision.callback
    if decision.counted is not None:
        callback = await _count(budget, decision.counted, callback, event, decision.payment_intent)
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
    checked = False
    # Only captured money can be an orphan: a late authorisation changes nothing.
    if (
        outcome is Result.ALREADY_CLOSED
        and isinstance(callback, Succeed)
        and callback.output.status == "succeeded"
    ):
        task = check_task(decision.payment_intent, event.id)
        if task is not None:
            await checks.check(task)
            bound.info("webhook.payment_check_queued")
            checked = True
    if outcome is Result.DELIVERED and isinstance(callback, AskCustomer):
        await notices.publish(callback.notice)
        bound.info("webhook.customer_asked", reason=callback.notice.reason)
    return EventOutcome(outcome, action=callback.action, callback_s=elapsed_s, checked=checked)


async def _count(
    budget: DeclineCounter,
    counted: Counted,
    callback: Callback,
    event: StripeEvent,
    pi: PaymentIntentSnapshot,
) -> Callback:
    """Count the decline against its card; a retry the card has no room for becomes final."""
    try:
        recorded = await budget.record_decline(counted.card, counted.attempt)
    except (BotoCoreError, ClientError, BudgetContention) as exc:
        # The worker counts the same attempt and reserves every retry before charging it:
        # the budget still binds there, so the event is not held back for it.
        log.warning("webhook.card_budget_unavailable", event_id=event.id, error=str(exc)[:200])
        return callback
    error = pi.last_payment_error
    if (
        isinstance(callback, Fail)
        and declines.decide(error).retryable
        and not recorded.room_for_another
    ):
        return Fail(
            causes.declined(pi.id, error, verdict=declines.over_budget(), event_id=event.id)
        )
    return callback


def check_task(pi: PaymentIntentSnapshot, event_id: str) -> CheckPaymentTask | None:
    """The check of a payment whose task was closed; None without an execution to ask."""
    execution = pi.metadata.get(metadata.EXECUTION_KEY)
    if not execution:
        return None
    attempt = pi.metadata.get(metadata.ATTEMPT_KEY, "")
    try:
        return CheckPaymentTask(
            type="check_payment",
            execution_id=execution,
            payment_intent_id=pi.id,
            order_id=pi.metadata.get(metadata.ORDER_KEY),
            attempt=int(attempt) if attempt.isdecimal() else None,
            event_id=event_id,
        )
    except ValidationError:
        log.warning("webhook.payment_check_unreadable", payment_intent=pi.id)
        return None


async def _send(callbacks: Callbacks, token: str, callback: Callback) -> CallbackResult:
    match callback:
        case Succeed(output=output):
            return await callbacks.succeed(token, output)
        case Fail(failure=failure):
            return await callbacks.fail(token, failure.error, failure.cause)
        case Heartbeat() | AskCustomer():
            return await callbacks.heartbeat(token)


def _outcome(event: StripeEvent, pi: PaymentIntentSnapshot, amount_received: int) -> PaymentOutcome:
    return PaymentOutcome(
        payment_intent_id=pi.id,
        status="succeeded",
        amount_received=amount_received,
        currency=pi.currency,
        latest_charge=pi.latest_charge,
        event_id=event.id,
    )


def _context(pi: PaymentIntentSnapshot) -> dict[str, str]:
    return {"payment_intent": pi.id, **metadata.ids(pi.metadata)}
