"""Cancel (after the payment wait timed out) and refund (fulfilment failed) on moto.

GIVEN a deployment whose payment wait times out after 3 s, one worker, the fake Stripe
WHEN the wait times out, or fulfilment fails after the payment
THEN the worker cancels the attempt's PaymentIntent or reports it paid after all,
and refunds a failed order exactly once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from paystep_local.fake_stripe import FakeStripe
from paystep_local.localstack import LocalStack
from paystep_local.polling import eventually
from paystep_local.processes import Workers
from statemachine import errors
from statemachine.models import PaymentOutcome, dump_json
from tests.conftest import Deployer
from tests.support.aws import (
    answer_order_task,
    receive_task,
    start,
    states_entered,
    wait_done,
)
from tests.worker.support import FAST_RETRIES

pytestmark = pytest.mark.usefixtures("stack")

SEARCH = "GET /v1/payment_intents/search"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeStripe]:
    with FakeStripe().running_in_thread() as fake_stripe:
        yield fake_stripe


@pytest.fixture(scope="module")
def impatient(deploy_fresh: Deployer, stack: LocalStack, fake: FakeStripe) -> Iterator[Any]:
    """A deployment whose payment wait times out after 3 s, and its worker."""
    deployed = deploy_fresh(
        "--payment-timeout-s", "3", "--payment-heartbeat-s", "0", "--settlement-poll-s", "1"
    )
    started = Workers(stack)
    yield deployed, started
    started.stop_all()


def order(**extra: Any) -> dict[str, Any]:
    return {"order_id": f"ord_{uuid.uuid4().hex[:10]}", "amount": 1999, "currency": "usd", **extra}


def intents_of(fake: FakeStripe, arn: str) -> list[dict[str, Any]]:
    return [pi for pi in fake.intents() if pi["metadata"].get("paystep_execution") == arn]


def test_cancel_before_anything_was_created_reports_not_found(
    impatient: Any, fake: FakeStripe
) -> None:
    deployed, workers = impatient
    sfn, sqs = boto3.client("stepfunctions"), boto3.client("sqs")
    arn = start(sfn, deployed["state_machine_arn"], order())
    answer_order_task(sqs, sfn, deployed, "reserve_order")
    receive_task(sqs, deployed["queue_url"], "create_payment")  # lost: no PaymentIntent
    workers.start(deployed, fake.url, **FAST_RETRIES)
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"]) == ("FAILED", errors.TIMED_OUT)
    assert intents_of(fake, arn) == []


def test_cancel_cancels_an_unpaid_payment_intent(impatient: Any, fake: FakeStripe) -> None:
    deployed, workers = impatient
    sfn = boto3.client("stepfunctions")
    if not workers.started:
        workers.start(deployed, fake.url, **FAST_RETRIES)
    arn = start(sfn, deployed["state_machine_arn"], order())  # no payment method: it waits
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"]) == ("FAILED", errors.TIMED_OUT)
    (intent,) = intents_of(fake, arn)
    assert intent["status"] == "canceled"


def test_cancel_finds_the_payment_succeeded_after_all(impatient: Any, fake: FakeStripe) -> None:
    deployed, workers = impatient
    sfn = boto3.client("stepfunctions")
    if not workers.started:
        workers.start(deployed, fake.url, **FAST_RETRIES)
    searches = len(fake.requests(SEARCH))
    # Bank debits stay `processing` for days: the cancel cancels nothing and the state
    # machine asks again after its settlement wait, until the outcome is known.
    arn = start(sfn, deployed["state_machine_arn"], order(payment_method="pm_sepa_debit"))
    (intent,) = eventually(lambda: intents_of(fake, arn), what="the PaymentIntent")
    assert intent["status"] == "processing"
    eventually(lambda: len(fake.requests(SEARCH)) > searches + 1, what="the cancel asked again")
    assert "AwaitSettlement" in states_entered(sfn, arn)
    assert sfn.describe_execution(executionArn=arn)["status"] == "RUNNING"
    fake.update_payment_intent(
        intent["id"], status="succeeded", amount_received=1999, latest_charge="ch_after_all"
    )

    done = wait_done(sfn, arn)
    assert done["status"] == "SUCCEEDED", done
    payment = json.loads(done["output"])["payment"]
    assert payment == {
        "payment_intent_id": intent["id"],
        "status": "succeeded",
        "amount_received": 1999,
        "currency": "usd",
        "latest_charge": "ch_after_all",
    }


def test_a_failed_order_is_refunded_once(
    deployed: dict[str, Any],
    workers: Workers,
    worker_stack: LocalStack,
    fake_stripe: FakeStripe,
    aws: tuple[Any, Any],
) -> None:
    sfn, _ = aws
    workers.start(deployed, fake_stripe.url)
    arns = [
        start(sfn, deployed["state_machine_arn"], order(payment_method="pm_card_visa"))
        for _ in range(2)
    ]
    intents = {arn: eventually(lambda arn=arn: intents_of(fake_stripe, arn))[0] for arn in arns}
    # The second payment was refunded once already (a redelivery a day later must not refund
    # it again): the worker finds that refund instead of making one.
    fake_stripe.put_refund(intents[arns[1]]["id"], 1999)
    for intent in intents.values():
        # The webhook's part, with a currency the order did not ask for: the state machine
        # refunds the payment and fails Payment.Mismatch.
        outcome = PaymentOutcome(
            payment_intent_id=intent["id"], status="succeeded", amount_received=1999, currency="eur"
        )
        sfn.send_task_success(taskToken=worker_stack.read_token(intent), output=dump_json(outcome))

    for arn in arns:
        done = wait_done(sfn, arn)
        assert (done["status"], done["error"]) == ("FAILED", errors.MISMATCH), done
    refunds = fake_stripe.refunds.values()
    assert sorted((r["payment_intent"], r["amount"]) for r in refunds) == sorted(
        (pi["id"], 1999) for pi in intents.values()
    )
    assert len(fake_stripe.requests("POST /v1/refunds")) == 1
