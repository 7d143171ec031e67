"""The worker's part of the money rule, in-process, on the fake Stripe's HTTP API.

GIVEN the worker's handlers with a real Stripe client on the fake Stripe, and stand-ins
for what Step Functions says of the execution, the alarm topic and the queue
WHEN the next attempt starts after a decline, or a payment whose task closed is checked
THEN the declined PaymentIntent is canceled (or adopted when it was paid after all),
and a checked payment is kept, looked at again, or refunded once with an alert.

The Stripe rules these stand for: a declined PaymentIntent returns to
`requires_payment_method` and can still be paid
(https://docs.stripe.com/payments/paymentintents/lifecycle); only an unfinished
PaymentIntent can be canceled (https://docs.stripe.com/api/payment_intents/cancel); a
refund of a fully refunded charge is refused with `charge_already_refunded`
(https://docs.stripe.com/error-codes#charge-already-refunded).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import stripe
from prometheus_client import generate_latest
from pydantic import BaseModel

from paystep_common.limiter import Budget
from paystep_local.fake_stripe import FakeStripe, Fault
from paystep_local.prometheus import metric
from statemachine.callbacks import CallbackResult
from statemachine.executions import Execution, NoSuchExecution
from statemachine.models import (
    CheckPaymentTask,
    CreatePaymentTask,
    PaymentOutcome,
    PreviousDecline,
)
from statemachine.seal import TokenKeys, new_key
from tests.worker.support import UnlimitedCards
from worker.alerts import RefundAlert
from worker.errors import PoisonMessage
from worker.handlers import Handlers
from worker.metrics import Metrics
from worker.queue import Message
from worker.stripe_api import StripeApi

EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:paystep-payment:ord_money"
CREATE = "POST /v1/payment_intents"
REFUND = "POST /v1/refunds"
CANCEL = "POST /v1/payment_intents/{id}/cancel"


@dataclass
class Recorded:
    succeeded: list[BaseModel] = field(default_factory=list)
    alerts: list[RefundAlert] = field(default_factory=list)
    requeued: list[tuple[str, int]] = field(default_factory=list)
    execution: Execution | None = None

    # Callbacks
    async def succeed(self, token: str, output: BaseModel) -> CallbackResult:
        self.succeeded.append(output)
        return CallbackResult.DELIVERED

    async def heartbeat(self, token: str) -> CallbackResult:
        return CallbackResult.DELIVERED

    # Alerts
    async def publish(self, alert: RefundAlert) -> None:
        self.alerts.append(alert)

    # Requeue
    async def send(self, body: str, *, delay_s: int = 0) -> None:
        self.requeued.append((body, delay_s))

    # Executions
    async def describe(self, execution_arn: str) -> Execution:
        if self.execution is None:
            raise NoSuchExecution(execution_arn)
        return self.execution


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeStripe]:
    with FakeStripe().running_in_thread() as fake_stripe:
        yield fake_stripe


@pytest.fixture
def recorded() -> Recorded:
    return Recorded()


@pytest.fixture
def handlers(fake: FakeStripe, recorded: Recorded) -> Handlers:
    client = stripe.StripeClient("sk_test_money", base_addresses={"api": fake.url})
    metrics = Metrics()
    return Handlers(
        StripeApi(client, Budget(account_per_s=1000, endpoint_per_s=1000), metrics),
        recorded,  # type: ignore[arg-type]
        idempotency_horizon_s=23 * 3600,
        token_keys=TokenKeys.parse(new_key()),
        livemode=False,
        executions=recorded,  # type: ignore[arg-type]
        alerts=recorded,  # type: ignore[arg-type]
        requeue=recorded,
        metrics=metrics,
        check_again_s=7,
        orders=None,  # type: ignore[arg-type]  # no order task here
        card_budget=UnlimitedCards(),  # type: ignore[arg-type]
    )


def _orphans(handlers: Handlers, outcome: str) -> float:
    text = generate_latest(handlers.metrics.registry).decode()
    return metric(text, "paystep_orphan_payments_total", default=0, outcome=outcome)


def _next_attempt(previous: str) -> CreatePaymentTask:
    return CreatePaymentTask(
        type="create_payment",
        task_token="token-" + uuid.uuid4().hex,
        # An execution of its own: each test's create has its own idempotency key.
        execution_id=f"{EXECUTION}_{uuid.uuid4().hex[:8]}",
        state="CreatePayment",
        attempt=2,
        request={
            "order_id": "ord_money",
            "amount": 1999,
            "currency": "usd",
            "payment_method": "pm_card_visa",
        },
        previous_decline=PreviousDecline(payment_intent_id=previous),
    )


def _message() -> Message:
    return Message("m", "rh", "{}", 1, time.time())


def _declined(fake: FakeStripe) -> dict[str, Any]:
    return fake.put_payment_intent(
        status="requires_payment_method",
        amount=1999,
        currency="usd",
        metadata={"order_id": "ord_money", "paystep_execution": EXECUTION},
        last_payment_error={"code": "card_declined", "decline_code": "generic_decline"},
    )


def _stored(fake: FakeStripe, pi_id: str) -> dict[str, Any]:
    return next(pi for pi in fake.intents() if pi["id"] == pi_id)


def _check(pi_id: str) -> CheckPaymentTask:
    return CheckPaymentTask(
        type="check_payment",
        execution_id=EXECUTION,
        payment_intent_id=pi_id,
        order_id="ord_money",
        attempt=1,
        event_id="evt_late",
    )


def _paid(fake: FakeStripe) -> dict[str, Any]:
    return fake.put_payment_intent(
        status="succeeded",
        amount=1999,
        amount_received=1999,
        currency="usd",
        metadata={"order_id": "ord_money", "paystep_execution": EXECUTION},
    )


async def test_the_next_attempt_cancels_the_declined_one_before_creating(
    handlers: Handlers, fake: FakeStripe, recorded: Recorded
) -> None:
    declined = _declined(fake)
    creates = len(fake.requests(CREATE))

    outcome = await handlers.create_payment(_next_attempt(declined["id"]), _message())

    assert outcome == "created"
    assert _stored(fake, declined["id"])["status"] == "canceled"
    assert len(fake.requests(CREATE)) == creates + 1
    assert recorded.succeeded == []


async def test_a_declined_attempt_paid_meanwhile_is_adopted_and_nothing_is_created(
    handlers: Handlers, fake: FakeStripe, recorded: Recorded
) -> None:
    declined = _declined(fake)
    fake.update_payment_intent(
        declined["id"], status="succeeded", amount_received=1999, last_payment_error=None
    )
    creates = len(fake.requests(CREATE))

    outcome = await handlers.create_payment(_next_attempt(declined["id"]), _message())

    assert outcome == "adopted_paid"
    assert len(fake.requests(CREATE)) == creates
    assert recorded.succeeded == [
        PaymentOutcome(
            payment_intent_id=declined["id"],
            status="succeeded",
            amount_received=1999,
            currency="usd",
        )
    ]


async def test_a_declined_attempt_canceled_already_is_left_as_it_is(
    handlers: Handlers, fake: FakeStripe
) -> None:
    # A redelivered create: the first delivery canceled it, a second cancel would be refused.
    declined = _declined(fake)
    fake.update_payment_intent(declined["id"], status="canceled")
    cancels = len(fake.requests(CANCEL))

    assert await handlers.create_payment(_next_attempt(declined["id"]), _message()) == "created"
    assert len(fake.requests(CANCEL)) == cancels


async def test_a_payment_its_ended_execution_kept_is_kept(
    handlers: Handlers, fake: FakeStripe, recorded: Recorded
) -> None:
    paid = _paid(fake)
    recorded.execution = Execution(EXECUTION, "SUCCEEDED", kept_payment_intent_id=paid["id"])

    assert await handlers.check_payment(_check(paid["id"])) == "kept"
    assert (recorded.alerts, fake.refunds_of(paid["id"])) == ([], [])


@pytest.mark.parametrize(
    ("status", "kept"),
    [("FAILED", None), ("TIMED_OUT", None), ("ABORTED", None), ("SUCCEEDED", "pi_other")],
)
async def test_a_payment_no_ended_execution_keeps_is_refunded_once_with_an_alert(
    handlers: Handlers, fake: FakeStripe, recorded: Recorded, status: str, kept: str | None
) -> None:
    paid = _paid(fake)
    recorded.execution = Execution(EXECUTION, status, kept_payment_intent_id=kept)

    assert await handlers.check_payment(_check(paid["id"])) == "refunded"
    assert await handlers.check_payment(_check(paid["id"])) == "already_refunded"

    [refund] = fake.refunds_of(paid["id"])
    assert (refund["amount"], refund["metadata"]["paystep_alert"]) == (1999, "sent")
    assert refund["metadata"]["paystep_reason"].startswith(f"orphan: execution {status.lower()}")
    [alert] = recorded.alerts
    assert (alert.type, alert.payment_intent_id, alert.refund_id) == (
        "payment_refunded",
        paid["id"],
        refund["id"],
    )
    assert (alert.order_id, alert.execution_id, alert.amount) == ("ord_money", EXECUTION, 1999)
    assert (_orphans(handlers, "refunded"), _orphans(handlers, "already_refunded")) == (1, 1)


async def test_a_payment_of_a_running_execution_is_looked_at_again_later(
    handlers: Handlers, fake: FakeStripe, recorded: Recorded
) -> None:
    paid = _paid(fake)
    recorded.execution = Execution(EXECUTION, "RUNNING")
    task = _check(paid["id"])

    assert await handlers.check_payment(task) == "check_again"

    [(body, delay_s)] = recorded.requeued
    assert (CheckPaymentTask.model_validate_json(body), delay_s) == (task, 7)
    assert fake.refunds_of(paid["id"]) == []


async def test_a_payment_of_an_unknown_execution_goes_to_the_dead_letter_queue(
    handlers: Handlers, fake: FakeStripe, recorded: Recorded
) -> None:
    paid = _paid(fake)

    with pytest.raises(PoisonMessage, match="does not exist"):
        await handlers.check_payment(_check(paid["id"]))
    assert fake.refunds_of(paid["id"]) == []


async def test_a_succeeded_execution_naming_no_payment_is_left_to_a_person(
    handlers: Handlers, fake: FakeStripe, recorded: Recorded
) -> None:
    paid = _paid(fake)
    recorded.execution = Execution(EXECUTION, "SUCCEEDED", kept_payment_intent_id=None)

    with pytest.raises(PoisonMessage, match="names no payment"):
        await handlers.check_payment(_check(paid["id"]))
    assert fake.refunds_of(paid["id"]) == []


async def test_a_refund_stripe_refuses_is_an_alert_for_a_person(
    handlers: Handlers, fake: FakeStripe, recorded: Recorded
) -> None:
    paid = _paid(fake)
    recorded.execution = Execution(EXECUTION, "FAILED")
    fake.add_fault(Fault(path=r"^/v1/refunds$", status=400))

    assert await handlers.check_payment(_check(paid["id"])) == "refund_failed"

    [alert] = recorded.alerts
    assert (alert.type, alert.payment_intent_id, alert.refund_id) == (
        "refund_failed",
        paid["id"],
        None,
    )
    assert alert.error
    assert _orphans(handlers, "refund_failed") == 1
    text = generate_latest(handlers.metrics.registry).decode()
    assert metric(text, "paystep_worker_refunds_refused_total", task="check_payment") == 1


async def test_a_refund_whose_alert_was_never_sent_gets_it_when_found(
    handlers: Handlers, fake: FakeStripe, recorded: Recorded
) -> None:
    # A worker stopped between the refund and its alert: the refund says so.
    paid = _paid(fake)
    refund = fake.put_refund(paid["id"], 1999, metadata={"paystep_alert": "pending"})
    recorded.execution = Execution(EXECUTION, "FAILED")

    assert await handlers.check_payment(_check(paid["id"])) == "already_refunded"
    assert await handlers.check_payment(_check(paid["id"])) == "already_refunded"

    [alert] = recorded.alerts
    assert (alert.type, alert.refund_id) == ("payment_refunded", refund["id"])
    assert fake.refunds_of(paid["id"])[0]["metadata"] == {"paystep_alert": "sent"}


async def test_a_refund_made_by_hand_is_found_without_an_alert(
    handlers: Handlers, fake: FakeStripe, recorded: Recorded
) -> None:
    paid = _paid(fake)
    fake.put_refund(paid["id"], 1999)
    recorded.execution = Execution(EXECUTION, "FAILED")

    assert await handlers.check_payment(_check(paid["id"])) == "already_refunded"
    assert recorded.alerts == []
