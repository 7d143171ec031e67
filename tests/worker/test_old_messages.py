"""Create messages older than Stripe's idempotency horizon (keys live about 24 hours).

Decided: such a message first heartbeats its task. A closed task means the
execution moved on: delete the message, create nothing. An open one searches
Stripe for the attempt's PaymentIntent and adopts it; only when there is none
does it create one.

The integration tests make every message "old" with a zero horizon and play the
24 hours with the fake's `forget_idempotency_keys()`; the unit tests pin the age
decision itself to SentTimestamp.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
import stripe

from paystep_local.fake_stripe import FakeStripe, Fault
from paystep_local.polling import eventually
from paystep_local.processes import Workers
from paystep_local.prometheus import metric, scrape
from statemachine import causes, errors
from statemachine.callbacks import CallbackResult
from statemachine.models import CreatePaymentTask
from statemachine.seal import TokenKeys, new_key
from tests.conftest import Deployer
from tests.support.aws import answer_order_task, start, wait_done
from tests.worker.support import UnlimitedCards, queue_empty
from worker.errors import TaskFailure
from worker.handlers import Handlers
from worker.queue import Message

CREATE = "POST /v1/payment_intents"
SEARCH = "GET /v1/payment_intents/search"
OLD = {"PAYSTEP_WORKER_IDEMPOTENCY_HORIZON_S": "0"}
HOUR_S = 3600.0


def order(**extra: Any) -> dict[str, Any]:
    return {"order_id": f"ord_{uuid.uuid4().hex[:10]}", "amount": 1999, "currency": "usd", **extra}


@pytest.mark.usefixtures("stack")
def test_an_old_message_of_a_closed_task_is_deleted_without_calling_stripe(
    deploy_fresh: Deployer, workers: Workers, fake_stripe: FakeStripe, aws: tuple[Any, Any]
) -> None:
    sfn, sqs = aws
    deployed = deploy_fresh("--max-attempts", "1")
    arn = start(sfn, deployed["state_machine_arn"], order(payment_method="pm_card_visa"))
    answer_order_task(sqs, sfn, deployed, "reserve_order")
    first = eventually(
        lambda: sqs.receive_message(QueueUrl=deployed["queue_url"], WaitTimeSeconds=1).get(
            "Messages", [None]
        )[0]
    )
    sqs.delete_message(QueueUrl=deployed["queue_url"], ReceiptHandle=first["ReceiptHandle"])
    body = json.loads(first["Body"])
    # The execution moved on long ago (here: the payment was declined) ...
    sfn.send_task_failure(taskToken=body["task_token"], error=errors.DECLINED, cause="{}")
    answer_order_task(sqs, sfn, deployed, "release_order")
    assert wait_done(sfn, arn)["status"] == "FAILED"
    # ... and a copy of its create message turns up a day later.
    sqs.send_message(QueueUrl=deployed["queue_url"], MessageBody=first["Body"])
    worker = workers.start(deployed, fake_stripe.url, **OLD)

    # Until the worker settles it, no task has the outcome: the series does not exist yet.
    eventually(
        lambda: (
            metric(
                scrape(worker.urls["metrics"]),
                "paystep_worker_tasks_total",
                outcome="stale",
                default=0,
            )
            == 1
        ),
        what="the stale task settled",
    )
    eventually(lambda: queue_empty(sqs, deployed["queue_url"]), what="the copy deleted")
    assert fake_stripe.stats()["requests"] == 0


@pytest.mark.usefixtures("stack")
def test_an_old_message_adopts_the_payment_intent_its_first_delivery_made(
    deployed: dict[str, Any], workers: Workers, fake_stripe: FakeStripe, aws: tuple[Any, Any]
) -> None:
    sfn, sqs = aws
    # The first delivery's create succeeds at Stripe but its answer is lost ...
    fake_stripe.add_fault(Fault(kind="drop"))
    worker = workers.start(
        deployed,
        fake_stripe.url,
        PAYSTEP_WORKER_RETRY_BASE_S="4",
        PAYSTEP_WORKER_RETRY_MAX_S="8",
        **OLD,
    )
    arn = start(sfn, deployed["state_machine_arn"], order(payment_method="pm_card_visa"))
    (intent,) = eventually(lambda: fake_stripe.intents(), what="the first PaymentIntent")
    # ... and the redelivery comes after Stripe pruned the idempotency key.
    fake_stripe.forget_idempotency_keys()

    eventually(lambda: queue_empty(sqs, deployed["queue_url"]), what="redelivered and deleted")
    assert [pi["id"] for pi in fake_stripe.intents()] == [intent["id"]]
    assert len(fake_stripe.requests(CREATE)) == 1
    assert len(fake_stripe.requests(SEARCH)) == 2
    adopted = [e for e in worker.log_events() if e["event"] == "payment_intent.adopted"]
    assert [e["payment_intent"] for e in adopted] == [intent["id"]]
    assert intent["metadata"]["paystep_execution"] == arn
    assert sfn.describe_execution(executionArn=arn)["status"] == "RUNNING"


# -- the age decision, in-process ---------------------------------------------------------


@dataclass
class StubStripe:
    found: list[stripe.PaymentIntent] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    async def find_attempt(self, execution_id: str, attempt: int) -> list[stripe.PaymentIntent]:
        self.calls.append("search")
        return self.found

    async def create_payment_intent(self, params: Any, *, idempotency_key: str) -> Any:
        self.calls.append("create")
        return stripe.PaymentIntent.construct_from(
            {"id": "pi_new", "status": "succeeded"}, "sk_test"
        )


@dataclass
class StubCallbacks:
    result: CallbackResult = CallbackResult.DELIVERED
    heartbeats: int = 0

    async def heartbeat(self, token: str) -> CallbackResult:
        self.heartbeats += 1
        return self.result


def create_task() -> tuple[CreatePaymentTask, float]:
    task = CreatePaymentTask(
        type="create_payment",
        task_token="t" * 1500,
        execution_id="arn:aws:states:us-east-1:1:execution:m:e",
        state="CreatePayment",
        attempt=2,
        request={"order_id": "o1", "amount": 1000, "currency": "usd"},
    )
    return task, time.time()


def sent(age_s: float, now: float) -> Message:
    return Message("m", "rh", "{}", 1, now - age_s)


def handlers(stub: StubStripe, callbacks: StubCallbacks, now: float) -> Handlers:
    return Handlers(
        stub,  # type: ignore[arg-type]
        callbacks,  # type: ignore[arg-type]
        idempotency_horizon_s=23 * HOUR_S,
        token_keys=TokenKeys.parse(new_key()),
        livemode=False,
        # Neither reached by a create: no previous decline, no check, no refund.
        executions=None,  # type: ignore[arg-type]
        alerts=None,  # type: ignore[arg-type]
        requeue=None,  # type: ignore[arg-type]
        metrics=None,  # type: ignore[arg-type]
        check_again_s=0,
        orders=None,  # type: ignore[arg-type]
        card_budget=UnlimitedCards(),  # type: ignore[arg-type]
        clock=lambda: now,
    )


async def test_a_recent_message_creates_without_heartbeat_or_search() -> None:
    task, now = create_task()
    stub, callbacks = StubStripe(), StubCallbacks()
    assert await handlers(stub, callbacks, now).create_payment(task, sent(HOUR_S, now)) == "created"
    assert (stub.calls, callbacks.heartbeats) == (["create"], 0)


async def test_a_day_old_message_searches_before_creating() -> None:
    task, now = create_task()
    stub, callbacks = StubStripe(), StubCallbacks()
    outcome = await handlers(stub, callbacks, now).create_payment(task, sent(24 * HOUR_S, now))
    assert outcome == "created"
    assert (stub.calls, callbacks.heartbeats) == (["search", "create"], 1)


async def test_a_day_old_message_of_a_closed_task_does_nothing() -> None:
    task, now = create_task()
    stub, callbacks = StubStripe(), StubCallbacks(CallbackResult.ALREADY_CLOSED)
    outcome = await handlers(stub, callbacks, now).create_payment(task, sent(24 * HOUR_S, now))
    assert (outcome, stub.calls) == ("stale", [])


async def test_a_day_old_message_reports_a_decline_nobody_reported() -> None:
    task, now = create_task()
    declined = stripe.PaymentIntent.construct_from(
        {
            "id": "pi_old",
            "status": "requires_payment_method",
            "last_payment_error": {
                "code": "card_declined",
                "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.",
            },
        },
        "sk_test",
    )
    stub, callbacks = StubStripe(found=[declined]), StubCallbacks()
    with pytest.raises(TaskFailure) as failure:
        await handlers(stub, callbacks, now).create_payment(task, sent(24 * HOUR_S, now))
    assert failure.value.failure.error == errors.DECLINED
    assert causes.parse(failure.value.failure.cause)["decline_code"] == "insufficient_funds"
    assert stub.calls == ["search"]
