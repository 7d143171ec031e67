"""`paystep deploy` against moto: creates everything once, a second run changes nothing."""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3

from paystep_local.localstack import LocalStack
from statemachine.deploy import MAX_RECEIVE_COUNT
from statemachine.orders import OPEN_CLAIMS_INDEX


def test_deploy_creates_resources_then_is_idempotent(stack: LocalStack) -> None:
    name = "d" + uuid.uuid4().hex[:8]
    first = stack.deploy("--name", name)
    assert any("state machine" in change for change in first["changed"])
    second = stack.deploy("--name", name)
    assert second["changed"] == []
    assert {k: v for k, v in second.items() if k != "changed"} == {
        k: v for k, v in first.items() if k != "changed"
    }

    sqs: Any = boto3.client("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=first["queue_url"], AttributeNames=["All"])[
        "Attributes"
    ]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["maxReceiveCount"] == MAX_RECEIVE_COUNT
    assert redrive["deadLetterTargetArn"].endswith(f"{name}-tasks-dlq")
    assert attributes["SqsManagedSseEnabled"] == "true"
    tables = boto3.client("dynamodb").list_tables()["TableNames"]
    assert {f"{name}-orders", f"{name}-inventory"} <= set(tables)
    definition = json.loads(
        boto3.client("stepfunctions").describe_state_machine(
            stateMachineArn=first["state_machine_arn"]
        )["definition"]
    )
    assert definition["States"]["CreatePayment"]["Parameters"]["QueueUrl"] == first["queue_url"]
    # The worker's refund alerts go to this topic (PAYSTEP_ALARM_TOPIC_ARN).
    assert first["alarms_topic_arn"].endswith(f":{name}-alarms")
    # Raises NotFound for a topic that does not exist.
    boto3.client("sns").get_topic_attributes(TopicArn=first["alarms_topic_arn"])


def test_changed_tunables_update_the_state_machine(stack: LocalStack) -> None:
    name = "d" + uuid.uuid4().hex[:8]
    stack.deploy("--name", name)
    changed = stack.deploy("--name", name, "--max-attempts", "5")
    assert changed["changed"] == [f"state machine {name}-payment updated"]
    described = boto3.client("stepfunctions").describe_state_machine(
        stateMachineArn=changed["state_machine_arn"]
    )
    config = json.loads(described["definition"])["States"]["Init"]["Parameters"]["config"]
    assert config["max_attempts"] == 5


def test_deploy_refuses_heartbeat_not_below_timeout(stack: LocalStack) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "paystep", "deploy", "--payment-timeout-s", "60",
         "--payment-heartbeat-s", "60"],
        env=stack.env(),
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "payment_heartbeat_s (60) must be below payment_timeout_s (60)" in result.stderr


def _open_claims_index(ddb: Any, table: str) -> dict[str, Any]:
    indexes = ddb.describe_table(TableName=table)["Table"].get("GlobalSecondaryIndexes", [])
    found: dict[str, Any] = next(i for i in indexes if i["IndexName"] == OPEN_CLAIMS_INDEX)
    return found


def test_orders_table_lists_open_claims_through_a_sparse_index(stack: LocalStack) -> None:
    name = "d" + uuid.uuid4().hex[:8]
    deployed = stack.deploy("--name", name)
    ddb: Any = boto3.client("dynamodb")
    index = _open_claims_index(ddb, deployed["orders_table"])
    assert [(k["AttributeName"], k["KeyType"]) for k in index["KeySchema"]] == [
        ("claim_state", "HASH"),
        ("claimed_at", "RANGE"),
    ]
    assert "execution_id" in index["Projection"].get("NonKeyAttributes", []) or (
        index["Projection"]["ProjectionType"] == "ALL"
    )
    inventory = ddb.describe_table(TableName=deployed["inventory_table"])["Table"]
    assert inventory.get("GlobalSecondaryIndexes", []) == []


def test_an_orders_table_from_before_the_index_gets_it_once(stack: LocalStack) -> None:
    name = "d" + uuid.uuid4().hex[:8]
    ddb: Any = boto3.client("dynamodb")
    ddb.create_table(
        TableName=f"{name}-orders",
        KeySchema=[{"AttributeName": "order_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "order_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.put_item(TableName=f"{name}-orders", Item={"order_id": {"S": "ord_old"}})

    first = stack.deploy("--name", name)
    assert f"table {name}-orders index {OPEN_CLAIMS_INDEX} created" in first["changed"]
    assert _open_claims_index(ddb, f"{name}-orders")["IndexStatus"] == "ACTIVE"
    # The rows already there are kept: the index is added, the table is not replaced.
    assert "Item" in ddb.get_item(TableName=f"{name}-orders", Key={"order_id": {"S": "ord_old"}})

    assert stack.deploy("--name", name)["changed"] == []
