"""Fixtures of the webhook tests: Stripe-shaped events, waiting executions, the app under test."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from pydantic import SecretStr

from paystep_local.localstack import LOCAL_STRIPE_KEY, LocalStack
from paystep_local.polling import ended, eventually
from paystep_local.prometheus import metric
from paystep_local.signing import signed
from statemachine.card_budget import Card, Recorded
from statemachine.metadata import payment_intent_metadata
from statemachine.models import CheckPaymentTask
from statemachine.seal import Binding, TokenKeys, new_key
from tests.support import aws
from webhook.app import METRICS, create_app
from webhook.mapping import TokenReader
from webhook.notices import ActionRequired
from webhook.settings import WebhookSettings

SECRET = "whsec_" + "a1" * 16
OTHER_SECRET = "whsec_" + "b2" * 16
TOKEN_KEYS = new_key("test1")
KEYS = TokenKeys.parse(TOKEN_KEYS)


@dataclass(frozen=True)
class Waiting:
    """An execution waiting on the task token of its `attempt`."""

    execution_arn: str
    order_id: str
    token: str
    attempt: int


class FakeChecks:
    """Records the payments handed to the worker to check (or raises `error`)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.sent: list[CheckPaymentTask] = []
        self._error = error

    async def check(self, task: CheckPaymentTask) -> None:
        if self._error is not None:
            raise self._error
        self.sent.append(task)


class FakeNotices:
    """Records the notices published to customers (or raises `error`)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.published: list[ActionRequired] = []
        self._error = error

    async def publish(self, notice: ActionRequired) -> None:
        if self._error is not None:
            raise self._error
        self.published.append(notice)


class FakeBudget:
    """Records the declines counted against cards; `room` says if another attempt fits."""

    def __init__(self, *, room: bool = True) -> None:
        self.counted: list[tuple[Card, str]] = []
        self._room = room

    async def record_decline(self, card: Card, attempt: str) -> Recorded:
        self.counted.append((card, attempt))
        return Recorded(room_for_another=self._room, attempts_in_longest_window=len(self.counted))


# A topic no test publishes to unless it makes one: a notice then answers 503.
NO_TOPIC = "arn:aws:sns:us-east-1:123456789012:paystep-test-no-notifications"
# Where no test reaches the queue: a closed success then answers 503, as with SQS down.
UNREACHABLE_QUEUE = "http://127.0.0.1:9/000000000000/none"


def make_settings(
    state_machine_arn: str, queue_url: str = UNREACHABLE_QUEUE, **overrides: Any
) -> WebhookSettings:
    values: dict[str, Any] = {
        "queue_url": queue_url,
        "notifications_topic_arn": NO_TOPIC,
        "card_attempts_table": "paystep-test-no-card-attempts",
        "webhook_secrets": (SecretStr(SECRET),),
        "stripe_api_key": SecretStr(LOCAL_STRIPE_KEY),
        "webhook_ready_cache_s": 0,
        "token_keys": SecretStr(TOKEN_KEYS),
        "state_machine_arn": state_machine_arn,
        **overrides,
    }
    return WebhookSettings(**values)


def machine_of(execution_arn: str) -> str:
    """The state machine ARN of an execution ARN."""
    parts = execution_arn.split(":")
    return ":".join([*parts[:5], "stateMachine", parts[6]])


def reader_for(waiting: Waiting, keys: TokenKeys = KEYS) -> TokenReader:
    return TokenReader(keys, machine_of(waiting.execution_arn))


def sealed_metadata(
    waiting: Waiting,
    *,
    amount: int = 1999,
    currency: str = "usd",
    livemode: bool = False,
    keys: TokenKeys = KEYS,
    caller: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """What the worker writes: the ids and the token sealed for this payment."""
    binding = Binding(waiting.execution_arn, str(waiting.attempt), amount, currency, livemode)
    return payment_intent_metadata(
        keys, waiting.token, binding, order_id=waiting.order_id, caller=caller
    )


def payment_intent(
    waiting: Waiting | None,
    *,
    status: str = "succeeded",
    amount: int = 1999,
    currency: str = "usd",
    **fields: Any,
) -> dict[str, Any]:
    """A PaymentIntent as Stripe serialises it (API 2024+), with the worker's metadata."""
    metadata: dict[str, str] = {"campaign": "winter"}
    if waiting is not None:
        metadata = sealed_metadata(waiting, amount=amount, currency=currency, caller=metadata)
    pi_id = "pi_" + uuid.uuid4().hex[:24]
    return {
        "id": pi_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_received": amount if status == "succeeded" else 0,
        "capture_method": "automatic",
        "client_secret": f"{pi_id}_secret_x",
        "confirmation_method": "automatic",
        "created": int(time.time()),
        "currency": currency,
        "customer": None,
        "last_payment_error": None,
        "latest_charge": "ch_" + uuid.uuid4().hex[:24] if status == "succeeded" else None,
        "livemode": False,
        "metadata": metadata,
        "next_action": None,
        "payment_method": "pm_card_visa",
        "payment_method_types": ["card"],
        "status": status,
        **fields,
    }


def event(event_type: str, obj: Mapping[str, Any], *, livemode: bool = False) -> dict[str, Any]:
    return {
        "id": "evt_" + uuid.uuid4().hex[:24],
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "data": {"object": dict(obj)},
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


# -- Step Functions on moto ------------------------------------------------------------------


def start_waiting(deployment: Mapping[str, Any], amount: int = 1999) -> Waiting:
    """Start an execution and take its create-payment task, as the worker would."""
    sfn = boto3.client("stepfunctions")
    order_id = "ord_" + uuid.uuid4().hex[:12]
    started = sfn.start_execution(
        stateMachineArn=deployment["state_machine_arn"],
        name=order_id,
        input=json.dumps({"order_id": order_id, "amount": amount, "currency": "usd"}),
    )
    _deployment_of[started["executionArn"]] = deployment
    return next_task(deployment, started["executionArn"], attempt=1)


# The deployment of each execution these tests started: its order tasks are answered here.
_deployment_of: dict[str, Mapping[str, Any]] = {}


def _answered_order_task(
    deployment: Mapping[str, Any], execution_arn: str, message: Mapping[str, Any]
) -> bool:
    """Answer `message` as the worker would if it is a reserve / release task of
    `execution_arn` (and delete it); False for any other message."""
    body: dict[str, Any] = json.loads(message["Body"])
    if body.get("execution_id") != execution_arn or body.get("type") not in aws.ORDER_TASKS:
        return False
    aws.answer_order_body(boto3.client("stepfunctions"), dict(deployment), body)
    boto3.client("sqs").delete_message(
        QueueUrl=deployment["queue_url"], ReceiptHandle=message["ReceiptHandle"]
    )
    return True


def _answer_order_tasks(deployment: Mapping[str, Any], execution_arn: str) -> None:
    """Answer the reserve / release tasks of `execution_arn` waiting in the queue; hand
    every other message back at once."""
    sqs = boto3.client("sqs")
    queue_url = deployment["queue_url"]
    answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    for message in answer.get("Messages", []):
        if not _answered_order_task(deployment, execution_arn, message):
            sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )


def next_task(deployment: Mapping[str, Any], execution_arn: str, attempt: int) -> Waiting:
    sqs = boto3.client("sqs")
    queue_url = deployment["queue_url"]

    def take() -> dict[str, Any] | None:
        answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in answer.get("Messages", []):
            if _answered_order_task(deployment, execution_arn, message):
                continue
            body: dict[str, Any] = json.loads(message["Body"])
            if body.get("execution_id") == execution_arn and body.get("attempt") == attempt:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                return body
        return None

    body = eventually(
        take, interval_s=0, what=f"the create_payment task (attempt {attempt}) of {execution_arn}"
    )
    assert body["type"] == "create_payment"
    return Waiting(execution_arn, body["request"]["order_id"], body["task_token"], attempt)


def receive_check(queue_url: str, payment_intent_id: str) -> dict[str, Any]:
    """The check_payment task the webhook queued for `payment_intent_id` (deleted)."""
    sqs = boto3.client("sqs")

    def take() -> dict[str, Any] | None:
        answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in answer.get("Messages", []):
            body: dict[str, Any] = json.loads(message["Body"])
            if body.get("payment_intent_id") == payment_intent_id:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                return body
        return None

    body = eventually(take, interval_s=0, what=f"the check_payment task of {payment_intent_id}")
    assert body["type"] == "check_payment"
    return body


def describe(execution_arn: str) -> dict[str, Any]:
    described: dict[str, Any] = boto3.client("stepfunctions").describe_execution(
        executionArn=execution_arn
    )
    described.pop("ResponseMetadata", None)
    return described


def wait_done(execution_arn: str, timeout_s: float = 30) -> dict[str, Any]:
    """The execution once ended, its release (the worker's part) answered on the way."""
    deployment = _deployment_of.get(execution_arn)

    def described() -> dict[str, Any]:
        now = describe(execution_arn)
        if now["status"] == "RUNNING" and deployment is not None:
            _answer_order_tasks(deployment, execution_arn)
        return now

    return eventually(described, until=ended, timeout_s=timeout_s, what=f"{execution_arn} to end")


def history_types(execution_arn: str) -> list[str]:
    events = boto3.client("stepfunctions").get_execution_history(
        executionArn=execution_arn, maxResults=1000
    )["events"]
    return [e["type"] for e in events]


# -- the app ---------------------------------------------------------------------------------

Post = Callable[..., Any]


class Webhook:
    """The app on a test server, with a way to deliver events as Stripe does."""

    def __init__(self, client: TestClient[Any, Any], app: Any) -> None:
        self.client = client
        self.app = app

    async def deliver(
        self, stripe_event: Mapping[str, Any], secrets: str | list[str] = SECRET, **kw: Any
    ) -> tuple[int, dict[str, Any]]:
        body, headers = signed(stripe_event, secrets, **kw)
        return await self.post(body, headers)

    async def post(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        response = await self.client.post("/webhooks/stripe", data=body, headers=dict(headers))
        try:
            answer = await response.json()
        except Exception:
            answer = {"text": await response.text()}
        return response.status, answer

    def metric(self, name: str, *, default: float | None = None, **labels: str) -> float:
        """A sample of the app's registry; see `paystep_local.prometheus.metric`."""
        text = generate_latest(self.app[METRICS].registry).decode()
        return metric(text, name, default=default, **labels)


async def open_webhook(
    settings: WebhookSettings, **kwargs: Any
) -> tuple[Webhook, TestClient[Any, Any]]:
    app = create_app(settings, **kwargs)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return Webhook(client, app), client


@pytest.fixture(scope="module")
def deployment(deploy_fresh: Any) -> dict[str, Any]:
    # One attempt, no backoff: a decline ends the execution at once.
    deployed: dict[str, Any] = deploy_fresh("--max-attempts", "1", "--retry-backoff-s", "0")
    return deployed


@pytest.fixture
async def webhook(stack: LocalStack, deployment: dict[str, Any]) -> AsyncIterator[Webhook]:
    hook, client = await open_webhook(
        make_settings(deployment["state_machine_arn"], deployment["queue_url"])
    )
    try:
        yield hook
    finally:
        await client.close()


@pytest.fixture
async def webhook_on(stack: LocalStack) -> AsyncIterator[Callable[..., Any]]:
    """`await webhook_on(deployment)`: a webhook whose state machine is that deployment's."""
    opened: list[TestClient[Any, Any]] = []

    async def open_on(deployed: Mapping[str, Any]) -> Webhook:
        hook, client = await open_webhook(
            make_settings(deployed["state_machine_arn"], deployed["queue_url"])
        )
        opened.append(client)
        return hook

    try:
        yield open_on
    finally:
        for client in opened:
            await client.close()


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Blocking boto3 calls off the loop that serves the app."""
    return await asyncio.to_thread(fn, *args)
