"""`paystep reconcile` finishes payments whose webhook delivery was lost.

GIVEN the local stack with a worker but NO webhook at localstripe (a sink that
records each delivery and drops it: every delivery is lost), WHEN a payment
completes at Stripe and its event was delivered to the sink, THEN the execution
keeps waiting until `paystep reconcile` answers its task from the event, and a
second run, the task closed, sends nothing.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from paystep_local.delivery_sink import DeliverySink, about_payment_intent
from paystep_local.localstack import LOCAL_STRIPE_KEY, LocalStack
from paystep_local.polling import eventually_async
from paystep_local.scenarios import IBAN_ASYNC_SUCCESS, Stack
from webhook.reconcile import parse_duration

IBAN_ASYNC_FAILURE = "DE62370400440532013001"


@pytest.fixture(scope="module")
def sink() -> Iterator[DeliverySink]:
    with DeliverySink() as dropped:
        yield dropped


@pytest.fixture(scope="module")
def no_webhook(
    tmp_path_factory: pytest.TempPathFactory, sink: DeliverySink
) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("reconcile"), workers=1) as stack:
        stack.start_aws()
        stack.start_stripe()
        stack.register_webhook(sink.url)
        stack.deploy("--max-attempts", "1")
        stack.start_worker()
        with stack.environment():
            yield stack


def _reconcile(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paystep", "reconcile", "--since", "1h", *args],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _clients(stack: LocalStack) -> Stack:
    assert stack.deployment and stack.stripe_base
    return Stack(stack.deployment, stack.stripe_base, LOCAL_STRIPE_KEY)


async def _pay_and_lose_the_event(
    stack: LocalStack, sink: DeliverySink, request: dict[str, Any], pi_status: str
) -> str:
    """Start the payment; return once Stripe settled it and its event went to the sink."""
    async with _clients(stack) as clients:
        arn = await clients.start(request)
        intents = await eventually_async(
            lambda: clients.payment_intents_of(request["order_id"]),
            until=lambda found: bool(found) and found[-1]["status"] == pi_status,
            interval_s=0.25,
            what=f"a {pi_status} PaymentIntent for {request['order_id']}",
        )
        await asyncio.to_thread(
            sink.wait_for,
            about_payment_intent(intents[-1]["id"], pi_status),
            what=f"the {pi_status} event of {intents[-1]['id']} delivered (and dropped)",
        )
        described = await clients.sfn.describe_execution(executionArn=arn)
        assert described["status"] == "RUNNING", "without a webhook the execution must wait"
        return arn


async def _describe(stack: LocalStack, arn: str, wait: bool = True) -> dict[str, Any]:
    async with _clients(stack) as clients:
        if wait:
            return await clients.wait_done(arn, timeout_s=30)
        described: dict[str, Any] = await clients.sfn.describe_execution(executionArn=arn)
        return described


async def _sepa(stack: LocalStack, iban: str) -> str:
    async with _clients(stack) as clients:
        return await clients.sepa_payment_method(iban)


def test_lost_success_is_finished_by_reconcile_and_a_rerun_changes_nothing(
    no_webhook: LocalStack, sink: DeliverySink
) -> None:
    request = {"order_id": f"ord_lost_{uuid.uuid4().hex[:8]}", "amount": 1999, "currency": "usd",
               "payment_method": "pm_card_visa"}  # fmt: skip
    arn = asyncio.run(_pay_and_lose_the_event(no_webhook, sink, request, "succeeded"))

    dry = _reconcile(no_webhook, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would send" in dry.stdout and "would send 0" not in dry.stdout
    assert asyncio.run(_describe(no_webhook, arn, wait=False))["status"] == "RUNNING"

    first = _reconcile(no_webhook)
    assert first.returncode == 0, first.stderr
    described = asyncio.run(_describe(no_webhook, arn))
    assert described["status"] == "SUCCEEDED", described
    assert "callbacks sent 0" not in first.stdout

    # The execution has ended with the payment it kept: a second run sends nothing at all.
    again = _reconcile(no_webhook)
    assert again.returncode == 0, again.stderr
    assert "callbacks sent 0" in again.stdout
    assert "already closed 0" in again.stdout


def test_lost_async_decline_ends_declined_after_reconcile(
    no_webhook: LocalStack, sink: DeliverySink
) -> None:
    method = asyncio.run(_sepa(no_webhook, IBAN_ASYNC_FAILURE))
    request = {"order_id": f"ord_lostfail_{uuid.uuid4().hex[:8]}", "amount": 1999, "currency": "eur",
               "payment_method": method}  # fmt: skip
    arn = asyncio.run(_pay_and_lose_the_event(no_webhook, sink, request, "requires_payment_method"))
    assert _reconcile(no_webhook).returncode == 0
    described = asyncio.run(_describe(no_webhook, arn))
    assert (described["status"], described["error"]) == ("FAILED", "Payment.Declined")


def test_lost_async_success_of_a_bank_debit(no_webhook: LocalStack, sink: DeliverySink) -> None:
    method = asyncio.run(_sepa(no_webhook, IBAN_ASYNC_SUCCESS))
    request = {"order_id": f"ord_sepa_{uuid.uuid4().hex[:8]}", "amount": 1999, "currency": "eur",
               "payment_method": method}  # fmt: skip
    arn = asyncio.run(_pay_and_lose_the_event(no_webhook, sink, request, "succeeded"))
    assert _reconcile(no_webhook, "--heartbeat").returncode == 0
    assert asyncio.run(_describe(no_webhook, arn))["status"] == "SUCCEEDED"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("72h", 259_200), ("1h30m", 5400), ("30d", 2_592_000)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "5x", "31d", "0s", "1h 30m", "-1h"])
def test_bad_durations_are_refused_with_the_flag_named(text: str) -> None:
    with pytest.raises(ValueError, match="--since"):
        parse_duration(text)


def test_bad_since_exits_2_without_calling_anything(no_webhook: LocalStack) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "paystep", "reconcile", "--since", "forever"],
        env=no_webhook.env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--since: expected a duration" in result.stderr
