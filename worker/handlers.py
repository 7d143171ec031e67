"""The three tasks: create, cancel and refund a payment.

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
from typing import Final, Literal

import stripe
import structlog
from pydantic import ValidationError

from statemachine import causes, metadata
from statemachine.callbacks import CallbackResult, Callbacks
from statemachine.models import (
    CancelOutcome,
    CancelPaymentTask,
    CreatePaymentTask,
    PaymentOutcome,
    PaymentRequest,
    RefundOutcome,
    RefundPaymentTask,
    Task,
    describe_validation_error,
)
from statemachine.seal import Binding, TokenKeys
from worker.errors import TaskFailure
from worker.queue import Message
from worker.stripe_api import StripeApi

log = structlog.get_logger("paystep.worker")

PAID: Final = frozenset({"succeeded", "requires_capture"})
PENDING: Final = frozenset({"processing", "requires_action"})
LIVE_REFUNDS: Final = frozenset({"succeeded", "pending", "requires_action"})


@dataclass(frozen=True)
class Handlers:
    stripe: StripeApi
    callbacks: Callbacks
    idempotency_horizon_s: float
    token_keys: TokenKeys
    # The mode of the Stripe key: sealed into the token, as the events will carry it.
    livemode: bool
    clock: Callable[[], float] = time.time

    async def __call__(self, task: Task, message: Message) -> str:
        match task:
            case CreatePaymentTask():
                return await self.create_payment(task, message)
            case CancelPaymentTask():
                return await self.cancel_payment(task)
            case RefundPaymentTask():
                return await self.refund_payment(task)

    async def create_payment(self, task: CreatePaymentTask, message: Message) -> str:
        """One PaymentIntent per attempt; the webhook, not the worker, reports its success."""
        request = _payment_request(task)
        structlog.contextvars.bind_contextvars(order_id=request.order_id)
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
        replayed = intent.last_response is not None and (
            intent.last_response.headers.get("Idempotent-Replayed") == "true"
        )
        log.info(
            "payment_intent.created",
            payment_intent=intent.id,
            status=intent.status,
            replayed=replayed,
        )
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

    async def cancel_payment(self, task: CancelPaymentTask) -> str:
        """The payment wait timed out: cancel the attempt's PaymentIntent, or report it paid."""
        intents = await self.stripe.find_attempt(task.execution_id, task.attempt)
        paid = next((pi for pi in intents if pi.status in PAID), None)
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

    async def refund_payment(self, task: RefundPaymentTask) -> str:
        """Refund in full, once: a refund made before (even past the key's 24 h) is reused."""
        structlog.contextvars.bind_contextvars(
            order_id=task.order_id, payment_intent=task.payment_intent_id
        )
        refunds = await self.stripe.list_refunds(task.payment_intent_id)
        refund = next((r for r in refunds if r.status in LIVE_REFUNDS), None)
        outcome = "refund_found"
        if refund is None:
            refund = await self.stripe.create_refund(
                {
                    "payment_intent": task.payment_intent_id,
                    "metadata": {
                        metadata.ORDER_KEY: task.order_id,
                        metadata.EXECUTION_KEY: task.execution_id[
                            : metadata.STRIPE_METADATA_VALUE_MAX_CHARS
                        ],
                        "paystep_reason": task.reason,
                    },
                },
                idempotency_key=task.idempotency_key,
            )
            outcome = "refunded"
            log.info("refund.created", refund=refund.id, status=refund.status)
        await self._succeed(
            task.task_token,
            RefundOutcome(
                refund_id=refund.id,
                status=refund.status or "pending",
                amount=refund.amount,
                currency=refund.currency,
            ),
        )
        return outcome

    async def _succeed(self, token: str, outcome: CancelOutcome | RefundOutcome) -> None:
        if await self.callbacks.succeed(token, outcome) is CallbackResult.ALREADY_CLOSED:
            log.info("task.already_closed")


def _payment_request(task: CreatePaymentTask) -> PaymentRequest:
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
    # execution would wait for a webhook that already came.
    raise TaskFailure(causes.declined(declined[0].id, declined[0].last_payment_error))


def _payment_outcome(intent: stripe.PaymentIntent) -> PaymentOutcome:
    charge = intent.latest_charge
    status: Literal["succeeded", "requires_capture"] = (
        "requires_capture" if intent.status == "requires_capture" else "succeeded"
    )
    return PaymentOutcome(
        payment_intent_id=intent.id,
        status=status,
        amount_received=intent.amount_received,
        currency=intent.currency,
        latest_charge=charge if isinstance(charge, str) or charge is None else charge.id,
    )
