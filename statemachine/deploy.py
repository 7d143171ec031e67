"""Create or update paystep's AWS side, idempotently: queues, tables, topics, role, machine.

Whatever the standard AWS environment points at (`AWS_ENDPOINT_URL` for the local
stack). A second run with the same options changes nothing and says so.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AsyncExitStack
from typing import Any, Final

import structlog
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from paystep_common.clients import aws_config, aws_session
from paystep_common.retry import CONTROL_PLANE
from statemachine.asl import Resources, Tunables, render
from statemachine.orders import OPEN_CLAIMS_INDEX

log = structlog.get_logger("paystep.deploy")

# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/quotas-messages.html
SQS_MAX_RETENTION_S: Final = 14 * 86_400
SQS_MAX_LONG_POLL_S: Final = 20
TASK_VISIBILITY_TIMEOUT_S: Final = 120
# Transient Stripe failures come back through visibility with backoff (capped at 15 min
# by the worker): 20 receives ride out a few hours of outage before the DLQ.
MAX_RECEIVE_COUNT: Final = 20
# `paystep reconcile` lists the open claims from this sparse index: only a claimed row
# carries `claim_state`. It reads the order (the table key, always projected), the
# execution and the claim time.
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-indexes-general-sparse-indexes.html
OPEN_CLAIMS_KEY: Final = (("claim_state", "HASH"), ("claimed_at", "RANGE"))
OPEN_CLAIMS_PROJECTED: Final = ("execution_id",)
INDEX_POLL_S: Final = 2.0
# Adding an index to a full table backfills it first; past this, deploy goes on and says so.
INDEX_WAIT_S: Final = 600.0
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/TTL.html: epoch seconds.
CARD_ATTEMPTS_TTL_ATTRIBUTE: Final = "expires_at"


class DeployOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="paystep", pattern=r"^[A-Za-z0-9-]{1,40}$")
    role_arn: str | None = None
    tunables: Tunables = Tunables()


class DeployResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    state_machine_arn: str
    queue_url: str
    dead_letter_queue_url: str
    orders_table: str
    inventory_table: str
    # Declined and retried attempts per card (the worker's retry budget), TTL `expires_at`.
    card_attempts_table: str
    receipts_topic_arn: str
    notifications_topic_arn: str
    # Where a person is told to act: the worker reports every refund it makes here.
    alarms_topic_arn: str
    role_arn: str
    changed: list[str]


async def deploy(options: DeployOptions) -> DeployResult:
    changed: list[str] = []
    session = aws_session()
    config = aws_config(CONTROL_PLANE)
    async with AsyncExitStack() as stack:
        sqs = await stack.enter_async_context(session.client("sqs", config=config))
        ddb = await stack.enter_async_context(session.client("dynamodb", config=config))
        sns = await stack.enter_async_context(session.client("sns", config=config))
        sfn = await stack.enter_async_context(session.client("stepfunctions", config=config))
        iam = await stack.enter_async_context(session.client("iam", config=config))
        sts = await stack.enter_async_context(session.client("sts", config=config))

        dlq_url, dlq_arn = await _queue(sqs, f"{options.name}-tasks-dlq", {}, changed)
        redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT})
        queue_url, queue_arn = await _queue(
            sqs,
            f"{options.name}-tasks",
            {
                "VisibilityTimeout": str(TASK_VISIBILITY_TIMEOUT_S),
                "ReceiveMessageWaitTimeSeconds": str(SQS_MAX_LONG_POLL_S),
                "RedrivePolicy": redrive,
            },
            changed,
        )
        orders = await _table(ddb, f"{options.name}-orders", "order_id", changed, open_claims=True)
        await _open_claims_index(ddb, orders, changed)
        inventory = await _table(ddb, f"{options.name}-inventory", "sku", changed)
        card_attempts = await _table(ddb, f"{options.name}-card-attempts", "card", changed)
        await _expire(ddb, card_attempts, CARD_ATTEMPTS_TTL_ATTRIBUTE, changed)
        receipts = (await sns.create_topic(Name=f"{options.name}-receipts"))["TopicArn"]
        notifications = (await sns.create_topic(Name=f"{options.name}-notifications"))["TopicArn"]
        alarms = (await sns.create_topic(Name=f"{options.name}-alarms"))["TopicArn"]

        resources = Resources(
            TaskQueueUrl=queue_url,
            OrdersTable=orders,
            ReceiptsTopicArn=receipts,
            NotificationsTopicArn=notifications,
        )
        account = (await sts.get_caller_identity())["Account"]
        role_arn = options.role_arn or await _role(
            iam, f"{options.name}-state-machine", account, queue_arn, resources, changed
        )
        machine_arn = await _state_machine(
            sfn,
            f"{options.name}-payment",
            render(resources, options.tunables),
            role_arn,
            changed,
        )
    result = DeployResult(
        state_machine_arn=machine_arn,
        queue_url=queue_url,
        dead_letter_queue_url=dlq_url,
        orders_table=orders,
        inventory_table=inventory,
        card_attempts_table=card_attempts,
        receipts_topic_arn=receipts,
        notifications_topic_arn=notifications,
        alarms_topic_arn=alarms,
        role_arn=role_arn,
        changed=changed,
    )
    log.info("deploy.done", state_machine=machine_arn, changed=changed)
    return result


async def _queue(
    sqs: Any, name: str, attributes: dict[str, str], changed: list[str]
) -> tuple[str, str]:
    wanted = {
        "MessageRetentionPeriod": str(SQS_MAX_RETENTION_S),
        "SqsManagedSseEnabled": "true",
        **attributes,
    }
    try:
        url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in {
            "AWS.SimpleQueueService.NonExistentQueue",
            "QueueDoesNotExist",
        }:
            raise
        url = (await sqs.create_queue(QueueName=name, Attributes=wanted))["QueueUrl"]
        changed.append(f"queue {name} created")
    current = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))["Attributes"]
    drift = {key: value for key, value in wanted.items() if not _same(current.get(key), value)}
    if drift:
        await sqs.set_queue_attributes(QueueUrl=url, Attributes=drift)
        changed.append(f"queue {name} attributes {sorted(drift)}")
    return url, current["QueueArn"]


def _same(current: str | None, wanted: str) -> bool:
    if current is None:
        return False
    if wanted.startswith("{"):
        return bool(json.loads(current) == json.loads(wanted))
    return current.lower() == wanted.lower()


async def _table(
    ddb: Any, name: str, key: str, changed: list[str], *, open_claims: bool = False
) -> str:
    try:
        await ddb.describe_table(TableName=name)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
        keys = [{"AttributeName": key, "AttributeType": "S"}]
        indexes: dict[str, Any] = {}
        if open_claims:
            keys = _attribute_definitions(keys)
            indexes["GlobalSecondaryIndexes"] = [_open_claims_spec()]
        await ddb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            AttributeDefinitions=keys,
            BillingMode="PAY_PER_REQUEST",
            SSESpecification={"Enabled": True},
            **indexes,
        )
        await ddb.get_waiter("table_exists").wait(
            TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )
        changed.append(f"table {name} created")
    return name


async def _open_claims_index(ddb: Any, table: str, changed: list[str]) -> None:
    """Add the sparse `open-claims` index to an orders table made before it existed."""
    described = (await ddb.describe_table(TableName=table))["Table"]
    if any(
        index["IndexName"] == OPEN_CLAIMS_INDEX
        for index in described.get("GlobalSecondaryIndexes", [])
    ):
        return
    # One index per UpdateTable, and AttributeDefinitions must name the new index's keys
    # (the table's own key is repeated: some implementations replace the whole list).
    # https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_UpdateTable.html
    await ddb.update_table(
        TableName=table,
        AttributeDefinitions=_attribute_definitions(described["AttributeDefinitions"]),
        GlobalSecondaryIndexUpdates=[{"Create": _open_claims_spec()}],
    )
    changed.append(f"table {table} index {OPEN_CLAIMS_INDEX} created")
    await _index_active(ddb, table)


def _open_claims_spec() -> dict[str, Any]:
    return {
        "IndexName": OPEN_CLAIMS_INDEX,
        "KeySchema": [{"AttributeName": name, "KeyType": kind} for name, kind in OPEN_CLAIMS_KEY],
        "Projection": {
            "ProjectionType": "INCLUDE",
            "NonKeyAttributes": list(OPEN_CLAIMS_PROJECTED),
        },
    }


def _attribute_definitions(current: list[dict[str, str]]) -> list[dict[str, str]]:
    names = {definition["AttributeName"] for definition in current}
    added = [{"AttributeName": name, "AttributeType": "S"} for name, _ in OPEN_CLAIMS_KEY]
    return [
        *current,
        *(definition for definition in added if definition["AttributeName"] not in names),
    ]


async def _expire(ddb: Any, table: str, attribute: str, changed: list[str]) -> None:
    """Turn on TTL by `attribute`; DynamoDB refuses to turn on what is on already."""
    described = await ddb.describe_time_to_live(TableName=table)
    current = described.get("TimeToLiveDescription", {})
    if current.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
        return
    await ddb.update_time_to_live(
        TableName=table,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute},
    )
    changed.append(f"table {table} ttl {attribute}")


async def _index_active(ddb: Any, table: str) -> None:
    """Wait for the new index to finish its backfill; a query of a CREATING index fails."""
    deadline = time.monotonic() + INDEX_WAIT_S
    while True:
        described = (await ddb.describe_table(TableName=table))["Table"]
        status = next(
            index.get("IndexStatus")
            for index in described.get("GlobalSecondaryIndexes", [])
            if index["IndexName"] == OPEN_CLAIMS_INDEX
        )
        if status == "ACTIVE":
            return
        if time.monotonic() > deadline:
            log.warning("deploy.index_not_active_yet", table=table, index=OPEN_CLAIMS_INDEX,
                        status=status)  # fmt: skip
            return
        await asyncio.sleep(INDEX_POLL_S)


def _state_machine_policy(queue_arn: str, resources: Resources, account: str) -> str:
    """Least privilege: send to its queue, update the orders table, publish to its topics.

    The stock is the worker's to take and put back; the machine only records the end.
    """
    region = queue_arn.split(":")[3]
    orders_arn = f"arn:aws:dynamodb:{region}:{account}:table/{resources.OrdersTable}"
    statements = [
        {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": queue_arn},
        {"Effect": "Allow", "Action": "dynamodb:UpdateItem", "Resource": orders_arn},
        {
            "Effect": "Allow",
            "Action": "sns:Publish",
            "Resource": [resources.ReceiptsTopicArn, resources.NotificationsTopicArn],
        },
    ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


async def _role(
    iam: Any,
    name: str,
    account: str,
    queue_arn: str,
    resources: Resources,
    changed: list[str],
) -> str:
    trust = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "states.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                    "Condition": {"StringEquals": {"aws:SourceAccount": account}},
                }
            ],
        }
    )
    try:
        role_arn: str = (await iam.get_role(RoleName=name))["Role"]["Arn"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "NoSuchEntity":
            raise
        role_arn = (await iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust))["Role"][
            "Arn"
        ]
        changed.append(f"role {name} created")
    policy = _state_machine_policy(queue_arn, resources, account)
    try:
        current = (await iam.get_role_policy(RoleName=name, PolicyName="paystep"))["PolicyDocument"]
        current_doc = json.loads(current) if isinstance(current, str) else current
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "NoSuchEntity":
            raise
        current_doc = None
    if current_doc != json.loads(policy):
        await iam.put_role_policy(RoleName=name, PolicyName="paystep", PolicyDocument=policy)
        changed.append(f"role {name} policy")
    return role_arn


async def _state_machine(
    sfn: Any, name: str, definition: str, role_arn: str, changed: list[str]
) -> str:
    paginator = sfn.get_paginator("list_state_machines")
    async for page in paginator.paginate():
        for machine in page["stateMachines"]:
            if machine["name"] != name:
                continue
            arn: str = machine["stateMachineArn"]
            current = await sfn.describe_state_machine(stateMachineArn=arn)
            if json.loads(current["definition"]) != json.loads(definition) or (
                current["roleArn"] != role_arn
            ):
                await sfn.update_state_machine(
                    stateMachineArn=arn, definition=definition, roleArn=role_arn
                )
                changed.append(f"state machine {name} updated")
            return arn
    created = await sfn.create_state_machine(
        name=name, definition=definition, roleArn=role_arn, type="STANDARD"
    )
    changed.append(f"state machine {name} created")
    arn = created["stateMachineArn"]
    return arn
