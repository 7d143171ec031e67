"""Manual capture in the worker, in-process, on the fake Stripe's HTTP API.

GIVEN the worker's handlers with a real Stripe client on the fake Stripe and an injected
clock
WHEN a manual-capture payment is created, captured, or its authorisation canceled
THEN the create resumes the task as authorised, the capture takes the whole amount once
before its deadline and never after it, and a cancel releases the authorisation or
reports the capture that happened.

The Stripe rules these stand for: a manual-capture card payment is authorised at once
(`requires_capture`, https://docs.stripe.com/payments/place-a-hold-on-a-payment-method),
its charge's `payment_method_details.card.capture_before` says when the authorisation
expires (https://docs.stripe.com/api/charges/object#charge_object-payment_method_details-card-capture_before),
only `requires_capture` can be captured (https://docs.stripe.com/api/payment_intents/capture),
and Stripe cancels an expired authorisation itself with `cancellation_reason` `automatic`
(https://docs.stripe.com/api/payment_intents/object#payment_intent_object-cancellation_reason).
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import Any

import pytest

from paystep_local.fake_stripe import FakeStripe
from statemachine import errors
from statemachine.models import (
    CancelAuthorizationTask,
    CancelOutcome,
    CapturePaymentTask,
    CreatePaymentTask,
    PaymentOutcome,
)
from tests.worker.test_money_rule import EXECUTION, Recorded, fake, handlers, recorded
from worker.errors import TaskFailure
from worker.handlers import Handlers
from worker.queue import Message

__all__ = ["fake", "handlers", "recorded"]

CAPTURE = "POST /v1/payment_intents/{id}/capture"
REQUEST = {"order_id": "ord_capture", "amount": 1999, "currency": "usd"}


def _authorization(fake: FakeStripe, **fields: Any) -> dict[str, Any]:
    return fake.put_payment_intent(
        **{
            "status": "requires_capture",
            "amount": 1999,
            "amount_capturable": 1999,
            "currency": "usd",
            "capture_method": "manual",
            "latest_charge": "ch_auth",
            "metadata": {"order_id": "ord_capture", "paystep_execution": EXECUTION},
            **fields,
        }
    )


def _capture(pi_id: str, **request: Any) -> CapturePaymentTask:
    return CapturePaymentTask(
        type="capture_payment",
        task_token="token-" + uuid.uuid4().hex,
        execution_id=f"{EXECUTION}_{uuid.uuid4().hex[:8]}",
        payment_intent_id=pi_id,
        request={**REQUEST, "capture_method": "manual", **request},
    )


def _at(handlers: Handlers, now: float) -> Handlers:
    return dataclasses.replace(handlers, clock=lambda: now)


async def test_a_manual_create_is_authorised_and_resumes_the_task_at_once(
    handlers: Handlers, fake: FakeStripe, recorded: Recorded
) -> None:
    task = CreatePaymentTask(
        type="create_payment",
        task_token="token-" + uuid.uuid4().hex,
        execution_id=f"{EXECUTION}_{uuid.uuid4().hex[:8]}",
        state="CreatePayment",
        attempt=1,
        request={**REQUEST, "capture_method": "manual", "payment_method": "pm_card_visa"},
    )

    assert await handlers(task, Message("m", "rh", "{}", 1, time.time())) == "authorized"

    [outcome] = recorded.succeeded
    assert isinstance(outcome, PaymentOutcome)
    assert (outcome.status, outcome.amount_capturable, outcome.amount_received) == (
        "requires_capture",
        1999,
        0,
    )
    created = fake.requests("POST /v1/payment_intents")[-1]
    assert created.params is not None and created.params["capture_method"] == "manual"


async def test_a_capture_takes_the_whole_amount_once(
    handlers: Handlers, fake: FakeStripe, recorded: Recorded
) -> None:
    pi = _authorization(fake)
    task = _capture(pi["id"])

    assert await handlers(task, Message("m", "rh", "{}", 1, time.time())) == "captured"
    # A redelivery finds it captured: no second capture.
    assert await handlers(task, Message("m", "rh", "{}", 2, time.time())) == "captured"

    first, second = recorded.succeeded
    assert isinstance(first, PaymentOutcome) and first == second
    assert (first.status, first.amount_received) == ("succeeded", 1999)
    captures = [r for r in fake.requests(CAPTURE) if r.idempotency_key == task.idempotency_key]
    assert len(captures) == 1


async def test_a_capture_past_the_deadline_is_not_made_and_fails_authorization_expired(
    handlers: Handlers, fake: FakeStripe
) -> None:
    pi = _authorization(fake)
    task = _capture(pi["id"], capture_deadline_s=60)

    with pytest.raises(TaskFailure) as failed:
        await _at(handlers, pi["created"] + 60)(task, Message("m", "rh", "{}", 1, time.time()))

    assert failed.value.failure.error == errors.AUTHORIZATION_EXPIRED
    assert json.loads(failed.value.failure.cause)["deadline"] == pi["created"] + 60
    assert not [r for r in fake.requests(CAPTURE) if r.idempotency_key == task.idempotency_key]
    assert (
        await _at(handlers, pi["created"] + 59)(task, Message("m", "rh", "{}", 1, time.time()))
        == "captured"
    )


async def test_the_cards_capture_before_wins_when_sooner(
    handlers: Handlers, fake: FakeStripe
) -> None:
    now = int(time.time())
    charge = {
        "id": "ch_soon",
        "object": "charge",
        "created": now,
        "payment_method_details": {"type": "card", "card": {"capture_before": now + 30}},
    }
    pi = _authorization(fake, latest_charge=charge)
    # The default deadline (5 days) is far; the card's is in 30 s.
    task = _capture(pi["id"])

    with pytest.raises(TaskFailure) as failed:
        await _at(handlers, now + 31)(task, Message("m", "rh", "{}", 1, time.time()))

    assert json.loads(failed.value.failure.cause)["deadline"] == now + 30


async def test_an_authorisation_stripe_expired_fails_authorization_expired(
    handlers: Handlers, fake: FakeStripe
) -> None:
    pi = _authorization(fake)
    fake.expire_authorization(pi["id"])

    with pytest.raises(TaskFailure) as failed:
        await handlers(_capture(pi["id"]), Message("m", "rh", "{}", 1, time.time()))

    assert failed.value.failure.error == errors.AUTHORIZATION_EXPIRED
    assert json.loads(failed.value.failure.cause)["cancellation_reason"] == "automatic"


async def test_cancel_authorization_releases_it_or_reports_the_capture(
    handlers: Handlers, fake: FakeStripe, recorded: Recorded
) -> None:
    held, captured = _authorization(fake), _authorization(fake)
    fake.update_payment_intent(
        captured["id"], status="succeeded", amount_received=1999, amount_capturable=0
    )

    for pi in (held, captured):
        task = CancelAuthorizationTask(
            type="cancel_authorization",
            task_token="token-" + uuid.uuid4().hex,
            execution_id=EXECUTION,
            payment_intent_id=pi["id"],
            reason=errors.UNFULFILLABLE,
        )
        await handlers(task, Message("m", "rh", "{}", 1, time.time()))

    canceled, kept = recorded.succeeded
    assert isinstance(canceled, CancelOutcome) and isinstance(kept, CancelOutcome)
    assert canceled.outcome == "canceled"
    assert next(pi for pi in fake.intents() if pi["id"] == held["id"])["status"] == "canceled"
    assert "payment_intent.canceled" in fake.event_types(held["id"])
    assert kept.outcome == "succeeded" and kept.payment is not None
    assert kept.payment.payment_intent_id == captured["id"]
