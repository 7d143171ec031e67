"""The retry budget of a card: attempts per card and network window, atomic across executions.

GIVEN a card-attempts table on moto (DynamoDB) and a budget per network
WHEN declines are recorded and retries reserved, concurrently or over time
THEN no more attempts are counted than the window allows, each attempt once.

The networks' limits: Visa 15 retries of a card in 30 days, Mastercard 10 in 24 h and
35 in 30 days (the issue's figures; Stripe's https://docs.stripe.com/declines/card).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import boto3
import pytest

from paystep_common.clients import aws_session
from paystep_local.localstack import LocalStack
from statemachine.card_budget import DAY_S, Budgets, Card, CardBudget, Window

VISA = Card("fp_visa_" + uuid.uuid4().hex[:8], "visa")
BUDGETS = Budgets(
    by_brand={
        "visa": (Window(5, 30 * DAY_S),),
        "mastercard": (Window(2, DAY_S), Window(3, 30 * DAY_S)),
    },
    other=(Window(4, 30 * DAY_S),),
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def table(stack: LocalStack) -> AsyncIterator[str]:
    name = "cards-" + uuid.uuid4().hex[:8]
    boto3.client("dynamodb").create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "card", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "card", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    yield name


@pytest.fixture
async def dynamodb(stack: LocalStack) -> AsyncIterator[object]:
    async with aws_session().client("dynamodb") as client:
        yield client


async def test_concurrent_retries_never_take_a_card_past_its_budget(
    table: str, dynamodb: object
) -> None:
    budget = CardBudget(dynamodb, table, BUDGETS)
    # GIVEN two declined first attempts (never refused)
    for execution in ("e1", "e2"):
        await budget.record_decline(VISA, f"{execution}#1")
    # WHEN eight executions reserve a retry at once
    granted = await asyncio.gather(*(budget.reserve(VISA, f"r{i}#2") for i in range(8)))
    # THEN exactly the three left of five are granted
    assert sum(granted) == 3
    recorded = await budget.record_decline(VISA, "late#1")
    assert (recorded.room_for_another, recorded.attempts_in_longest_window) == (False, 6)


async def test_an_attempt_is_counted_once_however_often_it_is_reported(
    table: str, dynamodb: object
) -> None:
    budget = CardBudget(dynamodb, table, BUDGETS)
    for _ in range(3):
        recorded = await budget.record_decline(VISA, "e1#1")
    assert recorded.attempts_in_longest_window == 1
    assert await budget.reserve(VISA, "e1#2")
    assert await budget.reserve(VISA, "e1#2")  # a redelivered create: the same attempt
    assert (await budget.record_decline(VISA, "e1#2")).attempts_in_longest_window == 2


async def test_a_first_attempt_is_counted_but_never_refused(table: str, dynamodb: object) -> None:
    budget = CardBudget(dynamodb, table, BUDGETS)
    for i in range(7):
        await budget.record_decline(VISA, f"e{i}#1")
    recorded = await budget.record_decline(VISA, "e7#1")
    assert (recorded.room_for_another, recorded.attempts_in_longest_window) == (False, 8)
    assert not await budget.reserve(VISA, "e7#2")


async def test_mastercard_has_a_day_window_and_a_month_window(table: str, dynamodb: object) -> None:
    clock = Clock()
    budget = CardBudget(dynamodb, table, BUDGETS, clock=clock)
    card = Card("fp_mc_" + uuid.uuid4().hex[:8], "mastercard")
    await budget.record_decline(card, "e1#1")
    assert await budget.reserve(card, "e1#2")
    assert not await budget.reserve(card, "e1#3")  # 2 in 24 h
    clock.now += DAY_S + 1
    assert await budget.reserve(card, "e1#3")  # a new day, 3 of 3 in 30 days
    clock.now += DAY_S + 1
    assert not await budget.reserve(card, "e2#2")  # the month is full
    clock.now += 30 * DAY_S
    assert await budget.reserve(card, "e2#2")  # old attempts have left the window


async def test_another_network_gets_the_default_window(table: str, dynamodb: object) -> None:
    budget = CardBudget(dynamodb, table, BUDGETS)
    card = Card("fp_amex_" + uuid.uuid4().hex[:8], "amex")
    granted = [await budget.reserve(card, f"e{i}#2") for i in range(6)]
    assert granted == [True] * 4 + [False] * 2


async def test_the_item_expires_one_window_after_its_last_attempt(
    table: str, dynamodb: object
) -> None:
    clock = Clock()
    budget = CardBudget(dynamodb, table, BUDGETS, clock=clock)
    await budget.record_decline(VISA, "e1#1")
    item = boto3.client("dynamodb").get_item(TableName=table, Key={"card": {"S": VISA.fingerprint}})
    assert int(item["Item"]["expires_at"]["N"]) == int(clock.now) + 30 * DAY_S


def test_card_of_a_payment_method_reads_its_fingerprint_and_brand() -> None:
    method = {"id": "pm_1", "type": "card", "card": {"brand": "visa", "fingerprint": "abc"}}
    assert Card.of(method) == Card("abc", "visa")
    assert Card.of({"id": "pm_2", "type": "sepa_debit"}) is None
    assert Card.of(None) is None
