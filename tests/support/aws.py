"""Synchronous boto3 helpers for tests that drive the state machine on moto."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aioboto3
import boto3

from paystep_local.polling import ended, eventually
from statemachine.causes import Failure
from statemachine.models import PaymentRequest
from statemachine.orders import AUTHORIZED, OrderRefused, Orders


def clients() -> tuple[Any, Any, Any, Any]:
    """Step Functions, SQS, DynamoDB and SNS clients on the stack in os.environ."""
    return (
        boto3.client("stepfunctions"),
        boto3.client("sqs"),
        boto3.client("dynamodb"),
        boto3.client("sns"),
    )


def start(sfn: Any, machine_arn: str, request: dict[str, Any], name: str | None = None) -> str:
    started = sfn.start_execution(
        stateMachineArn=machine_arn,
        name=name or f"{request.get('order_id', 'x')}-{uuid.uuid4().hex[:8]}",
        input=json.dumps(request),
    )
    arn: str = started["executionArn"]
    return arn


def receive_task(sqs: Any, queue_url: str, task_type: str, timeout_s: float = 30) -> dict[str, Any]:
    """The next task message of `task_type` (deleted from the queue), as a dict."""

    def receive() -> list[dict[str, Any]]:
        answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=1)
        messages: list[dict[str, Any]] = answer.get("Messages", [])
        return messages

    message = eventually(
        receive, timeout_s=timeout_s, interval_s=0, what=f"a {task_type} task on {queue_url}"
    )[0]
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    body: dict[str, Any] = json.loads(message["Body"])
    assert body["type"] == task_type, f"expected {task_type}, got {body['type']}"
    return body


def wait_done(sfn: Any, execution_arn: str, timeout_s: float = 60) -> dict[str, Any]:
    """`DescribeExecution` of the execution once it is no longer running."""

    def describe() -> dict[str, Any]:
        described: dict[str, Any] = sfn.describe_execution(executionArn=execution_arn)
        described.pop("ResponseMetadata", None)
        return described

    return eventually(describe, until=ended, timeout_s=timeout_s, what=f"{execution_arn} to end")


def run_to_end(sfn: Any, machine_arn: str, request: dict[str, Any]) -> dict[str, Any]:
    """Start an execution of `request` and wait for its end: `DescribeExecution`."""
    return wait_done(sfn, start(sfn, machine_arn, request))


def states_entered(sfn: Any, execution_arn: str) -> list[str]:
    events = sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
    return [
        e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e
    ]


class TopicInbox:
    """An SQS queue subscribed to an SNS topic: what the topic published, decoded."""

    def __init__(self, sqs: Any, sns: Any, topic_arn: str) -> None:
        self._sqs = sqs
        self.url = sqs.create_queue(QueueName=f"inbox-{uuid.uuid4().hex[:12]}")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])
        sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=arn["Attributes"]["QueueArn"],
            Attributes={"RawMessageDelivery": "true"},
        )

    def messages(self, wait_s: float = 1) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + wait_s
        while True:
            answer = self._sqs.receive_message(
                QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            )
            batch = answer.get("Messages", [])
            found.extend(json.loads(m["Body"]) for m in batch)
            if not batch and (found or time.monotonic() > deadline):
                return found
            if not batch:
                time.sleep(0.2)


def put_stock(ddb: Any, table: str, sku: str, stock: int) -> None:
    ddb.put_item(TableName=table, Item={"sku": {"S": sku}, "stock": {"N": str(stock)}})


def stock_of(ddb: Any, table: str, sku: str) -> int:
    return int(ddb.get_item(TableName=table, Key={"sku": {"S": sku}})["Item"]["stock"]["N"])


def record_authorized(ddb: Any, table: str, order_id: str, payment_intent_id: str) -> None:
    """Record the order `authorized` with its PaymentIntent, as the ASL's RecordAuthorized."""
    ddb.update_item(
        TableName=table,
        Key={"order_id": {"S": order_id}},
        UpdateExpression="SET #status = :authorized, payment_intent_id = :pi",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={
            ":authorized": {"S": AUTHORIZED},
            ":pi": {"S": payment_intent_id},
        },
    )


def order_row(ddb: Any, table: str, order_id: str) -> dict[str, str]:
    item = ddb.get_item(TableName=table, Key={"order_id": {"S": order_id}}).get("Item", {})
    return {key: next(iter(value.values())) for key, value in item.items()}


ORDER_TASKS = ("reserve_order", "release_order")


def answer_order_task(
    sqs: Any, sfn: Any, deployment: dict[str, Any], task_type: str
) -> dict[str, Any]:
    """Receive the next `reserve_order` / `release_order` task and answer it as the worker
    does, with the worker's own `Orders` on the deployment's tables; the task, as a dict."""
    task = receive_task(sqs, deployment["queue_url"], task_type)
    answer_order_body(sfn, deployment, task)
    return task


def answer_order_body(sfn: Any, deployment: dict[str, Any], task: dict[str, Any]) -> None:
    """Answer one order task (its decoded body) as the worker does."""
    outcome = asyncio.run(_run_order_task(deployment, task))
    if isinstance(outcome, Failure):
        sfn.send_task_failure(
            taskToken=task["task_token"], error=outcome.error, cause=outcome.cause
        )
    else:
        sfn.send_task_success(taskToken=task["task_token"], output=json.dumps(outcome))


async def _run_order_task(
    deployment: dict[str, Any], task: dict[str, Any]
) -> Failure | dict[str, Any]:
    async with aioboto3.Session().client("dynamodb") as ddb:
        orders = Orders(ddb, deployment["orders_table"], deployment["inventory_table"])
        if task["type"] == "release_order":
            released = await orders.release(task["execution_id"], task["request"]["order_id"])
            return {"released": released is not None, "items": released.items if released else 0}
        request = PaymentRequest.model_validate(task["request"])
        try:
            claimed = await orders.reserve(
                task["execution_id"], request.order_id, request.items, task["started_at"]
            )
        except OrderRefused as exc:
            return exc.failure
        return {"claimed": claimed, "items": len(request.items)}
