"""`Orders` on moto in server mode: claim and hold in one transaction, release once.

GIVEN the orders and inventory tables of a fresh deployment
WHEN an execution reserves, repeats, competes or releases
THEN the row and the stock change together or not at all, and a refusal names why.
https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from paystep_common.clients import aws_config, aws_session
from paystep_common.retry import RECONCILE
from statemachine import causes, errors
from statemachine.models import Item
from statemachine.orders import Claim, OrderRefused, Orders, Released
from tests.conftest import Deployer
from tests.support.aws import order_row, put_stock, record_authorized, stock_of

NOW = "2026-11-30T00:00:00Z"


@dataclass(frozen=True)
class Tables:
    orders: str
    inventory: str


@pytest.fixture(scope="module")
def tables(deploy_fresh: Deployer) -> Tables:
    deployed = deploy_fresh()
    return Tables(deployed["orders_table"], deployed["inventory_table"])


@pytest.fixture
async def orders(tables: Tables) -> AsyncIterator[Orders]:
    async with aws_session().client("dynamodb", config=aws_config(RECONCILE)) as ddb:
        yield Orders(ddb, tables.orders, tables.inventory)


@pytest.fixture
def ddb() -> Any:
    return boto3.client("dynamodb")


@pytest.fixture
def new_id() -> Callable[[str], str]:
    suffix = uuid.uuid4().hex[:8]
    return lambda prefix: f"{prefix}_{suffix}"


def _execution(name: str) -> str:
    return f"arn:aws:states:us-east-1:123456789012:execution:paystep-payment:{name}"


async def _open_claims(orders: Orders) -> dict[str, Claim]:
    return {claim.order_id: claim async for claim in orders.open_claims()}


async def test_reserve_takes_the_stock_and_claims_the_order(
    orders: Orders, tables: Tables, ddb: Any, new_id: Callable[[str], str]
) -> None:
    order, sku_a, sku_b, run = new_id("ord"), new_id("a"), new_id("b"), _execution(new_id("x"))
    put_stock(ddb, tables.inventory, sku_a, 5)
    put_stock(ddb, tables.inventory, sku_b, 1)

    assert await orders.reserve(run, order, [Item(sku=sku_a, quantity=2),
                                              Item(sku=sku_b, quantity=1)], NOW)  # fmt: skip

    assert (stock_of(ddb, tables.inventory, sku_a), stock_of(ddb, tables.inventory, sku_b)) == (
        3,
        0,
    )
    row = order_row(ddb, tables.orders, order)
    assert (row["status"], row["execution_id"], row["claim_state"], row["claimed_at"]) == (
        "paying", run, "open", NOW)  # fmt: skip
    assert (await _open_claims(orders))[order] == Claim(order, run, NOW)


async def test_a_repeat_by_the_same_execution_changes_nothing(
    orders: Orders, tables: Tables, ddb: Any, new_id: Callable[[str], str]
) -> None:
    order, sku, run = new_id("ord"), new_id("a"), _execution(new_id("x"))
    put_stock(ddb, tables.inventory, sku, 5)
    items = [Item(sku=sku, quantity=2)]
    assert await orders.reserve(run, order, items, NOW)
    before = order_row(ddb, tables.orders, order)

    assert await orders.reserve(run, order, items, "2026-11-30T00:00:09Z") is False

    assert stock_of(ddb, tables.inventory, sku) == 3
    assert order_row(ddb, tables.orders, order) == before


async def test_a_second_execution_is_refused_in_progress_naming_the_holder(
    orders: Orders, tables: Tables, ddb: Any, new_id: Callable[[str], str]
) -> None:
    order, sku = new_id("ord"), new_id("a")
    first, second = _execution(new_id("first")), _execution(new_id("second"))
    put_stock(ddb, tables.inventory, sku, 5)
    items = [Item(sku=sku, quantity=2)]
    await orders.reserve(first, order, items, NOW)
    before = order_row(ddb, tables.orders, order)

    with pytest.raises(OrderRefused) as refused:
        await orders.reserve(second, order, items, NOW)

    assert refused.value.failure.error == errors.IN_PROGRESS
    assert causes.parse(refused.value.failure.cause)["claimed_by"] == first
    assert refused.value.holder == first
    assert stock_of(ddb, tables.inventory, sku) == 3
    assert order_row(ddb, tables.orders, order) == before


async def test_a_paid_order_is_refused_already_paid(
    orders: Orders, tables: Tables, ddb: Any, new_id: Callable[[str], str]
) -> None:
    order, sku, paid_by = new_id("ord"), new_id("a"), _execution(new_id("paid"))
    put_stock(ddb, tables.inventory, sku, 5)
    ddb.put_item(
        TableName=tables.orders,
        Item={"order_id": {"S": order}, "status": {"S": "paid"},
              "execution_id": {"S": paid_by}, "payment_intent_id": {"S": "pi_paid"}},
    )  # fmt: skip

    with pytest.raises(OrderRefused) as refused:
        await orders.reserve(_execution(new_id("late")), order, [Item(sku=sku, quantity=1)], NOW)

    assert refused.value.failure.error == errors.ALREADY_PAID
    assert causes.parse(refused.value.failure.cause) == {
        "order_id": order, "payment_intent_id": "pi_paid", "paid_by": paid_by}  # fmt: skip
    assert stock_of(ddb, tables.inventory, sku) == 5


async def test_short_items_are_refused_unfulfillable_and_no_stock_moves(
    orders: Orders, tables: Tables, ddb: Any, new_id: Callable[[str], str]
) -> None:
    order, plenty, short, unknown = new_id("ord"), new_id("plenty"), new_id("short"), new_id("no")
    put_stock(ddb, tables.inventory, plenty, 10)
    put_stock(ddb, tables.inventory, short, 1)
    items = [Item(sku=plenty, quantity=3), Item(sku=short, quantity=2),
             Item(sku=unknown, quantity=1)]  # fmt: skip

    with pytest.raises(OrderRefused) as refused:
        await orders.reserve(_execution(new_id("x")), order, items, NOW)

    assert refused.value.failure.error == errors.UNFULFILLABLE
    assert causes.parse(refused.value.failure.cause) == {
        "order_id": order,
        "shortages": [
            {"sku": short, "asked": 2, "left": 1},
            {"sku": unknown, "asked": 1, "left": 0},
        ],
    }
    # One transaction: the item that was there is not taken either, and no claim is left.
    assert stock_of(ddb, tables.inventory, plenty) == 10
    assert stock_of(ddb, tables.inventory, short) == 1
    assert "Item" not in ddb.get_item(TableName=tables.inventory, Key={"sku": {"S": unknown}})
    assert order_row(ddb, tables.orders, order) == {}


async def test_release_puts_the_stock_back_once(
    orders: Orders, tables: Tables, ddb: Any, new_id: Callable[[str], str]
) -> None:
    order, sku_a, sku_b, run = new_id("ord"), new_id("a"), new_id("b"), _execution(new_id("x"))
    put_stock(ddb, tables.inventory, sku_a, 5)
    put_stock(ddb, tables.inventory, sku_b, 4)
    await orders.reserve(run, order, [Item(sku=sku_a, quantity=2),
                                      Item(sku=sku_b, quantity=4)], NOW)  # fmt: skip

    assert await orders.release(run, order) == Released(order, 2)
    assert await orders.release(run, order) is None

    assert (stock_of(ddb, tables.inventory, sku_a), stock_of(ddb, tables.inventory, sku_b)) == (
        5,
        4,
    )
    row = order_row(ddb, tables.orders, order)
    assert row["status"] == "released"
    assert "claim_state" not in row and "held_items" not in row
    assert order not in await _open_claims(orders)


async def test_release_of_an_authorised_claim_names_its_payment_intent(
    orders: Orders, tables: Tables, ddb: Any, new_id: Callable[[str], str]
) -> None:
    order, sku, run = new_id("ord"), new_id("a"), _execution(new_id("x"))
    put_stock(ddb, tables.inventory, sku, 5)
    await orders.reserve(run, order, [Item(sku=sku, quantity=2)], NOW)
    assert await orders.authorization(run, order) is None
    record_authorized(ddb, tables.orders, order, "pi_held")

    assert await orders.authorization(run, order) == "pi_held"
    assert await orders.authorization(_execution(new_id("other")), order) is None
    assert await orders.release(run, order) == Released(order, 1, authorization="pi_held")
    assert await orders.authorization(run, order) is None
    assert stock_of(ddb, tables.inventory, sku) == 5


async def test_release_by_another_execution_changes_nothing(
    orders: Orders, tables: Tables, ddb: Any, new_id: Callable[[str], str]
) -> None:
    order, sku, run = new_id("ord"), new_id("a"), _execution(new_id("x"))
    put_stock(ddb, tables.inventory, sku, 5)
    await orders.reserve(run, order, [Item(sku=sku, quantity=2)], NOW)

    assert await orders.release(_execution(new_id("other")), order) is None

    assert stock_of(ddb, tables.inventory, sku) == 3
    assert order in await _open_claims(orders)


@pytest.mark.parametrize("ended", ["released", "refunded"])
async def test_a_released_or_refunded_order_can_be_claimed_again(
    orders: Orders, tables: Tables, ddb: Any, new_id: Callable[[str], str], ended: str
) -> None:
    order, sku, before = new_id("ord"), new_id("a"), _execution(new_id("before"))
    put_stock(ddb, tables.inventory, sku, 5)
    ddb.put_item(
        TableName=tables.orders,
        Item={"order_id": {"S": order}, "status": {"S": ended}, "execution_id": {"S": before},
              "executions": {"SS": [before]}},
    )  # fmt: skip
    again = _execution(new_id("again"))

    assert await orders.reserve(again, order, [Item(sku=sku, quantity=1)], NOW)

    assert stock_of(ddb, tables.inventory, sku) == 4
    row = ddb.get_item(TableName=tables.orders, Key={"order_id": {"S": order}})["Item"]
    assert (row["status"]["S"], row["execution_id"]["S"]) == ("paying", again)
    assert set(row["executions"]["SS"]) == {before, again}


async def test_concurrent_reserves_of_one_order_claim_it_once(
    tables: Tables, ddb: Any, new_id: Callable[[str], str]
) -> None:
    """DynamoDB isolates a transaction from every other write (serializable:
    https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html);
    the local moto server holds that rule (`paystep_local/moto_server.py`)."""

    async def reserve(client: Any, run: str, order: str, sku: str) -> str:
        try:
            await Orders(client, tables.orders, tables.inventory).reserve(
                run, order, [Item(sku=sku, quantity=2)], NOW
            )
        except OrderRefused as exc:
            return exc.failure.error
        return "claimed"

    async with (
        aws_session().client("dynamodb", config=aws_config(RECONCILE)) as first,
        aws_session().client("dynamodb", config=aws_config(RECONCILE)) as second,
    ):
        for round_ in range(10):
            order, sku = new_id(f"race{round_}"), new_id(f"sku{round_}")
            put_stock(ddb, tables.inventory, sku, 5)
            outcomes = await asyncio.gather(
                reserve(first, _execution(new_id(f"a{round_}")), order, sku),
                reserve(second, _execution(new_id(f"b{round_}")), order, sku),
            )
            assert sorted(outcomes) == ["Order.InProgress", "claimed"], outcomes
            assert stock_of(ddb, tables.inventory, sku) == 3, f"round {round_}"
