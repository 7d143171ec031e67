"""Step Functions misbehaving behind the webhook, through a fault-injecting proxy in front of moto."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from paystep_common.clients import aws_session
from paystep_local.localstack import LocalStack
from paystep_local.sfn_proxy import SfnProxy
from tests.webhook.conftest import (
    Webhook,
    describe,
    event,
    in_thread,
    make_settings,
    open_webhook,
    payment_intent,
    start_waiting,
    wait_done,
)
from webhook.app import sfn_config

pytestmark = pytest.mark.timeout(120)

# The Step Functions tuning every test here counts with; the state machine is the deployment's.
SETTINGS = make_settings("arn:aws:states:us-east-1:123456789012:stateMachine:unused")


@pytest.fixture
async def proxied(
    stack: LocalStack, deployment: dict[str, Any]
) -> AsyncIterator[tuple[Webhook, SfnProxy]]:
    """The webhook whose Step Functions client goes through an `SfnProxy`."""
    settings = SETTINGS.model_copy(update={"state_machine_arn": deployment["state_machine_arn"]})
    with SfnProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        client_cm = aws_session().client(
            "stepfunctions", endpoint_url=proxy.url, config=sfn_config(settings)
        )
        async with client_cm as sfn:
            hook, client = await open_webhook(settings, sfn_client=sfn)
            try:
                yield hook, proxy
            finally:
                await client.close()


async def test_throttling_answers_503_and_the_redelivery_resumes_the_execution(
    deployment: dict[str, Any], proxied: tuple[Webhook, SfnProxy]
) -> None:
    webhook, proxy = proxied
    waiting = await in_thread(start_waiting, deployment)
    evt = event("payment_intent.succeeded", payment_intent(waiting))
    # Throttled on every attempt the SDK makes, retries included.
    proxy.throttle("SendTaskSuccess", times=SETTINGS.webhook_sfn_attempts)

    status, answer = await webhook.deliver(evt)

    assert (status, answer) == (503, {"error": "throttled"})
    assert proxy.injected["SendTaskSuccess"] == SETTINGS.webhook_sfn_attempts
    assert proxy.forwarded["SendTaskSuccess"] == 0
    assert (await in_thread(describe, waiting.execution_arn))["status"] == "RUNNING"
    assert (
        webhook.metric(
            "paystep_webhook_events_total",
            type="payment_intent.succeeded",
            outcome="callback_failed",
        )
        == 1
    )
    assert (
        webhook.metric(
            "paystep_callback_failures_total", action="succeed", code="ThrottlingException"
        ),
        webhook.metric("paystep_webhook_responses_total", status="503"),
    ) == (1, 1)

    # Stripe delivers the same event again later, signed anew.
    status, answer = await webhook.deliver(evt)

    assert (status, answer) == (200, {"outcome": "delivered", "action": "succeed"})
    assert (await in_thread(wait_done, waiting.execution_arn))["status"] == "SUCCEEDED"


async def test_throttling_the_sdk_rides_out_is_answered_200(
    deployment: dict[str, Any], proxied: tuple[Webhook, SfnProxy]
) -> None:
    webhook, proxy = proxied
    waiting = await in_thread(start_waiting, deployment)
    proxy.throttle("SendTaskSuccess", times=SETTINGS.webhook_sfn_attempts - 1)

    status, answer = await webhook.deliver(
        event("payment_intent.succeeded", payment_intent(waiting))
    )

    assert (status, answer) == (200, {"outcome": "delivered", "action": "succeed"})
    assert proxy.forwarded["SendTaskSuccess"] == 1


async def test_a_failing_step_functions_answers_503(
    deployment: dict[str, Any], proxied: tuple[Webhook, SfnProxy]
) -> None:
    webhook, proxy = proxied
    waiting = await in_thread(start_waiting, deployment)
    proxy.fail("SendTaskFailure", times=10, status=500, code="InternalFailure")

    status, answer = await webhook.deliver(
        event("payment_intent.canceled", payment_intent(waiting, status="canceled"))
    )

    assert (status, answer) == (503, {"error": "step_functions_unavailable"})
    assert (await in_thread(describe, waiting.execution_arn))["status"] == "RUNNING"


async def test_access_denied_on_our_own_state_machine_answers_503_not_2xx(
    deployment: dict[str, Any], proxied: tuple[Webhook, SfnProxy]
) -> None:
    """Rule: a wrong IAM policy must not acknowledge events and drop them (app.py: 503 only
    when Step Functions did not take the callback); Stripe redelivers, the execution waits."""
    webhook, proxy = proxied
    waiting = await in_thread(start_waiting, deployment)
    proxy.fail("SendTaskSuccess", times=10, status=400, code="AccessDeniedException")

    status, answer = await webhook.deliver(
        event("payment_intent.succeeded", payment_intent(waiting))
    )

    assert (status, answer) == (503, {"error": "step_functions_unavailable"})
    assert (await in_thread(describe, waiting.execution_arn))["status"] == "RUNNING"
    assert (
        webhook.metric(
            "paystep_callback_failures_total", action="succeed", code="AccessDeniedException"
        )
        == 1
    )


async def test_readyz_fails_while_step_functions_cannot_be_reached(
    proxied: tuple[Webhook, SfnProxy],
) -> None:
    webhook, proxy = proxied
    assert (await webhook.client.get("/readyz")).status == 200

    proxy.fail("ListStateMachines", times=SETTINGS.webhook_sfn_attempts, status=503)

    assert (await webhook.client.get("/readyz")).status == 503
    assert (await webhook.client.get("/healthz")).status == 200
    assert (await webhook.client.get("/readyz")).status == 200
