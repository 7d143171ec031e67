"""Stock first on the whole local stack: claim, hold, then charge; every end keeps or releases.

GIVEN moto, the local Stripe, `paystep deploy`, one webhook and one worker as processes
WHEN orders with items run to every end: paid, two executions of one order at once,
declined with no retry left, timed out, stopped
THEN the stock is taken once for a paid order and is back for every other one (a stopped
execution's after `paystep reconcile`), and only one payment exists per order.

DynamoDB applies a transaction's writes all or none, its conditions checked together
(https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html);
an execution's end is read from its status, never guessed from time
(https://docs.aws.amazon.com/step-functions/latest/apireference/API_DescribeExecution.html).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from paystep_local.localstack import LocalStack
from paystep_local.polling import eventually_async
from paystep_local.scenarios import Stack
from statemachine import errors
from tests.support.stacks import deployed_stack, run_scenario

pytestmark = pytest.mark.slow


DEPLOY_ARGS = (
    *("--max-attempts", "2", "--retry-backoff-s", "1"),
    *("--payment-timeout-s", "8", "--payment-heartbeat-s", "0", "--settlement-poll-s", "2"),
)
DECLINING_CARD = "pm_card_chargeCustomerFail"


@pytest.fixture(scope="module")
def stock_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with deployed_stack(tmp_path_factory.mktemp("stock"), DEPLOY_ARGS, workers=1) as stack:
        yield stack


async def _order_with_stock(
    clients: Stack, stock: int, quantity: int, **extra: Any
) -> dict[str, Any]:
    order_id = f"ord_{uuid.uuid4().hex[:10]}"
    sku = f"sku_{order_id}"
    await clients.put_stock(sku, stock)
    return {
        "order_id": order_id,
        "amount": 1999,
        "currency": "usd",
        "items": [{"sku": sku, "quantity": quantity}],
        **extra,
    }


def _sku(request: dict[str, Any]) -> str:
    sku: str = request["items"][0]["sku"]
    return sku


def test_two_executions_of_one_order_at_once_take_the_stock_and_the_money_once(
    stock_stack: LocalStack,
) -> None:
    async def scenario(clients: Stack) -> None:
        request = await _order_with_stock(clients, 5, 2, payment_method="pm_card_visa")
        arns = await asyncio.gather(
            clients.start(request, name=f"{request['order_id']}-a"),
            clients.start(request, name=f"{request['order_id']}-b"),
        )
        ends = [await clients.wait_done(arn) for arn in arns]

        statuses = sorted(end["status"] for end in ends)
        assert statuses == ["FAILED", "SUCCEEDED"], ends
        [refused] = [end for end in ends if end["status"] == "FAILED"]
        # Refused at its claim, whichever came second: still paying, or paid already.
        assert refused["error"] in (errors.IN_PROGRESS, errors.ALREADY_PAID), refused
        assert await clients.stock_of(_sku(request)) == 3, "two of five taken, once"
        [payment] = await clients.payment_intents_of(request["order_id"])
        assert payment["status"] == "succeeded"
        row = await clients.order_row(request["order_id"])
        assert (row["status"], row["payment_intent_id"]) == ("paid", payment["id"])

    run_scenario(stock_stack, scenario)


def test_a_declined_out_order_and_a_timed_out_order_have_their_stock_back(
    stock_stack: LocalStack,
) -> None:
    async def scenario(clients: Stack) -> None:
        declined = await _order_with_stock(clients, 3, 3, payment_method=DECLINING_CARD)
        # No payment method: the PaymentIntent waits for a customer who never comes.
        waiting = await _order_with_stock(clients, 1, 1)
        arns = await asyncio.gather(clients.start(declined), clients.start(waiting))
        ends = [await clients.wait_done(arn) for arn in arns]

        assert [end["error"] for end in ends] == [errors.DECLINED, errors.TIMED_OUT], ends
        for request, stock in ((declined, 3), (waiting, 1)):
            assert await clients.stock_of(_sku(request)) == stock, request["order_id"]
            row = await clients.order_row(request["order_id"])
            assert row["status"] == "released", row
            assert "claim_state" not in row and "held_items" not in row

    run_scenario(stock_stack, scenario)


def test_a_stopped_execution_has_its_stock_back_after_reconcile(stock_stack: LocalStack) -> None:
    async def scenario(clients: Stack) -> dict[str, Any]:
        request = await _order_with_stock(clients, 2, 2)
        arn = await clients.start(request)
        await eventually_async(
            lambda: clients.payment_intents_of(request["order_id"]),
            timeout_s=60,
            what="the PaymentIntent the execution waits on",
        )
        assert await clients.stock_of(_sku(request)) == 0, "held while it waits"
        await clients.sfn.stop_execution(executionArn=arn, error="Operator.Stopped")
        stopped = await clients.wait_done(arn)
        # AWS reports ABORTED at once; moto lets the stopped wait run to its timeout and
        # reports FAILED (States.Timeout) without running the state machine's catch. Either
        # way the execution ended without its release: the stock is still held.
        assert stopped["status"] in ("ABORTED", "FAILED"), stopped
        assert await clients.stock_of(_sku(request)) == 0
        return request

    request = run_scenario(stock_stack, scenario)
    result = subprocess.run(
        [sys.executable, "-m", "paystep", "reconcile", "--since", "1h"],
        env=stock_stack.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    async def after(clients: Stack) -> None:
        assert await clients.stock_of(_sku(request)) == 2
        row = await clients.order_row(request["order_id"])
        assert row["status"] == "released", row

    run_scenario(stock_stack, after)
