"""Manual capture on the whole local stack: authorise, record the order, then capture.

GIVEN moto, the local Stripe, `paystep deploy`, one webhook and one worker as processes
WHEN manual-capture orders run: paid off-session; paid by the customer after the order's
claim was released by hand; authorised, then held past a one-second capture deadline
THEN a paid order has one PaymentIntent, captured in full, and its stock taken once; an
order that fails after its authorisation has the authorisation canceled, no refund
object, and its stock back; a deadline passed ends `Payment.AuthorizationExpired`.

The Stripe rules these stand for: a manual-capture card is authorised at once and held
(`requires_capture`, https://docs.stripe.com/payments/place-a-hold-on-a-payment-method);
Stripe sends `payment_intent.amount_capturable_updated` then
(https://docs.stripe.com/api/events/types#event_types-payment_intent.amount_capturable_updated);
a capture takes the `amount_capturable` (https://docs.stripe.com/api/payment_intents/capture);
a canceled authorisation releases it, nothing is charged and nothing refunded
(https://docs.stripe.com/api/payment_intents/cancel).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from paystep_local.localstack import LocalStack
from paystep_local.polling import eventually_async
from paystep_local.scenarios import Stack
from statemachine import errors
from statemachine.orders import Orders
from tests.support.stacks import deployed_stack, run_scenario

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def capture_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with deployed_stack(tmp_path_factory.mktemp("capture"), (), workers=1) as stack:
        yield stack


async def _manual_order(clients: Stack, stock: int, **extra: Any) -> dict[str, Any]:
    order_id = f"ord_{uuid.uuid4().hex[:10]}"
    await clients.put_stock(f"sku_{order_id}", stock)
    return {
        "order_id": order_id,
        "amount": 1999,
        "currency": "usd",
        "capture_method": "manual",
        "items": [{"sku": f"sku_{order_id}", "quantity": 1}],
        **extra,
    }


async def _waiting_payment_intent(clients: Stack, order_id: str) -> dict[str, Any]:
    """The PaymentIntent the execution waits on for the customer to pay."""
    [pi] = await eventually_async(
        lambda: clients.payment_intents_of(order_id),
        timeout_s=60,
        what="the PaymentIntent the execution waits on",
    )
    return pi


def test_a_manual_capture_order_is_captured_once_and_its_stock_taken_once(
    capture_stack: LocalStack,
) -> None:
    async def scenario(clients: Stack) -> None:
        request = await _manual_order(clients, 3, payment_method="pm_card_visa")
        done = await clients.wait_done(await clients.start(request))

        assert done["status"] == "SUCCEEDED", done
        [pi] = await clients.payment_intents_of(request["order_id"])
        assert (pi["capture_method"], pi["status"], pi["amount_received"]) == (
            "manual",
            "succeeded",
            1999,
        )
        payment = json.loads(done["output"])["payment"]
        assert (payment["payment_intent_id"], payment["status"]) == (pi["id"], "succeeded")
        assert payment["amount_received"] == request["amount"]
        assert await clients.stock_of(f"sku_{request['order_id']}") == 2
        row = await clients.order_row(request["order_id"])
        assert (row["status"], row["payment_intent_id"]) == ("paid", pi["id"])
        assert "claim_state" not in row and "held_items" not in row
        assert await clients.refunds_of(pi["id"]) == []

    run_scenario(capture_stack, scenario)


def test_an_order_that_cannot_be_recorded_after_its_authorisation_cancels_it_no_refund(
    capture_stack: LocalStack,
) -> None:
    async def scenario(clients: Stack) -> None:
        request = await _manual_order(clients, 1)
        arn = await clients.start(request)
        pi = await _waiting_payment_intent(clients, request["order_id"])
        # An operator releases the order's claim while the customer is still paying.
        orders = Orders(
            clients.ddb,
            clients.deployment["orders_table"],
            clients.deployment["inventory_table"],
        )
        assert await orders.release(arn, request["order_id"]) is not None
        authorised = await clients.pay(pi["id"])
        assert authorised["status"] == "requires_capture", authorised

        done = await clients.wait_done(arn)

        assert (done["status"], done["error"]) == ("FAILED", errors.UNFULFILLABLE), done
        [after] = await clients.payment_intents_of(request["order_id"])
        assert (after["status"], after["amount_received"]) == ("canceled", 0)
        assert await clients.refunds_of(pi["id"]) == []
        assert await clients.stock_of(f"sku_{request['order_id']}") == 1

    run_scenario(capture_stack, scenario)


def test_an_authorisation_held_past_its_capture_deadline_is_canceled_and_the_stock_back(
    capture_stack: LocalStack,
) -> None:
    [worker] = capture_stack.services("worker")

    async def scenario(clients: Stack) -> None:
        request = await _manual_order(clients, 1, capture_deadline_s=1)
        arn = await clients.start(request)
        pi = await _waiting_payment_intent(clients, request["order_id"])
        # The worker is held from here: the webhook resumes the authorisation, the order
        # is recorded, and the capture task waits on the queue until the deadline passed.
        os.killpg(worker.process.pid, signal.SIGSTOP)
        try:
            await clients.pay(pi["id"])
            await eventually_async(
                lambda: clients.order_row(request["order_id"]),
                until=lambda row: row.get("status") == "authorized",
                what="the order recorded with its authorisation",
            )
            authorised = await clients.stripe(
                "GET", f"/v1/payment_intents/{pi['id']}?expand[]=latest_charge"
            )
            charge = authorised["latest_charge"]
            deadline = charge["created"] + request["capture_deadline_s"]
            # Waiting past a deadline, not for an event: nothing else can say it passed.
            await asyncio.sleep(max(0.0, deadline - time.time()) + 0.2)
        finally:
            os.killpg(worker.process.pid, signal.SIGCONT)

        done = await clients.wait_done(arn)

        assert (done["status"], done["error"]) == ("FAILED", errors.AUTHORIZATION_EXPIRED), done
        [after] = await clients.payment_intents_of(request["order_id"])
        assert (after["status"], after["amount_received"]) == ("canceled", 0)
        assert await clients.refunds_of(pi["id"]) == []
        assert await clients.stock_of(f"sku_{request['order_id']}") == 1
        assert (await clients.order_row(request["order_id"]))["status"] == "released"

    run_scenario(capture_stack, scenario)
