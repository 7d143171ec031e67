"""The money rule on the whole local stack: no payment kept for a failed order, one for a paid one.

GIVEN moto, the local Stripe (localstripe behind the strict double, whose search lags
new PaymentIntents by longer than the payment wait, as Stripe's may:
https://docs.stripe.com/search#data-freshness), `paystep deploy`, one webhook and one
worker, all as processes
WHEN a customer pays a PaymentIntent its execution no longer waits for (a declined
attempt after the execution failed, or before the retry; an attempt the timeout's
cancel did not find; a stopped execution's), or an order is started twice
THEN every execution that ended keeps exactly the payment in its output, every other
successful PaymentIntent of the order is refunded in full once, and each refund is
published on the alarm topic and counted in `paystep_orphan_payments_total`.

Each test stands for a documented Stripe behaviour: a PaymentIntent whose payment
failed returns to `requires_payment_method` and can be confirmed again with another
payment method (https://docs.stripe.com/payments/paymentintents/lifecycle); a canceled
PaymentIntent cannot be confirmed, and a succeeded one cannot be canceled
(https://docs.stripe.com/api/payment_intents/cancel).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from paystep_local import processes
from paystep_local.localstack import LocalStack
from paystep_local.polling import eventually, eventually_async
from paystep_local.prometheus import metric, scrape
from paystep_local.scenarios import Stack, in_attempt_order
from statemachine import errors
from tests.support.stacks import deployed_stack, run_scenario

pytestmark = pytest.mark.slow


# Two attempts 4 s apart: time for the customer to pay a declined attempt before the retry.
DEPLOY_ARGS = (
    *("--max-attempts", "2", "--retry-backoff-s", "4"),
    *("--payment-timeout-s", "12", "--payment-heartbeat-s", "0", "--settlement-poll-s", "2"),
)
SEARCH_LAG_S = 300.0
DECLINING_CARD = "pm_card_chargeCustomerFail"
AMOUNT = 1999


@pytest.fixture(scope="module")
def money_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    folder = tmp_path_factory.mktemp("money")
    with deployed_stack(folder, DEPLOY_ARGS, workers=0, search_lag_s=SEARCH_LAG_S) as stack:
        # A payment whose execution still runs is looked at again after a second.
        processes.start_worker(stack, {"PAYSTEP_WORKER_CHECK_AGAIN_S": "1"}, ready_path="/healthz")
        yield stack


def _worker_metric(stack: LocalStack, name: str, **labels: str) -> float:
    [worker] = stack.services("worker")
    return metric(scrape(worker.urls["metrics"]), name, default=0, **labels)


def _order(**extra: Any) -> dict[str, Any]:
    return {
        "order_id": f"ord_{uuid.uuid4().hex[:10]}",
        "amount": AMOUNT,
        "currency": "usd",
        **extra,
    }


async def _intents(clients: Stack, order_id: str, count: int) -> list[dict[str, Any]]:
    async def listed() -> list[dict[str, Any]]:
        found = await clients.payment_intents_of(order_id)
        return found if len(found) >= count else []

    return in_attempt_order(
        await eventually_async(listed, timeout_s=60, what=f"{count} PaymentIntents of {order_id}")
    )


async def _pay(clients: Stack, pi_id: str) -> None:
    paid = await clients.pay(pi_id)
    assert paid["status"] == "succeeded", paid


async def _refunded_with_alert(clients: Stack, order_id: str, pi_id: str) -> dict[str, Any]:
    """The one full refund of `pi_id` and its alert on the alarm topic."""

    async def alerted() -> list[dict[str, Any]]:
        return [
            m
            for m in clients.messages(order_id)
            if m.get("type") == "payment_refunded" and m.get("payment_intent_id") == pi_id
        ]

    [alert] = await eventually_async(alerted, timeout_s=60, what=f"the refund alert of {pi_id}")
    # The refund records that its alert is out (a stopped worker would leave it pending).
    refunds = await eventually_async(
        lambda: clients.refunds_of(pi_id),
        until=lambda found: all(r["metadata"].get("paystep_alert") == "sent" for r in found),
        what=f"the refund of {pi_id} marked alerted",
    )
    assert [(r["amount"], r["id"]) for r in refunds] == [(AMOUNT, alert["refund_id"])]
    assert (alert["order_id"], alert["amount"], alert["currency"]) == (order_id, AMOUNT, "usd")
    return alert


async def _wait_done(clients: Stack, arn: str) -> dict[str, Any]:
    described = await clients.wait_done(arn, timeout_s=90)
    assert described["status"] != "RUNNING", f"{arn} still running"
    return described


def test_a_declined_attempt_paid_after_the_execution_failed_is_refunded(
    money_stack: LocalStack,
) -> None:
    refunded_before = _worker_metric(
        money_stack, "paystep_orphan_payments_total", outcome="refunded"
    )

    async def scenario(clients: Stack) -> None:
        request = _order(payment_method=DECLINING_CARD)
        arn = await clients.start(request)
        done = await _wait_done(clients, arn)
        assert (done["status"], done["error"]) == ("FAILED", errors.DECLINED)
        first, last = await _intents(clients, request["order_id"], 2)
        # The retry canceled the first attempt: nobody can pay it any more.
        assert (first["status"], last["status"]) == ("canceled", "requires_payment_method")

        await _pay(clients, last["id"])

        alert = await _refunded_with_alert(clients, request["order_id"], last["id"])
        assert alert["execution_id"] == arn and alert["reason"].startswith("orphan")

    run_scenario(money_stack, scenario)
    refunded = _worker_metric(money_stack, "paystep_orphan_payments_total", outcome="refunded")
    assert refunded == refunded_before + 1


def test_a_declined_attempt_paid_before_the_retry_is_the_orders_one_payment(
    money_stack: LocalStack,
) -> None:
    kept_before = _worker_metric(
        money_stack, "paystep_worker_tasks_total", type="check_payment", outcome="kept"
    )

    async def scenario(clients: Stack) -> None:
        request = _order(payment_method=DECLINING_CARD)
        arn = await clients.start(request)
        [declined] = await _intents(clients, request["order_id"], 1)
        await eventually_async(
            lambda: clients.stripe("GET", f"/v1/payment_intents/{declined['id']}"),
            until=lambda pi: pi["status"] == "requires_payment_method",
            what="the first attempt's decline",
        )

        await _pay(clients, declined["id"])

        done = await _wait_done(clients, arn)
        assert done["status"] == "SUCCEEDED", done
        assert json.loads(done["output"])["payment"]["payment_intent_id"] == declined["id"]
        # The retry adopted the payment instead of creating a second PaymentIntent.
        assert [pi["id"] for pi in await clients.payment_intents_of(request["order_id"])] == [
            declined["id"]
        ]

    run_scenario(money_stack, scenario)
    # The webhook's success met the closed first task: the check waits for the end and keeps it.
    eventually(
        lambda: _worker_metric(
            money_stack, "paystep_worker_tasks_total", type="check_payment", outcome="kept"
        ),
        until=lambda kept: kept == kept_before + 1,
        timeout_s=60,
        what="the payment checked and kept",
    )


def test_a_second_execution_for_a_paid_order_takes_no_payment(money_stack: LocalStack) -> None:
    async def scenario(clients: Stack) -> None:
        request = _order(payment_method="pm_card_visa")
        paid = await _wait_done(clients, await clients.start(request))
        again = await _wait_done(
            clients, await clients.start(request, name=f"{request['order_id']}-again")
        )

        assert paid["status"] == "SUCCEEDED", paid
        assert (again["status"], again["error"]) == ("FAILED", errors.ALREADY_PAID)
        kept = json.loads(paid["output"])["payment"]["payment_intent_id"]
        assert json.loads(again["cause"])["payment_intent_id"] == kept
        [only] = await _intents(clients, request["order_id"], 1)
        assert only["id"] == kept
        assert await clients.refunds_of(kept) == []

    run_scenario(money_stack, scenario)


def test_a_payment_after_the_timeout_found_nothing_to_cancel_is_refunded(
    money_stack: LocalStack,
) -> None:
    async def scenario(clients: Stack) -> None:
        request = _order()  # no payment method: the customer pays on the client side
        arn = await clients.start(request)
        [waiting] = await _intents(clients, request["order_id"], 1)
        done = await _wait_done(clients, arn)
        # The cancel searched before search showed the PaymentIntent: it canceled nothing.
        assert (done["status"], done["error"]) == ("FAILED", errors.TIMED_OUT)

        await _pay(clients, waiting["id"])

        alert = await _refunded_with_alert(clients, request["order_id"], waiting["id"])
        assert alert["execution_id"] == arn

    run_scenario(money_stack, scenario)


def test_a_payment_for_a_stopped_execution_is_refunded(money_stack: LocalStack) -> None:
    async def scenario(clients: Stack) -> None:
        request = _order()
        arn = await clients.start(request)
        [waiting] = await _intents(clients, request["order_id"], 1)
        await clients.sfn.stop_execution(executionArn=arn, error="Operator.Stopped")
        stopped = await _wait_done(clients, arn)
        # AWS reports ABORTED at once; moto lets the stopped wait run to its timeout and
        # reports FAILED (States.Timeout). Either way it ends without a payment, and the
        # worker treats both as ended (its unit tests cover ABORTED).
        assert stopped["status"] in ("ABORTED", "FAILED"), stopped["status"]

        await _pay(clients, waiting["id"])

        alert = await _refunded_with_alert(clients, request["order_id"], waiting["id"])
        assert alert["execution_id"] == arn

    run_scenario(money_stack, scenario)
