"""The webhook app against Step Functions on moto: events resume real waiting executions.

Each test starts an execution of a fresh deployment, takes its create-payment
task as the worker would, and delivers Stripe-signed events whose PaymentIntent
snapshot carries that task's token in its metadata.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from paystep_local.localstack import LocalStack
from paystep_local.polling import eventually
from paystep_local.signing import body_of, signature_header, signed
from tests.support import aws
from tests.webhook.conftest import (
    OTHER_SECRET,
    SECRET,
    Waiting,
    Webhook,
    describe,
    event,
    in_thread,
    make_settings,
    next_task,
    open_webhook,
    payment_intent,
    receive_check,
    start_waiting,
    wait_done,
)

pytestmark = pytest.mark.timeout(120)


# -- the event table -------------------------------------------------------------------------


async def test_succeeded_resumes_the_execution_with_the_payment(
    deployment: dict[str, Any], webhook: Webhook
) -> None:
    waiting = await in_thread(start_waiting, deployment)
    pi = payment_intent(waiting, status="succeeded")
    evt = event("payment_intent.succeeded", pi)

    status, answer = await webhook.deliver(evt)

    assert (status, answer) == (200, {"outcome": "delivered", "action": "succeed"})
    done = await in_thread(wait_done, waiting.execution_arn)
    assert done["status"] == "SUCCEEDED"
    assert json.loads(done["output"])["payment"] == {
        "payment_intent_id": pi["id"],
        "status": "succeeded",
        "amount_received": 1999,
        "currency": "usd",
        "latest_charge": pi["latest_charge"],
        "event_id": evt["id"],
    }
    assert (
        webhook.metric(
            "paystep_webhook_events_total", type="payment_intent.succeeded", outcome="delivered"
        )
        == 1
    )
    # Only deliveries are answers Stripe sees: the probes are not counted.
    assert (await webhook.client.get("/healthz")).status == 200
    assert webhook.metric("paystep_webhook_responses_total", status="200") == 1


async def test_payment_failed_fails_the_execution_as_declined_with_stripes_reason(
    deployment: dict[str, Any], webhook: Webhook
) -> None:
    waiting = await in_thread(start_waiting, deployment)
    pi = payment_intent(
        waiting,
        status="requires_payment_method",
        last_payment_error={
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "insufficient_funds",
            "message": "Your card has insufficient funds.",
            "charge": "ch_declined",
        },
    )
    evt = event("payment_intent.payment_failed", pi)

    status, answer = await webhook.deliver(evt)

    assert (status, answer) == (200, {"outcome": "delivered", "action": "fail"})
    done = await in_thread(wait_done, waiting.execution_arn)
    assert (done["status"], done["error"]) == ("FAILED", "Payment.Declined")
    assert json.loads(done["cause"]) == {
        "payment_intent_id": pi["id"],
        "event_id": evt["id"],
        "code": "card_declined",
        "decline_code": "insufficient_funds",
        "message": "Your card has insufficient funds.",
        "charge": "ch_declined",
        "verdict": "retry",
        "retryable": True,
        "reason": "decline_code:insufficient_funds",
    }


async def test_canceled_fails_the_execution_as_canceled(
    deployment: dict[str, Any], webhook: Webhook
) -> None:
    waiting = await in_thread(start_waiting, deployment)
    pi = payment_intent(waiting, status="canceled", cancellation_reason="abandoned")

    status, answer = await webhook.deliver(event("payment_intent.canceled", pi))

    assert (status, answer) == (200, {"outcome": "delivered", "action": "fail"})
    done = await in_thread(wait_done, waiting.execution_arn)
    assert (done["status"], done["error"]) == ("FAILED", "Payment.Canceled")
    assert json.loads(done["cause"])["cancellation_reason"] == "abandoned"


async def test_an_authorisation_resumes_the_wait_then_the_order_is_recorded_for_capture(
    deployment: dict[str, Any], webhook: Webhook
) -> None:
    # Manual capture: `payment_intent.amount_capturable_updated` says the funds are held
    # (https://docs.stripe.com/api/events/types#event_types-payment_intent.amount_capturable_updated);
    # the order is recorded with its claim kept open, then the capture is asked for.
    waiting = await in_thread(start_waiting, deployment)
    pi = payment_intent(waiting, status="requires_capture", amount_capturable=1999)

    status, answer = await webhook.deliver(event("payment_intent.amount_capturable_updated", pi))

    assert (status, answer) == (200, {"outcome": "delivered", "action": "succeed"})
    capture = await in_thread(_capture_task_of, deployment, waiting.execution_arn)
    assert capture["payment_intent_id"] == pi["id"]
    row = await in_thread(
        aws.order_row, boto3.client("dynamodb"), deployment["orders_table"], waiting.order_id
    )
    assert (row["status"], row["claim_state"]) == ("authorized", "open"), row
    boto3.client("stepfunctions").stop_execution(executionArn=waiting.execution_arn)


def _capture_task_of(deployment: dict[str, Any], execution_arn: str) -> dict[str, Any]:
    sqs = boto3.client("sqs")

    def take() -> dict[str, Any] | None:
        answer = sqs.receive_message(
            QueueUrl=deployment["queue_url"], MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        for message in answer.get("Messages", []):
            body: dict[str, Any] = json.loads(message["Body"])
            if body.get("execution_id") == execution_arn and body["type"] == "capture_payment":
                sqs.delete_message(
                    QueueUrl=deployment["queue_url"], ReceiptHandle=message["ReceiptHandle"]
                )
                return body
        return None

    return eventually(take, interval_s=0, what=f"the capture_payment task of {execution_arn}")


async def test_a_success_whose_task_closed_is_queued_for_the_worker_to_check(
    deployment: dict[str, Any], webhook: Webhook
) -> None:
    waiting = await in_thread(start_waiting, deployment)
    first = payment_intent(waiting)
    assert (await webhook.deliver(event("payment_intent.succeeded", first)))[0] == 200
    await in_thread(wait_done, waiting.execution_arn)
    # A second PaymentIntent of the same attempt paid (the token is the attempt's).
    second = payment_intent(waiting)

    status, answer = await webhook.deliver(event("payment_intent.succeeded", second))

    assert (status, answer) == (
        200,
        {"outcome": "already_closed", "action": "succeed", "check": "queued"},
    )
    check = await in_thread(receive_check, deployment["queue_url"], second["id"])
    assert check["execution_id"] == waiting.execution_arn
    assert (check["order_id"], check["attempt"]) == (waiting.order_id, waiting.attempt)
    assert webhook.metric("paystep_webhook_payment_checks_total") == 1


async def test_a_closed_success_answers_503_when_the_check_cannot_be_queued(
    stack: LocalStack, deployment: dict[str, Any]
) -> None:
    # Stripe redelivers a 503: the payment still reaches the worker once SQS is back.
    hook, client = await open_webhook(make_settings(deployment["state_machine_arn"]))
    try:
        waiting = await in_thread(start_waiting, deployment)
        pi = payment_intent(waiting)
        assert (await hook.deliver(event("payment_intent.succeeded", pi)))[0] == 200
        await in_thread(wait_done, waiting.execution_arn)

        status, answer = await hook.deliver(event("payment_intent.succeeded", pi))

        assert (status, answer) == (503, {"error": "queue_unavailable"})
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("event_type", "pi_status"),
    [
        ("payment_intent.processing", "processing"),
        ("payment_intent.requires_action", "requires_action"),
    ],
)
async def test_progress_events_heartbeat_and_leave_the_execution_waiting(
    deployment: dict[str, Any], webhook: Webhook, event_type: str, pi_status: str
) -> None:
    waiting = await in_thread(start_waiting, deployment)
    pi = payment_intent(waiting, status=pi_status)

    status, answer = await webhook.deliver(event(event_type, pi))

    assert (status, answer) == (200, {"outcome": "delivered", "action": "heartbeat"})
    assert webhook.metric("paystep_webhook_events_total", type=event_type, outcome="delivered") == 1
    assert (await in_thread(describe, waiting.execution_arn))["status"] == "RUNNING"
    # The token is still open: the outcome that follows resumes the execution.
    status, answer = await webhook.deliver(
        event("payment_intent.succeeded", {**pi, "status": "succeeded", "amount_received": 1999})
    )
    assert answer["outcome"] == "delivered"
    assert (await in_thread(wait_done, waiting.execution_arn))["status"] == "SUCCEEDED"


@pytest.fixture(scope="module")
def short_heartbeat(deploy_fresh: Any) -> dict[str, Any]:
    deployed: dict[str, Any] = deploy_fresh(
        "--payment-heartbeat-s", "2", "--payment-timeout-s", "60"
    )
    return deployed


async def test_heartbeats_keep_a_payment_alive_past_its_heartbeat_window(
    short_heartbeat: dict[str, Any], webhook_on: Any
) -> None:
    deployment = short_heartbeat
    webhook = await webhook_on(deployment)
    waiting = await in_thread(start_waiting, deployment)
    processing = event("payment_intent.processing", payment_intent(waiting, status="processing"))
    started = time.monotonic()

    while time.monotonic() - started < 4:  # twice the window
        _, answer = await webhook.deliver(processing)
        assert answer == {"outcome": "delivered", "action": "heartbeat"}
        await in_thread(time.sleep, 0.7)

    described = await in_thread(describe, waiting.execution_arn)
    assert described["status"] == "RUNNING"
    assert not any(
        e["type"] == "TaskTimedOut" for e in await in_thread(_history, waiting.execution_arn)
    )


@pytest.mark.parametrize(
    "pi_metadata",
    [{}, {"order_id": "ord_from_elsewhere"}],
    ids=["no-metadata", "someone-elses-metadata"],
)
async def test_payment_intents_without_our_token_are_acknowledged_and_ignored(
    webhook: Webhook, pi_metadata: dict[str, str]
) -> None:
    pi = payment_intent(None, status="succeeded", metadata=pi_metadata)

    status, answer = await webhook.deliver(event("payment_intent.succeeded", pi))

    assert (status, answer) == (200, {"outcome": "ignored", "reason": "no_token"})


async def test_other_event_types_are_acknowledged_and_ignored(webhook: Webhook) -> None:
    customer = {"id": "cus_123", "object": "customer", "metadata": {}}

    status, answer = await webhook.deliver(event("customer.created", customer))

    assert (status, answer) == (200, {"outcome": "ignored", "reason": "unhandled_type"})
    assert webhook.metric("paystep_webhook_events_total", type="other", outcome="ignored") == 1


# -- duplicates, late and stale events --------------------------------------------------------


async def test_the_same_event_three_times_resumes_once_and_acknowledges_all(
    deployment: dict[str, Any], webhook: Webhook
) -> None:
    waiting, evt = await _succeeded(deployment)

    answers = [await webhook.deliver(evt) for _ in range(3)]

    assert [status for status, _ in answers] == [200, 200, 200]
    assert [answer["outcome"] for _, answer in answers] == [
        "delivered",
        "already_closed",
        "already_closed",
    ]
    assert webhook.metric("paystep_webhook_already_closed_total", action="succeed") == 2
    done = await in_thread(wait_done, waiting.execution_arn)
    assert done["status"] == "SUCCEEDED"
    assert json.loads(done["output"])["payment"]["event_id"] == evt["id"]


async def test_a_decline_of_an_old_attempt_after_the_retry_began_changes_nothing(
    deploy_fresh: Any, webhook_on: Any
) -> None:
    deployment = await in_thread(deploy_fresh, "--max-attempts", "2", "--retry-backoff-s", "0")
    webhook = await webhook_on(deployment)
    first = await in_thread(start_waiting, deployment)
    declined = payment_intent(
        first,
        status="requires_payment_method",
        last_payment_error={"type": "card_error", "code": "card_declined"},
    )
    # The worker saw the decline on confirm and failed attempt 1 itself; attempt 2 began.
    boto3.client("stepfunctions").send_task_failure(
        taskToken=first.token, error="Payment.Declined", cause="{}"
    )
    second = await in_thread(next_task, deployment, first.execution_arn, 2)
    assert second.token != first.token

    status, answer = await webhook.deliver(event("payment_intent.payment_failed", declined))

    assert (status, answer) == (200, {"outcome": "already_closed", "action": "fail"})
    assert (await in_thread(describe, first.execution_arn))["status"] == "RUNNING"
    retry_pi = payment_intent(second, status="succeeded")
    status, answer = await webhook.deliver(event("payment_intent.succeeded", retry_pi))
    assert answer["outcome"] == "delivered"
    done = await in_thread(wait_done, first.execution_arn)
    assert done["status"] == "SUCCEEDED"
    output = json.loads(done["output"])
    assert (output["attempts"], output["payment"]["payment_intent_id"]) == (2, retry_pi["id"])


async def test_an_event_with_the_token_of_a_finished_execution_changes_nothing(
    deployment: dict[str, Any], webhook: Webhook
) -> None:
    waiting = await in_thread(start_waiting, deployment)
    pi = payment_intent(waiting)
    await webhook.deliver(event("payment_intent.succeeded", pi))
    finished = await in_thread(wait_done, waiting.execution_arn)
    assert finished["status"] == "SUCCEEDED"

    # A late event of the same PaymentIntent still carries the old, now stale, token.
    status, answer = await webhook.deliver(
        event("payment_intent.canceled", {**pi, "status": "canceled"})
    )

    assert (status, answer) == (200, {"outcome": "already_closed", "action": "fail"})
    assert await in_thread(describe, waiting.execution_arn) == finished
    assert webhook.metric("paystep_webhook_already_closed_total", action="fail") == 1


async def test_a_success_after_the_wait_timed_out_goes_to_the_worker_and_changes_nothing(
    short_heartbeat: dict[str, Any], webhook_on: Any
) -> None:
    webhook = await webhook_on(short_heartbeat)
    waiting = await in_thread(start_waiting, short_heartbeat)
    # No heartbeat within 2 s: the wait times out and the execution goes on to cancel.
    await in_thread(_wait_for_history, waiting.execution_arn, "TaskTimedOut")
    pi = payment_intent(waiting)

    status, answer = await webhook.deliver(event("payment_intent.succeeded", pi))

    # The cancel task may still adopt it; the worker's check keeps it or refunds it.
    assert (status, answer) == (
        200,
        {"outcome": "already_closed", "action": "succeed", "check": "queued"},
    )
    assert (await in_thread(describe, waiting.execution_arn))["status"] == "RUNNING"
    assert "CancelPayment" in _states_entered(waiting.execution_arn)
    check = await in_thread(receive_check, short_heartbeat["queue_url"], pi["id"])
    assert check["execution_id"] == waiting.execution_arn


def _history(execution_arn: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = boto3.client("stepfunctions").get_execution_history(
        executionArn=execution_arn, maxResults=1000
    )["events"]
    return events


async def _succeeded(deployment: dict[str, Any]) -> tuple[Waiting, dict[str, Any]]:
    """An execution waiting on its payment, and the event of the payment's success."""
    waiting = await in_thread(start_waiting, deployment)
    return waiting, event("payment_intent.succeeded", payment_intent(waiting))


def _states_entered(execution_arn: str) -> list[str]:
    return [
        e["stateEnteredEventDetails"]["name"]
        for e in _history(execution_arn)
        if "stateEnteredEventDetails" in e
    ]


def _wait_for_history(execution_arn: str, event_type: str, timeout_s: float = 15) -> None:
    eventually(
        lambda: any(e["type"] == event_type for e in _history(execution_arn)),
        timeout_s=timeout_s,
        what=f"{event_type} in the history of {execution_arn}",
    )


# -- signatures --------------------------------------------------------------------------------


def _tampered(body: bytes) -> bytes:
    doc = json.loads(body)
    doc["data"]["object"]["amount_received"] = 1
    return json.dumps(doc, indent=2).encode()


Delivery = Callable[[bytes], tuple[bytes, dict[str, str]]]

BAD_DELIVERIES: dict[str, Delivery] = {
    "missing-header": lambda body: (body, {}),
    "empty-header": lambda body: (body, {"Stripe-Signature": ""}),
    "garbled-header": lambda body: (body, {"Stripe-Signature": "v0=abc"}),
    "wrong-secret": lambda body: (body, {"Stripe-Signature": signature_header(body, OTHER_SECRET)}),
    "tampered-body": lambda body: (
        _tampered(body),
        {"Stripe-Signature": signature_header(body, SECRET)},
    ),
    "timestamp-301s-old": lambda body: (
        body,
        {"Stripe-Signature": signature_header(body, SECRET, int(time.time()) - 301)},
    ),
}


@pytest.mark.parametrize("mode", list(BAD_DELIVERIES))
async def test_a_bad_signature_is_refused_and_changes_nothing(
    deployment: dict[str, Any], webhook: Webhook, mode: str
) -> None:
    waiting = await in_thread(start_waiting, deployment)
    good = event("payment_intent.succeeded", payment_intent(waiting))
    body, headers = BAD_DELIVERIES[mode](body_of(good))

    status, answer = await webhook.post(body, headers)

    assert (status, answer) == (400, {"error": "invalid_signature"})
    assert (
        sum(
            webhook.metric("paystep_webhook_signature_failures_total", reason=reason, default=0)
            for reason in ("missing_header", "malformed_header", "mismatch", "stale_timestamp")
        )
        == 1
    )
    assert webhook.metric("paystep_webhook_responses_total", status="400") == 1
    # The token was not used: the genuine delivery still resumes the execution.
    status, answer = await webhook.deliver(good)
    assert (status, answer["outcome"]) == (200, "delivered")


async def test_a_timestamp_inside_the_tolerance_is_accepted(
    deployment: dict[str, Any], webhook: Webhook
) -> None:
    _, evt = await _succeeded(deployment)

    status, answer = await webhook.deliver(evt, timestamp=int(time.time()) - 240)

    assert (status, answer["outcome"]) == (200, "delivered")


async def test_rotation_accepts_the_secret_configured_second(
    stack: LocalStack, deployment: dict[str, Any]
) -> None:
    settings = make_settings(
        deployment["state_machine_arn"],
        deployment["queue_url"],
        webhook_secrets=(OTHER_SECRET, SECRET),
    )
    hook, client = await open_webhook(settings)
    try:
        waiting = await in_thread(start_waiting, deployment)

        status, answer = await hook.deliver(
            event("payment_intent.succeeded", payment_intent(waiting)), secrets=SECRET
        )

        assert (status, answer["outcome"]) == (200, "delivered")
    finally:
        await client.close()


async def test_rotation_accepts_a_header_whose_matching_signature_comes_second(
    deployment: dict[str, Any], webhook: Webhook
) -> None:
    _, evt = await _succeeded(deployment)

    # Stripe signs with every active secret of the endpoint while a rotation runs.
    status, answer = await webhook.deliver(evt, secrets=[OTHER_SECRET, SECRET])

    assert (status, answer["outcome"]) == (200, "delivered")


# -- bodies and methods ------------------------------------------------------------------------


async def test_an_oversized_body_is_refused_before_it_is_verified(
    deployment: dict[str, Any], webhook: Webhook
) -> None:
    waiting, evt = await _succeeded(deployment)
    evt["padding"] = "x" * (512 * 1024)
    body, headers = signed(evt, SECRET)

    status, _ = await webhook.post(body, headers)

    assert status == 413
    assert (
        webhook.metric("paystep_webhook_signature_failures_total", reason="mismatch", default=0)
        == 0
    )
    assert (await in_thread(describe, waiting.execution_arn))["status"] == "RUNNING"


async def test_an_oversized_chunked_body_is_refused(webhook: Webhook) -> None:
    async def chunks() -> Any:
        for _ in range(70):
            yield b"x" * 8192

    response = await webhook.client.post(
        "/webhooks/stripe", data=chunks(), headers={"Stripe-Signature": "t=1,v1=ab"}
    )

    assert response.status == 413


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"id": "evt_1", "object": "event"}', b'{"object": "charge"}'],
    ids=["not-json", "not-an-object", "not-an-event", "a-charge"],
)
async def test_a_signed_body_that_is_not_an_event_is_refused(webhook: Webhook, body: bytes) -> None:
    status, answer = await webhook.post(body, {"Stripe-Signature": signature_header(body, SECRET)})

    assert (status, answer) == (400, {"error": "malformed_event"})
    assert webhook.metric("paystep_webhook_events_total", type="other", outcome="malformed") == 1


async def test_a_body_that_is_not_utf8_is_refused_as_unsigned(webhook: Webhook) -> None:
    # Stripe signs the text of the body; bytes that are not UTF-8 were never signed by it.
    header = f"t={int(time.time())},v1=" + "0" * 64

    status, answer = await webhook.post(b"\xff\xfe{}", {"Stripe-Signature": header})

    assert (status, answer) == (400, {"error": "invalid_signature"})
    assert webhook.metric("paystep_webhook_signature_failures_total", reason="not_utf8") == 1


async def test_a_payment_intent_event_without_a_payment_intent_is_refused(
    deployment: dict[str, Any], webhook: Webhook
) -> None:
    waiting = await in_thread(start_waiting, deployment)
    charge = {**payment_intent(waiting), "object": "charge", "id": "ch_1"}

    status, answer = await webhook.deliver(event("payment_intent.succeeded", charge))

    assert (status, answer) == (400, {"error": "malformed_event"})
    assert (await in_thread(describe, waiting.execution_arn))["status"] == "RUNNING"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_other_methods_are_not_allowed(webhook: Webhook, method: str) -> None:
    response = await webhook.client.request(method, "/webhooks/stripe")

    assert response.status == 405


async def test_a_live_event_is_refused_by_a_test_mode_service(
    deployment: dict[str, Any], webhook: Webhook
) -> None:
    waiting = await in_thread(start_waiting, deployment)

    status, answer = await webhook.deliver(
        event("payment_intent.succeeded", payment_intent(waiting), livemode=True)
    )

    assert (status, answer) == (400, {"error": "wrong_mode"})
    status, answer = await webhook.deliver(
        event("payment_intent.succeeded", payment_intent(waiting))
    )
    assert answer["outcome"] == "delivered"


# -- probes ------------------------------------------------------------------------------------


async def test_probes_answer_on_the_public_port(webhook: Webhook) -> None:
    assert (await webhook.client.get("/healthz")).status == 200
    assert (await webhook.client.get("/readyz")).status == 200
