"""Declines on the whole local stack: each handled as Stripe's codes say, within the card's budget.

GIVEN moto, the local Stripe (localstripe taught Stripe's declining test cards),
`paystep deploy` (three attempts, 1 s then 2 s apart), one webhook and one worker, all
as processes
WHEN payments are made with Stripe's declining test cards
THEN a card that will never be approved fails at once, a soft decline is retried up
to the attempts and the card's budget, and a decline only the customer can fix waits
for them on the same PaymentIntent, which their confirmation completes.

The rules: https://docs.stripe.com/declines/codes (stolen_card: do not retry;
insufficient_funds: retry later; expired_card, incorrect_cvc: the customer must act;
authentication_required: the customer must authenticate), the test cards
https://docs.stripe.com/testing#declined-payments, and the networks' retry limits
(Visa: 15 retries of a card in 30 days).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from paystep_local.localstack import LocalStack
from paystep_local.prometheus import metric, scrape
from paystep_local.scenarios import Stack
from statemachine import errors
from tests.support.stacks import deployed_stack, run_scenario

pytestmark = pytest.mark.slow

T = TypeVar("T")

ATTEMPTS = 3
BUDGET = 15
# A heartbeat window: moto answers SendTaskHeartbeat only for a task with HeartbeatSeconds
# (AWS takes it on any task token), and the webhook tells the customer only once its
# heartbeat found the task open.
DEPLOY_ARGS = (
    *("--max-attempts", str(ATTEMPTS), "--retry-backoff-s", "1"),
    *("--payment-timeout-s", "120", "--payment-heartbeat-s", "100"),
)
WAIT_S = 90.0


@pytest.fixture(scope="module")
def declines_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with deployed_stack(tmp_path_factory.mktemp("declines"), DEPLOY_ARGS) as stack:
        yield stack


def _run(stack: LocalStack, scenario: Callable[[Stack], Awaitable[T]]) -> T:
    return run_scenario(stack, scenario, message_timeout_s=30)


def _order(payment_method: str) -> dict[str, Any]:
    return {
        "order_id": f"ord_{uuid.uuid4().hex[:10]}",
        "amount": 1999,
        "currency": "usd",
        "payment_method": payment_method,
    }


async def _declined(clients: Stack, payment_method: str) -> tuple[dict[str, Any], int]:
    """Pay with `payment_method` until the execution ends: its cause and PaymentIntents."""
    order = _order(payment_method)
    done = await clients.wait_done(await clients.start(order), timeout_s=WAIT_S)
    assert (done["status"], done.get("error")) == ("FAILED", errors.DECLINED), done
    return json.loads(done["cause"]), len(await clients.payment_intents_of(order["order_id"]))


def test_a_stolen_card_fails_after_one_payment_intent_with_the_reason(
    declines_stack: LocalStack,
) -> None:
    cause, intents = _run(
        declines_stack, lambda c: _declined(c, "pm_card_chargeDeclinedStolenCard")
    )
    assert intents == 1
    assert (cause["verdict"], cause["retryable"], cause["reason"]) == (
        "final",
        False,
        "decline_code:stolen_card",
    )


async def _asked(clients: Stack, payment_method: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Start a payment whose decline asks the customer: the notice, the execution, the PI."""
    order = _order(payment_method)
    arn = await clients.start(order)
    [notice] = [
        m
        for m in await clients.wait_messages(order["order_id"], 1)
        if m["type"] == "payment_action_required"
    ]
    described = await clients.sfn.describe_execution(executionArn=arn)
    assert described["status"] == "RUNNING", "the execution waits for the customer"
    [intent] = await clients.payment_intents_of(order["order_id"])
    assert intent["id"] == notice["payment_intent_id"]
    return notice, arn, intent


@pytest.mark.parametrize(
    ("payment_method", "reason"),
    [
        ("pm_card_chargeDeclinedExpiredCard", "code:expired_card"),
        ("pm_card_chargeDeclinedIncorrectCvc", "code:incorrect_cvc"),
    ],
)
def test_a_card_the_customer_must_fix_asks_them_and_their_payment_completes(
    declines_stack: LocalStack, payment_method: str, reason: str
) -> None:
    async def scenario(clients: Stack) -> None:
        notice, arn, intent = await _asked(clients, payment_method)
        assert (notice["action"], notice["reason"]) == ("update_card", reason)
        assert notice["dedupe_key"].startswith("ch_")
        # The customer pays the same PaymentIntent with a card that works.
        await clients.pay(intent["id"], "pm_card_visa")
        done = await clients.wait_done(arn, timeout_s=WAIT_S)
        assert done["status"] == "SUCCEEDED", done
        assert json.loads(done["output"])["payment"]["payment_intent_id"] == intent["id"]

    _run(declines_stack, scenario)


def test_authentication_required_waits_and_completes_when_the_customer_confirms(
    declines_stack: LocalStack,
) -> None:
    async def scenario(clients: Stack) -> None:
        notice, arn, intent = await _asked(clients, "pm_card_authenticationRequired")
        assert (notice["action"], notice["reason"]) == (
            "authenticate",
            "decline_code:authentication_required",
        )
        # Back on-session, the customer confirms the same PaymentIntent and authenticates.
        confirmed = await clients.pay(intent["id"], "pm_card_authenticationRequired")
        assert confirmed["status"] == "requires_action"
        await clients.authenticate(intent["id"])
        done = await clients.wait_done(arn, timeout_s=WAIT_S)
        assert done["status"] == "SUCCEEDED", done
        assert json.loads(done["output"])["payment"]["payment_intent_id"] == intent["id"]
        # The execution's own open task took the payment: kept, never handed to the
        # worker as a payment to check (an orphan is a success on a closed task).
        assert await clients.refunds_of(intent["id"]) == []
        assert (await clients.order_row(notice["order_id"]))["status"] == "paid"

    _run(declines_stack, scenario)
    [webhook] = declines_stack.services("webhook")
    checks = metric(
        scrape(webhook.urls["metrics"]), "paystep_webhook_payment_checks_total", default=0
    )
    assert checks == 0


def test_the_card_budget_holds_across_concurrent_executions(declines_stack: LocalStack) -> None:
    """One insufficient-funds card, budget 15, three attempts each: five concurrent
    executions make 15 charge attempts, then two more make their first attempt each and
    no retry (`retry_budget`)."""

    async def scenario(clients: Stack) -> tuple[list[int], list[tuple[dict[str, Any], int]]]:
        card = "pm_card_chargeDeclinedInsufficientFunds"
        first = await asyncio.gather(*(_declined(clients, card) for _ in range(5)))
        later = [await _declined(clients, card) for _ in range(2)]
        return [n for _, n in first], later

    first, later = _run(declines_stack, scenario)
    assert sum(first) == BUDGET, first
    assert [n for _, n in later] == [1, 1]
    assert [c["reason"] for c, _ in later] == ["retry_budget", "retry_budget"]
