"""Reconcile puts back the stock of open claims whose execution ended, and only those.

GIVEN orders claimed (stock held) by executions on moto's Step Functions, one of them
failed without its ReleaseOrder ever running, one still RUNNING (waiting for a worker
that is not there)
WHEN reconcile looks at the open claims
THEN the failed one's stock goes back and its claim ends; the running one is left
whatever its age; a second run finds nothing to do; a dry run changes nothing.
https://docs.aws.amazon.com/step-functions/latest/apireference/API_DescribeExecution.html
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from paystep_common.clients import aws_config, aws_session
from paystep_common.retry import RECONCILE
from statemachine.errors import IN_PROGRESS
from statemachine.executions import Execution, Executions
from statemachine.models import Item
from statemachine.orders import Orders
from tests.conftest import Deployer
from tests.support.aws import order_row, put_stock, receive_task, start, stock_of, wait_done
from webhook.reconcile import Summary, release_ended_claims

NOW = "2026-01-01T00:00:00Z"  # old on purpose: age alone never releases a claim


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
        task = receive_task(boto3.client("sqs"), deployment["queue_url"], "reserve_order")
        assert task["execution_id"] == arn
        sfn.send_task_failure(taskToken=task["task_token"], error=IN_PROGRESS, cause="{}")
        assert wait_done(sfn, arn)["status"] == "FAILED"
    return Held(order, arn, sku)


async def _reconcile(
    orders: Orders, executions: Any, *, dry_run: bool = False, concurrency: int = 8
) -> Summary:
    summary = Summary()
    await release_ended_claims(
        orders, executions, summary, dry_run=dry_run, concurrency=concurrency
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


def test_the_summary_line_says_what_was_released_or_would_be() -> None:
    summary = Summary(claims_open=3, holds_released=1, would_release=2)
    assert "open claims 3, holds released 1," in summary.line(dry_run=False)
    assert "open claims 3, would release 2," in summary.line(dry_run=True)
