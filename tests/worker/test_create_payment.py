"""Create payment through real `paystep worker` processes on moto and the fake Stripe.

GIVEN a fresh deployment and a Stripe that honours Idempotency-Key
WHEN executions start and the worker takes their CreatePayment messages
THEN each attempt has exactly one PaymentIntent, carrying its token, or the
execution fails with the contract's error.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from typing import Any

import boto3
import pytest

from paystep_local.fake_stripe import FakeStripe, Fault
from paystep_local.localstack import LocalStack
from paystep_local.polling import eventually
from paystep_local.processes import Workers
from paystep_local.sfn_proxy import SfnProxy
from statemachine import errors
from statemachine.metadata import ORDER_KEY
from statemachine.models import PaymentOutcome, dump_json
from statemachine.seal import new_key
from tests.conftest import Deployer
from tests.support.aws import answer_order_task, run_to_end, start, wait_done
from tests.worker.support import FAST_RETRIES, queue_counts, queue_empty

pytestmark = pytest.mark.usefixtures("stack")

CREATE = "POST /v1/payment_intents"


def order(**extra: Any) -> dict[str, Any]:
    return {"order_id": f"ord_{uuid.uuid4().hex[:10]}", "amount": 1999, "currency": "usd", **extra}


def take_message(sqs: Any, deployed: dict[str, Any]) -> dict[str, Any]:
    """The execution's create_payment message, left in the queue but invisible for a minute
    (its reserve_order task answered first, as the worker would)."""
    answer_order_task(sqs, boto3.client("stepfunctions"), deployed, "reserve_order")
    queue_url = deployed["queue_url"]
    found: dict[str, Any] = eventually(
        lambda: sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=1, VisibilityTimeout=60
        ).get("Messages", [None])[0],
        what="a task message",
    )
    return found


def test_the_same_message_three_times_at_once_makes_one_payment_intent(
    deployed: dict[str, Any], workers: Workers, fake_stripe: FakeStripe, aws: tuple[Any, Any]
) -> None:
    sfn, sqs = aws
    start(sfn, deployed["state_machine_arn"], order(payment_method="pm_card_visa"))
    original = take_message(sqs, deployed)
    for _ in range(2):
        sqs.send_message(QueueUrl=deployed["queue_url"], MessageBody=original["Body"])
    sqs.change_message_visibility(
        QueueUrl=deployed["queue_url"], ReceiptHandle=original["ReceiptHandle"], VisibilityTimeout=0
    )
    # Stripe's latency keeps all three calls in flight together: two workers, three copies.
    fake_stripe.configure(latency_s=0.5)
    for _ in range(2):
        workers.start(deployed, fake_stripe.url, **FAST_RETRIES)

    eventually(lambda: queue_empty(sqs, deployed["queue_url"]), what="all copies deleted")
    creates = fake_stripe.requests(CREATE)
    assert len(creates) >= 3
    assert {r.idempotency_key for r in creates} == {creates[0].idempotency_key}
    assert fake_stripe.stats()["conflicts"] + fake_stripe.stats()["replays"] >= 2
    assert len(fake_stripe.intents()) == 1


def test_a_worker_killed_after_the_stripe_call_leaves_one_payment_intent(
    deployed: dict[str, Any], workers: Workers, fake_stripe: FakeStripe, aws: tuple[Any, Any]
) -> None:
    sfn, sqs = aws
    arn = start(sfn, deployed["state_machine_arn"], order(payment_method="pm_card_visa"))
    # Stripe makes the PaymentIntent, then the answer is held until the worker is dead.
    fake_stripe.add_fault(Fault(kind="hold", hold_s=30))
    first = workers.start(deployed, fake_stripe.url, PAYSTEP_WORKER_VISIBILITY_TIMEOUT_S="3")
    eventually(lambda: fake_stripe.intents(), what="the PaymentIntent exists")
    first.stop(signal.SIGKILL)
    assert queue_counts(sqs, deployed["queue_url"]) == (0, 1), "not deleted: the task is pending"

    workers.start(deployed, fake_stripe.url)
    eventually(lambda: queue_empty(sqs, deployed["queue_url"]), what="redelivered and deleted")
    creates = fake_stripe.requests(CREATE)
    assert len(creates) == 2
    assert creates[0].idempotency_key == creates[1].idempotency_key
    assert creates[1].replayed and creates[1].status == 200
    (intent,) = fake_stripe.intents()
    assert intent["metadata"]["paystep_execution"] == arn
    assert sfn.describe_execution(executionArn=arn)["status"] == "RUNNING"


def test_aws_length_tokens_survive_the_round_trip_through_metadata(
    deploy_fresh: Deployer,
    workers: Workers,
    worker_stack: LocalStack,
    fake_stripe: FakeStripe,
    aws: tuple[Any, Any],
) -> None:
    sfn, sqs = aws
    deployed = deploy_fresh("--payment-heartbeat-s", "0")
    request = order(payment_method="pm_card_visa", metadata={f"k{i}": "v" * 500 for i in range(40)})
    arn = start(sfn, deployed["state_machine_arn"], request)
    # moto's tokens run 1,000-2,048 characters; add one of exactly 2,048 by hand.
    longest = "A/b+" * 511 + "x=y="
    assert len(longest) == 2048
    synthetic = json.loads(take_message(sqs, deployed)["Body"])
    real_token = synthetic["task_token"]
    sqs.send_message(
        QueueUrl=deployed["queue_url"],
        MessageBody=json.dumps(
            {**synthetic, "task_token": longest, "execution_id": synthetic["execution_id"] + "-x"}
        ),
    )
    sqs.send_message(QueueUrl=deployed["queue_url"], MessageBody=json.dumps(synthetic))
    workers.start(deployed, fake_stripe.url)

    intents = eventually(lambda: len(fake_stripe.intents()) == 2 and fake_stripe.intents())
    tokens = {worker_stack.read_token(pi) for pi in intents}
    assert tokens == {real_token, longest}
    for intent in intents:
        assert len(intent["metadata"]) <= 50
        assert all(len(value) <= 500 for value in intent["metadata"].values())
    # The token read back from Stripe resumes the execution, as the webhook will.
    (paid,) = [pi for pi in intents if pi["metadata"]["paystep_execution"] == arn]
    outcome = PaymentOutcome(
        payment_intent_id=paid["id"], status="succeeded", amount_received=1999, currency="usd"
    )
    sfn.send_task_success(taskToken=worker_stack.read_token(paid), output=dump_json(outcome))
    done = wait_done(sfn, arn)
    assert done["status"] == "SUCCEEDED", done
    assert json.loads(done["output"])["payment"]["payment_intent_id"] == paid["id"]


def test_a_decline_fails_the_execution_as_declined(
    deploy_fresh: Deployer, workers: Workers, fake_stripe: FakeStripe, aws: tuple[Any, Any]
) -> None:
    sfn, _ = aws
    deployed = deploy_fresh("--max-attempts", "1")
    workers.start(deployed, fake_stripe.url)
    declined = order(payment_method="pm_card_chargeCustomerFail")
    done = run_to_end(sfn, deployed["state_machine_arn"], declined)
    assert (done["status"], done["error"]) == ("FAILED", errors.DECLINED)
    cause = json.loads(done["cause"])
    assert cause["code"] == "card_declined"
    assert cause["decline_code"] == "generic_decline"
    assert cause["message"] == "Your card was declined."
    assert cause["payment_intent_id"] == fake_stripe.intents()[0]["id"]


def test_a_decline_the_customer_must_fix_leaves_the_task_open(
    deploy_fresh: Deployer, workers: Workers, fake_stripe: FakeStripe, aws: tuple[Any, Any]
) -> None:
    sfn, sqs = aws
    deployed = deploy_fresh("--max-attempts", "3", "--retry-backoff-s", "0")
    workers.start(deployed, fake_stripe.url)
    request = order(payment_method="pm_card_chargeDeclinedExpiredCard")
    arn = start(sfn, deployed["state_machine_arn"], request)

    # The create is answered (its message deleted) without failing the task.
    eventually(lambda: queue_empty(sqs, deployed["queue_url"]) and fake_stripe.intents())
    [intent] = [
        pi for pi in fake_stripe.intents() if pi["metadata"].get(ORDER_KEY) == request["order_id"]
    ]
    assert intent["last_payment_error"]["code"] == "expired_card"
    assert describe_status(sfn, arn) == "RUNNING"
    sfn.stop_execution(executionArn=arn)


def test_the_card_budget_turns_a_retry_final(
    deploy_fresh: Deployer, workers: Workers, fake_stripe: FakeStripe, aws: tuple[Any, Any]
) -> None:
    """Budget 2 attempts on the card: a retry within it, then none (`retry_budget`)."""
    sfn, _ = aws
    deployed = deploy_fresh("--max-attempts", "3", "--retry-backoff-s", "0")
    workers.start(deployed, fake_stripe.url, PAYSTEP_RETRY_BUDGET_VISA_30D="2")
    card = "pm_card_chargeDeclinedInsufficientFunds"

    first = run_to_end(sfn, deployed["state_machine_arn"], order(payment_method=card))
    second = run_to_end(sfn, deployed["state_machine_arn"], order(payment_method=card))

    for done in (first, second):
        assert (done["status"], done["error"]) == ("FAILED", errors.DECLINED)
        cause = json.loads(done["cause"])
        assert (cause["verdict"], cause["reason"]) == ("final", "retry_budget")
        assert cause["decline_code"] == "insufficient_funds"
    assert len(fake_stripe.intents()) == 3  # two for the first order, one for the second


def test_invalid_input_fails_the_execution_without_calling_stripe(
    deployed: dict[str, Any], workers: Workers, fake_stripe: FakeStripe, aws: tuple[Any, Any]
) -> None:
    sfn, sqs = aws
    workers.start(deployed, fake_stripe.url)
    invalid = {"order_id": "ord_bad", "amount": 0, "currency": "usd", "coupon": "FREE"}
    done = run_to_end(sfn, deployed["state_machine_arn"], invalid)
    assert (done["status"], done["error"]) == ("FAILED", errors.INVALID_INPUT)
    assert "amount" in done["cause"] and "coupon: unknown field" in done["cause"]
    eventually(lambda: queue_empty(sqs, deployed["queue_url"]))
    assert fake_stripe.stats()["requests"] == 0


def test_a_customer_stripe_does_not_know_fails_the_execution_as_rejected(
    deployed: dict[str, Any], workers: Workers, fake_stripe: FakeStripe, aws: tuple[Any, Any]
) -> None:
    sfn, _ = aws
    workers.start(deployed, fake_stripe.url)
    unknown = order(customer="cus_missing42", payment_method="pm_card_visa")
    done = run_to_end(sfn, deployed["state_machine_arn"], unknown)
    assert (done["status"], done["error"]) == ("FAILED", errors.REJECTED)
    assert json.loads(done["cause"]) == {
        "code": "resource_missing",
        "param": "customer",
        "message": "No such customer: 'cus_missing42'",
    }
    assert len(fake_stripe.requests(CREATE)) == 1


@pytest.mark.parametrize(
    ("payment_method", "heartbeats"), [("pm_sepa_debit", 1), ("pm_card_visa", 0)]
)
def test_a_pending_payment_sends_one_heartbeat_a_settled_one_none(
    deployed: dict[str, Any],
    workers: Workers,
    fake_stripe: FakeStripe,
    aws: tuple[Any, Any],
    payment_method: str,
    heartbeats: int,
) -> None:
    sfn, sqs = aws
    with SfnProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        workers.start(deployed, fake_stripe.url, AWS_ENDPOINT_URL=proxy.url)
        arn = start(sfn, deployed["state_machine_arn"], order(payment_method=payment_method))
        eventually(lambda: fake_stripe.intents(), what="the PaymentIntent")
        # The message is deleted only once the handler (heartbeat included) is done.
        eventually(lambda: queue_empty(sqs, deployed["queue_url"]), what="the task done")
        assert proxy.forwarded["SendTaskHeartbeat"] == heartbeats
    assert sfn.describe_execution(executionArn=arn)["status"] == "RUNNING"


def test_a_create_redelivered_after_a_key_rotation_adopts_its_payment_intent(
    deployed: dict[str, Any], workers: Workers, worker_stack: LocalStack, fake_stripe: FakeStripe
) -> None:
    """Rule (docs/deploying.md, token keys): a key rotated within an idempotency key's 24 h
    seals other metadata, Stripe answers idempotency_error, and the worker adopts this
    attempt's PaymentIntent instead of failing or creating a second one
    (https://docs.stripe.com/api/idempotent_requests)."""
    sfn, sqs = boto3.client("stepfunctions"), boto3.client("sqs")
    arn = start(sfn, deployed["state_machine_arn"], order())  # no payment method: it waits
    taken = take_message(sqs, deployed)
    sqs.delete_message(QueueUrl=deployed["queue_url"], ReceiptHandle=taken["ReceiptHandle"])
    body = taken["Body"]
    old = worker_stack.token_keys
    new = new_key("rotated")

    sqs.send_message(QueueUrl=deployed["queue_url"], MessageBody=body)
    first = workers.start(deployed, fake_stripe.url, PAYSTEP_TOKEN_KEYS=old)
    eventually(lambda: len(fake_stripe.intents()) == 1, what="the first create")
    eventually(lambda: queue_empty(sqs, deployed["queue_url"]), what="the message deleted")
    first.stop()

    sqs.send_message(QueueUrl=deployed["queue_url"], MessageBody=body)
    second = workers.start(deployed, fake_stripe.url, PAYSTEP_TOKEN_KEYS=f"{new},{old}")
    adopted = eventually(
        lambda: [e for e in second.log_events() if e["event"] == "payment_intent.adopted"],
        what="the redelivered create adopting the PaymentIntent",
    )

    (intent,) = fake_stripe.intents()
    assert adopted[0]["payment_intent"] == intent["id"]
    assert intent["metadata"]["paystep_execution"] == arn
    # Still opened by the rotated list: the old key stays listed while executions use it.
    assert worker_stack.read_token(intent) is not None
    assert describe_status(sfn, arn) == "RUNNING"


def describe_status(sfn: Any, arn: str) -> str:
    status: str = sfn.describe_execution(executionArn=arn)["status"]
    return status
