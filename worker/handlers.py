"""The tasks: reserve and release an order; create, cancel, capture, refund and check a payment.

The money rule holds in all of them: once an execution has ended, the one payment
in its output is kept if it SUCCEEDED, none if it FAILED, and every other
successful PaymentIntent of the order is refunded in full, with an alert.

Each handler returns its outcome (a metrics label) once the message may be
deleted, and raises for anything else; `classify` decides what an exception
means. Every Stripe write carries an idempotency key derived from the task, so
a redelivered message, a worker killed mid-task or two workers racing on the
same message end in one PaymentIntent, one cancel, one refund.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import stripe
import structlog
from pydantic import ValidationError
from stripe import CardError, PaymentIntent, Refund

from statemachine import causes, declines, metadata
from statemachine.callbacks import CallbackResult, Callbacks
from statemachine.card_budget import Card, CardBudget, attempt_key
from statemachine.executions import Executions, NoSuchExecution
from statemachine.models import (
    ABANDONED,
    CancelAuthorizationTask,
    CancelOutcome,
    CancelPaymentTask,
    CapturePaymentTask,
    CheckPaymentTask,
    CreatePaymentTask,
    PaymentOutcome,
    PaymentRequest,
    RefundOutcome,
    RefundPaymentTask,
    ReleaseOrderTask,
    ReleaseOutcome,
    ReserveOrderTask,
    ReserveOutcome,
    Task,
    abandoned_authorization_key,
    describe_validation_error,
    dump_json,
)
from statemachine.orders import OrderRefused, Orders
from statemachine.seal import Binding, TokenKeys
from worker.alerts import Alerts, Refunding
from worker.classify import payment_intent_id
from worker.errors import PoisonMessage, TaskFailure
from worker.metrics import Metrics
from worker.queue import Message
from worker.stripe_api import StripeApi

log = structlog.get_logger("paystep.worker")

# Only captured money is paid: an authorisation (`requires_capture`) is resumed as
# authorised at create (manual capture), captured by its own task, and canceled like any
# other unfinished PaymentIntent on every failure.
PAID: Final = "succeeded"
AUTHORIZED: Final = "requires_capture"
# https://docs.stripe.com/api/payment_intents/object#payment_intent_object-cancellation_reason:
# Stripe's own cancel of an authorisation left uncaptured too long.
EXPIRED_REASONS: Final = frozenset({"automatic", "expired"})
PENDING: Final = frozenset({"processing", "requires_action"})
LIVE_REFUNDS: Final = frozenset({"succeeded", "pending", "requires_action"})
# https://docs.stripe.com/api/payment_intents/cancel: the statuses a cancel is taken in
# (Stripe names `processing` as a rare exception, which paystep does not count on).
CANCELABLE: Final = frozenset(
    {"requires_payment_method", "requires_capture", "requires_confirmation", "requires_action"}
)
UNEXPECTED_STATE: Final = "payment_intent_unexpected_state"
# https://docs.stripe.com/error-codes#charge-already-refunded
ALREADY_REFUNDED: Final = "charge_already_refunded"
# On a refund paystep made: "pending" until its alert is published, then "sent".
ALERT_KEY: Final = "paystep_alert"


class Requeue(Protocol):
    async def send(self, body: str, *, delay_s: int = 0) -> None: ...


@dataclass(frozen=True)
class Handlers:
    stripe: StripeApi
    callbacks: Callbacks
    idempotency_horizon_s: float
    token_keys: TokenKeys
    # The mode of the Stripe key: sealed into the token, as the events will carry it.
    livemode: bool
    executions: Executions
    alerts: Alerts
    requeue: Requeue
    metrics: Metrics
    check_again_s: int
    orders: Orders
    card_budget: CardBudget
    clock: Callable[[], float] = time.time

    async def __call__(self, task: Task, message: Message) -> str:
        match task:
            case ReserveOrderTask():
                return await self.reserve_order(task)
            case ReleaseOrderTask():
                return await self.release_order(task)
            case CreatePaymentTask():
                return await self.create_payment(task, message)
            case CancelPaymentTask():
                return await self.cancel_payment(task)
            case RefundPaymentTask():
                return await self.refund_payment(task)
            case CapturePaymentTask():
                return await self.capture_payment(task)
            case CancelAuthorizationTask():
                return await self.cancel_authorization(task)
            case CheckPaymentTask():
                return await self.check_payment(task)

    async def reserve_order(self, task: ReserveOrderTask) -> str:
        """Claim the order and hold its stock, or fail the execution before any payment.

        A claim left open by an execution that has ended (stopped, or crashed before
        its release) is released here first, so the order does not wait for reconcile.
        """
        request = _payment_request(task)
        structlog.contextvars.bind_contextvars(order_id=request.order_id)
        try:
            claimed = await self._reserve(task, request)
        except OrderRefused as exc:
            if exc.holder is None or not await self._release_if_ended(exc.holder, request):
                raise TaskFailure(exc.failure) from None
            claimed = await self._reserve(task, request)
        log.info("order.reserved", claimed=claimed, items=len(request.items))
        await self._succeed(
            task.task_token, ReserveOutcome(claimed=claimed, items=len(request.items))
        )
        return "reserved" if claimed else "reserved_before"

    async def release_order(self, task: ReleaseOrderTask) -> str:
        """Put the holds back and end the claim, once (nothing to do is an answer too)."""
        order_id = task.order_id
        released = None
        if order_id is not None:
            structlog.contextvars.bind_contextvars(order_id=order_id)
            released = await self.orders.release(task.execution_id, order_id)
        log.info("order.released", released=released is not None, reason=task.reason,
                 items=released.items if released else 0)  # fmt: skip
        await self._succeed(
            task.task_token,
            ReleaseOutcome(released=released is not None, items=released.items if released else 0),
        )
        return "released" if released else "nothing_held"

    async def _reserve(self, task: ReserveOrderTask, request: PaymentRequest) -> bool:
        return await self.orders.reserve(
            task.execution_id, request.order_id, request.items, task.started_at
        )

    async def _release_if_ended(self, holder: str, request: PaymentRequest) -> bool:
        try:
            execution = await self.executions.describe(holder)
        except NoSuchExecution:
            # Not ours to judge (another account or region, or purged): leave it to a person.
            return False
        if not execution.ended:
            return False
        released = await self.orders.release(holder, request.order_id)
        log.warning("order.released_ended_claim", holder=holder, status=execution.status,
                    released=released is not None)  # fmt: skip
        if released is not None and released.authorization is not None:
            await self._cancel_abandoned(released.authorization)
        return True

    async def _cancel_abandoned(self, intent_id: str) -> None:
        """Cancel the uncaptured authorisation of an ended execution (it will never be captured).

        A capture that happened meanwhile is a payment of an ended execution, which the
        orphan check keeps or refunds. A cancel that fails is logged, not retried: the
        holds are back already, and the authorisation expires on its own
        (https://docs.stripe.com/payments/place-a-hold-on-a-payment-method).
        """
        bound = log.bind(payment_intent=intent_id)
        try:
            intent = await self.stripe.retrieve_payment_intent(intent_id)
            if intent.status != AUTHORIZED:
                bound.info("payment_intent.authorization_not_held", status=intent.status)
                return
            await self.stripe.cancel_payment_intent(
                intent_id,
                idempotency_key=abandoned_authorization_key(intent_id),
                cancellation_reason=ABANDONED,
            )
        except stripe.InvalidRequestError as exc:
            if exc.code != UNEXPECTED_STATE:
                bound.error("payment_intent.authorization_cancel_failed", error=str(exc))
            else:
                bound.info("payment_intent.authorization_not_held")
            return
        except stripe.StripeError as exc:
            bound.error("payment_intent.authorization_cancel_failed", error=str(exc))
            return
        bound.info("payment_intent.canceled", reason=ABANDONED)

    async def create_payment(self, task: CreatePaymentTask, message: Message) -> str:
        """One PaymentIntent per attempt; the webhook, not the worker, reports its success."""
        request = _payment_request(task)
        structlog.contextvars.bind_contextvars(order_id=request.order_id)
        previous = task.previous_decline.payment_intent_id
        if previous is not None:
            declined = await self._close_declined(task, previous)
            if declined.status == PAID:
                # The customer paid the declined attempt after all (Stripe leaves it open
                # for another payment method): that payment is this attempt's outcome.
                log.info("payment_intent.adopted", payment_intent=declined.id, declined_before=True)
                await self._succeed(task.task_token, _payment_outcome(declined))
                return "adopted_paid"
            await self._reserve_retry(task, declined)
        sealed = payment_metadata(task, request, self.token_keys, livemode=self.livemode)
        params = payment_intent_params(task, request, sealed)
        if self.clock() - message.sent_at_s > self.idempotency_horizon_s:
            # Stripe may have pruned the idempotency key of a create sent this long ago:
            # the key alone no longer guards against a second PaymentIntent.
            if await self.callbacks.heartbeat(task.task_token) is CallbackResult.ALREADY_CLOSED:
                log.info("task.stale", age_s=round(self.clock() - message.sent_at_s))
                return "stale"
            existing = await self.stripe.find_attempt(task.execution_id, task.attempt)
            if existing:
                return _adopt(existing)
        try:
            intent = await self.stripe.create_payment_intent(
                params, idempotency_key=task.idempotency_key
            )
        except stripe.IdempotencyError:
            # Same key, other parameters: the create went through before with other
            # metadata (a token key rotated within the key's 24 h, a deploy that changed
            # the request). That PaymentIntent is this attempt's: adopt it.
            existing = await self.stripe.find_attempt(task.execution_id, task.attempt)
            if not existing:
                raise  # not searchable yet (search lags writes): retried later
            return _adopt(existing)
        except CardError as exc:
            return await self._declined(task, exc)
        replayed = intent.last_response is not None and (
            intent.last_response.headers.get("Idempotent-Replayed") == "true"
        )
        log.info(
            "payment_intent.created",
            payment_intent=intent.id,
            status=intent.status,
            replayed=replayed,
        )
        if intent.status == AUTHORIZED:
            # A card authorises synchronously: resume the wait now. The webhook's
            # `payment_intent.amount_capturable_updated` is the second path; the later one
            # finds the task closed.
            await self._succeed(task.task_token, _authorized_outcome(intent))
            log.info("payment_intent.authorized", payment_intent=intent.id)
            return "authorized"
        if intent.status in PENDING:
            # The outcome comes later (a bank debit settling, a customer authenticating):
            # a heartbeat now tells a HeartbeatSeconds window the payment is under way.
            await self.callbacks.heartbeat(task.task_token)
            log.info(
                "payment_intent.heartbeat",
                payment_intent=intent.id,
                status=intent.status,
                **_next_action(intent),
            )
        return "replayed" if replayed else "created"

    async def _declined(self, task: CreatePaymentTask, exc: CardError) -> str:
        """The charge was declined: count it against the card, then act on the verdict.

        `ask_customer` leaves the task open: the customer confirms this PaymentIntent
        (the webhook tells them, and keeps the wait alive), and its token resumes the
        execution. Anything else fails the task with the verdict in the cause.
        """
        error = exc.error
        intent_id = payment_intent_id(exc)
        verdict = declines.decide(error)
        card = Card.of(getattr(error, "payment_method", None))
        if card is not None:
            recorded = await self.card_budget.record_decline(card, _attempt_key(task))
            if verdict.retryable and not recorded.room_for_another:
                verdict = declines.over_budget()
        log.info(
            "payment_intent.declined",
            payment_intent=intent_id,
            verdict=verdict.kind,
            reason=verdict.reason,
        )
        if verdict.kind == declines.ASK_CUSTOMER:
            return "ask_customer"
        raise TaskFailure(causes.declined(intent_id, error, verdict=verdict))

    async def _reserve_retry(self, task: CreatePaymentTask, declined: PaymentIntent) -> None:
        """Count this retry against the card before it is charged; past the budget, fail.

        The card is the one the previous attempt's decline names (the same payment
        method is charged again); a decline that names no card is not budgeted.
        """
        error = declined.last_payment_error
        card = Card.of(getattr(error, "payment_method", None))
        if card is None or await self.card_budget.reserve(card, _attempt_key(task)):
            return
        log.info("payment_intent.retry_refused", card_brand=card.brand, declined=declined.id)
        raise TaskFailure(causes.declined(declined.id, error, verdict=declines.over_budget()))

    async def cancel_payment(self, task: CancelPaymentTask) -> str:
        """The payment wait timed out: cancel the attempt's PaymentIntent, or report it paid."""
        intents = await self.stripe.find_attempt(task.execution_id, task.attempt)
        paid = next((pi for pi in intents if pi.status == PAID), None)
        if paid is not None:
            outcome = CancelOutcome(
                outcome="succeeded", payment_intent_id=paid.id, payment=_payment_outcome(paid)
            )
        elif (
            processing := next((pi for pi in intents if pi.status == "processing"), None)
        ) is not None:
            # A bank debit can settle weeks later: neither cancel (Stripe refuses while
            # processing) nor hold the message until the DLQ; the state machine asks again.
            outcome = CancelOutcome(outcome="processing", payment_intent_id=processing.id)
        elif not intents:
            outcome = CancelOutcome(outcome="not_found")
        else:
            for intent in intents:
                if intent.status != "canceled":
                    await self.stripe.cancel_payment_intent(
                        intent.id, idempotency_key=task.idempotency_key(intent.id)
                    )
                    log.info("payment_intent.canceled", payment_intent=intent.id)
            outcome = CancelOutcome(outcome="canceled", payment_intent_id=intents[0].id)
        await self._succeed(task.task_token, outcome)
        return outcome.outcome

    async def capture_payment(self, task: CapturePaymentTask) -> str:
        """Capture the recorded order's authorisation in full, once, before its deadline.

        The deadline is the authorisation's time plus the request's capture deadline, or
        the card's `capture_before` when Stripe gives it and it is sooner
        (https://docs.stripe.com/payments/place-a-hold-on-a-payment-method). Past it, or
        when Stripe canceled the authorisation as expired, the task fails
        `Payment.AuthorizationExpired` and the state machine cancels what is left.
        """
        request = _payment_request(task)
        structlog.contextvars.bind_contextvars(
            order_id=request.order_id, payment_intent=task.payment_intent_id
        )
        intent = await self.stripe.retrieve_with_charge(task.payment_intent_id)
        if intent.status == AUTHORIZED:
            deadline = capture_deadline(intent, request.capture_deadline)
            if self.clock() >= deadline:
                log.info("payment_intent.authorization_expired", deadline=deadline)
                raise TaskFailure(causes.authorization_expired(intent.id, deadline=deadline))
            try:
                intent = await self.stripe.capture_payment_intent(
                    intent.id, idempotency_key=task.idempotency_key
                )
            except stripe.InvalidRequestError as exc:
                if exc.code != UNEXPECTED_STATE:
                    raise
                # Captured or canceled between the read and the capture: read it again.
                intent = await self.stripe.retrieve_payment_intent(intent.id)
            log.info("payment_intent.captured", status=intent.status)
        if intent.status == PAID:
            await self._succeed(task.task_token, _payment_outcome(intent))
            return "captured"
        reason = _cancellation_reason(intent)
        if intent.status == "canceled" and reason in EXPIRED_REASONS:
            raise TaskFailure(causes.authorization_expired(intent.id, cancellation_reason=reason))
        if intent.status == "canceled":
            raise TaskFailure(causes.canceled(intent.id, reason))
        # Not an authorisation any more, nor paid (a capture still processing): ask again.
        raise RuntimeError(f"payment intent {intent.id} is {intent.status} after the capture")

    async def cancel_authorization(self, task: CancelAuthorizationTask) -> str:
        """Cancel the authorisation (nothing is charged), or report the capture that happened.

        https://docs.stripe.com/api/payment_intents/cancel: a `requires_capture`
        PaymentIntent is canceled and its `amount_capturable` released.
        """
        structlog.contextvars.bind_contextvars(payment_intent=task.payment_intent_id)
        intent = await self.stripe.retrieve_payment_intent(task.payment_intent_id)
        if intent.status in CANCELABLE:
            try:
                intent = await self.stripe.cancel_payment_intent(
                    intent.id, idempotency_key=task.idempotency_key
                )
                log.info("payment_intent.canceled", payment_intent=intent.id, reason=task.reason)
            except stripe.InvalidRequestError as exc:
                if exc.code != UNEXPECTED_STATE:
                    raise
                intent = await self.stripe.retrieve_payment_intent(intent.id)
        if intent.status == PAID:
            outcome = CancelOutcome(
                outcome="succeeded", payment_intent_id=intent.id, payment=_payment_outcome(intent)
            )
        else:
            outcome = CancelOutcome(outcome="canceled", payment_intent_id=intent.id)
        await self._succeed(task.task_token, outcome)
        return "authorization_" + outcome.outcome

    async def refund_payment(self, task: RefundPaymentTask) -> str:
        """Refund in full, once: a refund made before (even past the key's 24 h) is reused."""
        structlog.contextvars.bind_contextvars(
            order_id=task.order_id, payment_intent=task.payment_intent_id
        )
        refund, created = await self._refund(
            Refunding(task.payment_intent_id, task.order_id, task.execution_id, task.reason),
            idempotency_key=task.idempotency_key,
        )
        await self._succeed(
            task.task_token,
            RefundOutcome(
                refund_id=refund.id,
                status=refund.status or "pending",
                amount=refund.amount,
                currency=refund.currency,
            ),
        )
        return "refunded" if created else "refund_found"

    async def check_payment(self, task: CheckPaymentTask) -> str:
        """A payment succeeded with its task closed: keep it if its execution does, else refund.

        An orphan is a successful PaymentIntent whose execution ended without it in its
        output. While the execution runs, the payment may still be its own (the cancel
        after a timeout adopts it, and so does the next attempt after a decline that the
        customer paid): it is looked at again later, until the execution ends.
        """
        structlog.contextvars.bind_contextvars(
            order_id=task.order_id, payment_intent=task.payment_intent_id, event_id=task.event_id
        )
        try:
            execution = await self.executions.describe(task.execution_id)
        except NoSuchExecution:
            # Refunding on the word of a missing execution could refund every payment of
            # a misconfigured worker: a person looks at the dead-letter queue instead.
            raise PoisonMessage("the payment's execution does not exist") from None
        if not execution.ended:
            await self.requeue.send(dump_json(task), delay_s=self.check_again_s)
            log.info("payment.check_again", execution_status=execution.status)
            return "check_again"
        if execution.kept_payment_intent_id == task.payment_intent_id:
            log.info("payment.kept", execution_status=execution.status)
            return "kept"
        if execution.status == "SUCCEEDED" and execution.kept_payment_intent_id is None:
            # Every success names its payment (the Paid state): an output without one is
            # not paystep's to judge, and refunding a kept payment cannot be undone.
            raise PoisonMessage("the succeeded execution's output names no payment")
        intent = await self.stripe.retrieve_payment_intent(task.payment_intent_id)
        if intent.status != PAID:
            log.info("payment.not_paid", status=intent.status)
            return "not_paid"
        log.warning(
            "payment.orphan",
            execution_status=execution.status,
            kept_payment_intent=execution.kept_payment_intent_id,
        )
        reason = f"orphan: execution {execution.status.lower()}" + (
            ", another payment kept" if execution.kept_payment_intent_id else ""
        )
        paid_for = metadata.ids(intent.to_dict().get("metadata") or {})
        refunding = Refunding(
            task.payment_intent_id,
            task.order_id or paid_for.get("order_id"),
            task.execution_id,
            reason,
        )
        try:
            _, created = await self._refund(refunding, idempotency_key=task.refund_idempotency_key)
        except stripe.InvalidRequestError as exc:
            if exc.code == ALREADY_REFUNDED:
                self.metrics.orphans.labels("already_refunded").inc()
                return "already_refunded"
            # Stripe will not refund it (a dispute, a balance too low): a person must.
            self.metrics.orphans.labels("refund_failed").inc()
            self.metrics.refunds_refused.labels(task.type).inc()
            await self.alerts.publish(
                refunding.alert(
                    "refund_failed",
                    amount=intent.amount_received,
                    currency=intent.currency,
                    error=f"{exc.code or exc.http_status}: {exc.user_message or exc}"[:500],
                )
            )
            log.error("refund.refused", code=exc.code, status=exc.http_status)
            return "refund_failed"
        outcome = "refunded" if created else "already_refunded"
        self.metrics.orphans.labels(outcome).inc()
        return outcome

    async def _refund(self, refunding: Refunding, *, idempotency_key: str) -> tuple[Refund, bool]:
        """The PaymentIntent's live refund, made now (True) or found (False), and its alert.

        Both refund paths share the key (`refund:<PaymentIntent>`), so whichever comes
        second finds the first's refund. The refund records its alert in its own
        metadata (`paystep_alert`: pending, then sent): a worker stopped between the
        refund and the alert leaves it pending, and whoever finds it publishes it.
        """
        refunds = await self.stripe.list_refunds(refunding.payment_intent_id)
        refund = next((r for r in refunds if r.status in LIVE_REFUNDS), None)
        if refund is not None:
            log.info("refund.found", refund=refund.id, status=refund.status)
            if (refund.to_dict().get("metadata") or {}).get(ALERT_KEY) == "pending":
                await self._alert_refunded(refunding, refund)
            return refund, False
        value_max = metadata.STRIPE_METADATA_VALUE_MAX_CHARS
        refund_metadata = {
            metadata.EXECUTION_KEY: refunding.execution_id[:value_max],
            "paystep_reason": refunding.reason[:value_max],
            ALERT_KEY: "pending",
        }
        if refunding.order_id:
            refund_metadata[metadata.ORDER_KEY] = refunding.order_id
        refund = await self.stripe.create_refund(
            {"payment_intent": refunding.payment_intent_id, "metadata": refund_metadata},
            idempotency_key=idempotency_key,
        )
        log.info("refund.created", refund=refund.id, status=refund.status, reason=refunding.reason)
        await self._alert_refunded(refunding, refund)
        return refund, True

    async def _alert_refunded(self, refunding: Refunding, refund: Refund) -> None:
        await self.alerts.publish(
            refunding.alert(
                "payment_refunded",
                amount=refund.amount,
                currency=refund.currency,
                refund_id=refund.id,
                refund_status=refund.status,
            )
        )
        await self.stripe.update_refund_metadata(refund.id, {ALERT_KEY: "sent"})

    async def _close_declined(self, task: CreatePaymentTask, intent_id: str) -> PaymentIntent:
        """Cancel the declined attempt's PaymentIntent; the PaymentIntent as it ends (`succeeded`
        if the customer paid it instead).

        Stripe keeps a declined PaymentIntent open (`requires_payment_method`) for the
        customer to pay with another method: left open, it could be paid beside the next
        attempt's. A bank debit still `processing` cannot be canceled; if it succeeds
        later, its execution has moved on without it and it is refunded as an orphan.
        """
        intent = declined = await self.stripe.retrieve_payment_intent(intent_id)
        if intent.status in CANCELABLE:
            try:
                intent = await self.stripe.cancel_payment_intent(
                    intent_id, idempotency_key=task.cancel_idempotency_key(intent_id)
                )
                log.info("payment_intent.canceled", payment_intent=intent_id, declined_before=True)
            except stripe.InvalidRequestError as exc:
                if exc.code != UNEXPECTED_STATE:
                    raise
                # Paid (or canceled) between the read and the cancel: read it again.
                intent = await self.stripe.retrieve_payment_intent(intent_id)
        if intent.status == PAID:
            return intent
        if intent.status != "canceled":
            log.warning(
                "payment_intent.declined_still_open", payment_intent=intent_id, status=intent.status
            )
        # The read before the cancel: it holds the decline (a cancel may render it without).
        return declined

    async def _succeed(
        self,
        token: str,
        outcome: CancelOutcome | RefundOutcome | PaymentOutcome | ReserveOutcome | ReleaseOutcome,
    ) -> None:
        if await self.callbacks.succeed(token, outcome) is CallbackResult.ALREADY_CLOSED:
            log.info("task.already_closed")


def _payment_request(
    task: CreatePaymentTask | ReserveOrderTask | CapturePaymentTask,
) -> PaymentRequest:
    try:
        return task.payment_request()
    except ValidationError as exc:
        raise TaskFailure(causes.invalid_input(describe_validation_error(exc))) from None


def payment_intent_params(
    task: CreatePaymentTask, request: PaymentRequest, sealed_metadata: dict[str, str]
) -> stripe.params.PaymentIntentCreateParams:
    """The one PaymentIntent create of a task; raises `TaskFailure` for what Stripe cannot hold.

    A payment method is confirmed server-side: off-session unless the caller sends a
    `return_url` (the customer is present and may be redirected to authenticate).
    Payment methods are the account's automatic ones, without redirect-based methods
    off-session, or the caller's `payment_method_types`. Since API version 2023-08-16
    automatic payment methods are on by default and a confirm needs a `return_url`,
    `off_session=true` or `allow_redirects=never`
    (https://docs.stripe.com/changelog/2023-08-16/automatic-payment-methods); since
    2026-09-30.endive a list of types goes in `allowed_payment_method_types`
    (https://docs.stripe.com/changelog/endive/2026-09-30/removes-the-payment-method-types-parameter-from-payment-intents-and-setup-intents).
    receipt_email stays out: the receipt goes out through SNS after fulfilment.
    """
    params: stripe.params.PaymentIntentCreateParams = {
        "amount": request.amount,
        "currency": request.currency,
        "metadata": sealed_metadata,
    }
    if request.capture_method == "manual":
        # https://docs.stripe.com/payments/place-a-hold-on-a-payment-method: authorise only.
        params["capture_method"] = "manual"
    if request.customer:
        params["customer"] = request.customer
    if request.payment_method_types:
        params["allowed_payment_method_types"] = list(request.payment_method_types)
    elif request.return_url:
        params["automatic_payment_methods"] = {"enabled": True, "allow_redirects": "always"}
    else:
        params["automatic_payment_methods"] = {"enabled": True, "allow_redirects": "never"}
    if request.payment_method:
        params["payment_method"] = request.payment_method
        params["confirm"] = True
        if request.return_url:
            params["return_url"] = request.return_url
        else:
            params["off_session"] = True
    return params


def payment_metadata(
    task: CreatePaymentTask, request: PaymentRequest, keys: TokenKeys, *, livemode: bool
) -> dict[str, str]:
    """Caller metadata, the ids and the token sealed to this payment; `TaskFailure` if no fit."""
    binding = Binding(
        task.execution_id, str(task.attempt), request.amount, request.currency, livemode
    )
    try:
        return metadata.payment_intent_metadata(
            keys, task.task_token, binding, order_id=request.order_id, caller=request.metadata
        )
    except metadata.MetadataError as exc:
        raise TaskFailure(causes.invalid_input(f"metadata: {exc}")) from None


def _next_action(intent: stripe.PaymentIntent) -> dict[str, str]:
    """What the customer must do (a redirect to authenticate), for the caller waiting on it."""
    # A Stripe object raises on a field its version did not render: read it as a dict.
    action = intent.to_dict().get("next_action") or {}
    fields = {"next_action": str(action["type"])} if action.get("type") else {}
    url = (action.get("redirect_to_url") or {}).get("url")
    if url:
        fields["redirect_url"] = str(url)
    return fields


def _adopt(intents: list[stripe.PaymentIntent]) -> str:
    """A PaymentIntent of this attempt exists already: keep it, create nothing."""
    declined = [pi for pi in intents if pi.last_payment_error is not None]
    live = [pi for pi in intents if pi.last_payment_error is None and pi.status != "canceled"]
    if live or not declined:
        intent = (live or intents)[0]
        log.info("payment_intent.adopted", payment_intent=intent.id, status=intent.status)
        return "adopted"
    # It was declined and the failure never reached Step Functions: report it now, or the
    # execution would wait for a webhook that already came. One the customer must fix keeps
    # waiting for them.
    error = declined[0].last_payment_error
    if declines.decide(error).kind == declines.ASK_CUSTOMER:
        log.info("payment_intent.adopted", payment_intent=declined[0].id, status="ask_customer")
        return "ask_customer"
    raise TaskFailure(causes.declined(declined[0].id, error))


def _attempt_key(task: CreatePaymentTask) -> str:
    return attempt_key(task.execution_id, task.attempt)


def _payment_outcome(intent: stripe.PaymentIntent) -> PaymentOutcome:
    charge = intent.latest_charge
    return PaymentOutcome(
        payment_intent_id=intent.id,
        status="succeeded",
        amount_received=intent.amount_received,
        currency=intent.currency,
        latest_charge=charge if isinstance(charge, str) or charge is None else charge.id,
    )


def _authorized_outcome(intent: stripe.PaymentIntent) -> PaymentOutcome:
    fields = intent.to_dict()
    capturable = fields.get("amount_capturable")
    return PaymentOutcome(
        payment_intent_id=intent.id,
        status="requires_capture",
        amount_received=int(fields.get("amount_received") or 0),
        amount_capturable=intent.amount if capturable is None else int(capturable),
        currency=intent.currency,
        latest_charge=_charge_id(fields.get("latest_charge")),
    )


def capture_deadline(intent: stripe.PaymentIntent, deadline_s: int) -> int:
    """Unix seconds after which paystep no longer captures the authorisation.

    The authorisation's time is its charge's `created` (the PaymentIntent's without one);
    the card's `capture_before` wins when it is sooner
    (https://docs.stripe.com/api/charges/object#charge_object-payment_method_details-card-capture_before).
    """
    fields = intent.to_dict()
    charge = fields.get("latest_charge")
    charge = charge if isinstance(charge, dict) else {}
    authorized_at = int(charge.get("created") or fields.get("created") or 0)
    deadline = authorized_at + deadline_s
    card = (charge.get("payment_method_details") or {}).get("card") or {}
    capture_before = card.get("capture_before")
    if isinstance(capture_before, int):
        deadline = min(deadline, capture_before)
    return deadline


def _cancellation_reason(intent: stripe.PaymentIntent) -> str | None:
    reason = intent.to_dict().get("cancellation_reason")
    return reason if isinstance(reason, str) else None


def _charge_id(charge: object) -> str | None:
    if isinstance(charge, dict):
        found = charge.get("id")
        return found if isinstance(found, str) else None
    return charge if isinstance(charge, str) else None
