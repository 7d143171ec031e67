"""Reconcile puts back the stock of open claims whose execution ended, and only those.

GIVEN orders claimed (stock held) by executions on moto's Step Functions, one of them
failed without its ReleaseOrder ever running, one still RUNNING (waiting for a worker
that is not there)
WHEN reconcile looks at the open claims
THEN the failed one's stock goes back and its claim ends; the running one is left
whatever its age; a second run finds nothing to do; a dry run changes nothing.
https://docs.aws.amazon.com/step-functions/latest/apireference/API_DescribeExecution.html

A manual-capture order stopped after its authorisation was recorded has that
authorisation canceled with its holds (on the fake Stripe): a `requires_capture`
PaymentIntent is canceled and its funds released, nothing charged, nothing refunded
(https://docs.stripe.com/api/payment_intents/cancel); left alone, the hold would stay
for up to 7 days (https://docs.stripe.com/payments/place-a-hold-on-a-payment-method).
One captured meanwhile is not touched: it is a payment of an ended execution, for the
orphan check.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
import stripe
from botocore.exceptions import ClientError

from paystep_common.clients import aws_config, aws_session
from paystep_common.retry import RECONCILE
from paystep_local.fake_stripe import FakeStripe, Fault
from statemachine.errors import IN_PROGRESS
from statemachine.executions import Execution, Executions
from statemachine.models import ABANDONED, Item, abandoned_authorization_key
from statemachine.orders import Orders
from tests.conftest import Deployer
from tests.support.aws import (
    order_row,
    put_stock,
    receive_task,
    record_authorized,
    start,
    stock_of,
    wait_done,
)
from webhook.reconcile import Summary, release_ended_claims

NOW = "2026-01-01T00:00:00Z"  # old on purpose: age alone never releases a claim
CANCEL = "POST /v1/payment_intents/{id}/cancel"


@dataclass(frozen=True)
class Held:
    order_id: str
    execution_id: str
    sku: str


@pytest.fixture
def deployment(deploy_fresh: Deployer) -> dict[str, Any]:
    return deploy_fresh()


@pytest.fixture
async def clients() -> AsyncIterator[tuple[Any, Any]]:
    session = aws_session()
    async with (
        session.client("dynamodb", config=aws_config(RECONCILE)) as ddb,
        session.client("stepfunctions", config=aws_config(RECONCILE)) as sfn,
    ):
        yield ddb, sfn


@pytest.fixture
def orders(clients: tuple[Any, Any], deployment: dict[str, Any]) -> Orders:
    return Orders(clients[0], deployment["orders_table"], deployment["inventory_table"])


@pytest.fixture
def sfn() -> Iterator[Any]:
    yield boto3.client("stepfunctions")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeStripe]:
    with FakeStripe().running_in_thread() as fake_stripe:
        yield fake_stripe


@pytest.fixture
def stripe_client(fake: FakeStripe) -> stripe.StripeClient:
    return stripe.StripeClient("sk_test_reconcile", base_addresses={"api": fake.url})


async def _hold(
    orders: Orders, deployment: dict[str, Any], sfn: Any, *, end: bool, quantity: int = 2
) -> Held:
    """An execution that claimed its order and holds `quantity` of a fresh sku.

    No worker runs here: the test claims as ReserveOrder's worker would. With `end`, the
    task then fails the way nothing releases (the Catch goes straight to `Failed`), so
    the execution ends FAILED with its claim still open; without, it stays RUNNING.
    """
    suffix = uuid.uuid4().hex[:8]
    order, sku = f"ord_{suffix}", f"sku_{suffix}"
    put_stock(boto3.client("dynamodb"), deployment["inventory_table"], sku, 10)
    request = {"order_id": order, "amount": 1999, "currency": "usd",
               "items": [{"sku": sku, "quantity": quantity}]}  # fmt: skip
    arn = start(sfn, deployment["state_machine_arn"], request)
    await orders.reserve(arn, order, [Item(sku=sku, quantity=quantity)], NOW)
    if end:
        _end(deployment, sfn, arn)
    return Held(order, arn, sku)


def _end(deployment: dict[str, Any], sfn: Any, arn: str) -> None:
    """End the execution FAILED the way nothing releases (see `_hold`)."""
    task = receive_task(boto3.client("sqs"), deployment["queue_url"], "reserve_order")
    assert task["execution_id"] == arn
    sfn.send_task_failure(taskToken=task["task_token"], error=IN_PROGRESS, cause="{}")
    assert wait_done(sfn, arn)["status"] == "FAILED"


async def _authorized_then_ended(
    orders: Orders, deployment: dict[str, Any], sfn: Any, fake: FakeStripe, *, status: str
) -> tuple[Held, str]:
    """A manual-capture order recorded `authorized` (as RecordAuthorized does), whose
    execution then ends without its cleanup, as one stopped by hand does: its claim stays
    open. The PaymentIntent is `status`. (moto's StopExecution ends a waiting task only at
    its timeout, so the execution is ended by `_end` instead.)"""
    held = await _hold(orders, deployment, sfn, end=False)
    captured = status == "succeeded"
    pi = fake.put_payment_intent(
        status=status,
        amount=1999,
        amount_capturable=0 if captured else 1999,
        amount_received=1999 if captured else 0,
        currency="usd",
        capture_method="manual",
        metadata={"order_id": held.order_id, "paystep_execution": held.execution_id},
    )
    record_authorized(boto3.client("dynamodb"), deployment["orders_table"], held.order_id, pi["id"])
    _end(deployment, sfn, held.execution_id)
    return held, pi["id"]


def _cancels(fake: FakeStripe, pi_id: str) -> list[Any]:
    key = abandoned_authorization_key(pi_id)
    return [r for r in fake.requests(CANCEL) if r.idempotency_key == key]


async def _reconcile(
    orders: Orders,
    executions: Any,
    stripe_client: stripe.StripeClient | None = None,
    *,
    dry_run: bool = False,
    concurrency: int = 8,
) -> Summary:
    summary = Summary()
    client = stripe_client or stripe.StripeClient("sk_test_unused")
    await release_ended_claims(
        orders, executions, client, summary, dry_run=dry_run, concurrency=concurrency
    )
    return summary


async def _open(orders: Orders) -> set[str]:
    return {claim.order_id async for claim in orders.open_claims()}


async def test_the_holds_of_an_ended_execution_go_back_and_a_running_one_keeps_its_own(
    orders: Orders, deployment: dict[str, Any], sfn: Any, clients: tuple[Any, Any]
) -> None:
    ddb = boto3.client("dynamodb")
    inventory = deployment["inventory_table"]
    failed = await _hold(orders, deployment, sfn, end=True)
    running = await _hold(orders, deployment, sfn, end=False)
    executions = Executions(clients[1])

    dry = await _reconcile(orders, executions, dry_run=True)
    assert (dry.claims_open, dry.would_release, dry.holds_released, dry.errors) == (2, 1, 0, 0)
    assert stock_of(ddb, inventory, failed.sku) == 8
    assert await _open(orders) == {failed.order_id, running.order_id}

    first = await _reconcile(orders, executions)
    assert (first.claims_open, first.holds_released, first.errors) == (2, 1, 0)
    assert stock_of(ddb, inventory, failed.sku) == 10
    assert order_row(ddb, deployment["orders_table"], failed.order_id)["status"] == "released"
    assert stock_of(ddb, inventory, running.sku) == 8
    assert order_row(ddb, deployment["orders_table"], running.order_id)["status"] == "paying"
    assert await _open(orders) == {running.order_id}

    again = await _reconcile(orders, executions)
    assert (again.claims_open, again.holds_released, again.errors) == (1, 0, 0)
    assert stock_of(ddb, inventory, failed.sku) == 10


async def test_a_claim_of_an_execution_step_functions_does_not_know_is_left_for_a_person(
    orders: Orders, deployment: dict[str, Any], clients: tuple[Any, Any]
) -> None:
    suffix = uuid.uuid4().hex[:8]
    ddb = boto3.client("dynamodb")
    put_stock(ddb, deployment["inventory_table"], f"sku_{suffix}", 3)
    machine = deployment["state_machine_arn"]
    unknown = machine.replace(":stateMachine:", ":execution:") + f":gone-{suffix}"
    await orders.reserve(unknown, f"ord_{suffix}", [Item(sku=f"sku_{suffix}", quantity=1)], NOW)

    summary = await _reconcile(orders, Executions(clients[1]))

    assert (summary.claims_open, summary.holds_released, summary.errors) == (1, 0, 0)
    assert stock_of(ddb, deployment["inventory_table"], f"sku_{suffix}") == 2
    assert await _open(orders) == {f"ord_{suffix}"}


class FailingFor:
    """Step Functions that throttles DescribeExecution for one execution, and counts."""

    def __init__(self, real: Executions, failing: str) -> None:
        self._real = real
        self._failing = failing
        self.in_flight = 0
        self.most_in_flight = 0

    async def describe(self, execution_arn: str) -> Execution:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            # Let every other claim's task run before this one answers.
            await asyncio.sleep(0)
            if execution_arn == self._failing:
                raise ClientError(
                    {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}},
                    "DescribeExecution",
                )
            return await self._real.describe(execution_arn)
        finally:
            self.in_flight -= 1


async def test_one_failing_call_is_an_error_and_the_others_are_released(
    orders: Orders, deployment: dict[str, Any], sfn: Any, clients: tuple[Any, Any]
) -> None:
    ddb = boto3.client("dynamodb")
    held = [await _hold(orders, deployment, sfn, end=True) for _ in range(4)]
    executions = FailingFor(Executions(clients[1]), failing=held[0].execution_id)

    summary = await _reconcile(orders, executions, concurrency=2)

    assert (summary.claims_open, summary.holds_released, summary.errors) == (4, 3, 1)
    assert executions.most_in_flight == 2
    assert await _open(orders) == {held[0].order_id}
    assert [stock_of(ddb, deployment["inventory_table"], h.sku) for h in held] == [8, 10, 10, 10]


async def test_an_ended_executions_authorisation_is_canceled_with_its_holds_a_capture_is_not(
    orders: Orders,
    deployment: dict[str, Any],
    sfn: Any,
    clients: tuple[Any, Any],
    fake: FakeStripe,
    stripe_client: stripe.StripeClient,
) -> None:
    ddb = boto3.client("dynamodb")
    inventory = deployment["inventory_table"]
    held, authorized = await _authorized_then_ended(
        orders, deployment, sfn, fake, status="requires_capture"
    )
    paid, captured = await _authorized_then_ended(orders, deployment, sfn, fake, status="succeeded")
    executions = Executions(clients[1])

    dry = await _reconcile(orders, executions, stripe_client, dry_run=True)
    assert (dry.would_release, dry.would_cancel, dry.authorizations_canceled) == (2, 1, 0)
    assert fake.payment_intents[authorized]["status"] == "requires_capture"
    assert _cancels(fake, authorized) == [] and stock_of(ddb, inventory, held.sku) == 8

    first = await _reconcile(orders, executions, stripe_client)
    assert (first.holds_released, first.authorizations_canceled, first.errors) == (2, 1, 0)
    canceled = fake.payment_intents[authorized]
    assert (canceled["status"], canceled["amount_received"]) == ("canceled", 0)
    assert canceled["cancellation_reason"] == ABANDONED
    assert len(_cancels(fake, authorized)) == 1
    assert fake.refunds_of(authorized) == []
    assert stock_of(ddb, inventory, held.sku) == 10
    assert fake.payment_intents[captured]["status"] == "succeeded"
    assert _cancels(fake, captured) == [] and fake.refunds_of(captured) == []
    assert stock_of(ddb, inventory, paid.sku) == 10

    again = await _reconcile(orders, executions, stripe_client)
    assert (again.holds_released, again.authorizations_canceled, again.errors) == (0, 0, 0)


async def test_a_cancel_stripe_fails_is_an_error_and_the_others_go_on(
    orders: Orders,
    deployment: dict[str, Any],
    sfn: Any,
    clients: tuple[Any, Any],
    fake: FakeStripe,
    stripe_client: stripe.StripeClient,
) -> None:
    ddb = boto3.client("dynamodb")
    failing, failing_pi = await _authorized_then_ended(
        orders, deployment, sfn, fake, status="requires_capture"
    )
    other, other_pi = await _authorized_then_ended(
        orders, deployment, sfn, fake, status="requires_capture"
    )
    fault = fake.add_fault(Fault(path=rf"/{failing_pi}/cancel$", status=503, times=None))
    try:
        summary = await _reconcile(orders, Executions(clients[1]), stripe_client)
    finally:
        fault.times = 0

    assert (summary.holds_released, summary.authorizations_canceled, summary.errors) == (2, 1, 1)
    assert fake.payment_intents[failing_pi]["status"] == "requires_capture"
    assert fake.payment_intents[other_pi]["status"] == "canceled"
    inventory = deployment["inventory_table"]
    assert [stock_of(ddb, inventory, h.sku) for h in (failing, other)] == [10, 10]


def test_the_summary_line_says_what_was_released_or_would_be() -> None:
    summary = Summary(claims_open=3, holds_released=1, would_release=2, would_cancel=1)
    assert "open claims 3, holds released 1, authorizations canceled 0," in summary.line(
        dry_run=False
    )
    assert "open claims 3, would release 2, would cancel 1," in summary.line(dry_run=True)
