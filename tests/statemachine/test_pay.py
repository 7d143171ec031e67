"""`paystep pay`: local validation first, an execution named after the order, --wait."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from typing import Any

import boto3
import pytest

from paystep_local.localstack import LocalStack
from tests.conftest import Deployer
from tests.support.aws import answer_order_task, receive_task


@pytest.fixture(scope="module")
def deployed(deploy_fresh: Deployer) -> dict[str, Any]:
    return deploy_fresh("--max-attempts", "1")


def _pay(
    stack: LocalStack, deployed: dict[str, Any], *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paystep", "pay", "--state-machine-arn",
         deployed["state_machine_arn"], *args],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip


def _executions(deployed: dict[str, Any]) -> list[dict[str, Any]]:
    sfn: Any = boto3.client("stepfunctions")
    found: list[dict[str, Any]] = sfn.list_executions(
        stateMachineArn=deployed["state_machine_arn"]
    )["executions"]
    return found


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--order-id", "o1", "--amount", "-5", "--currency", "usd"], "amount: Input should be"),
        (["--order-id", "o1", "--amount", "12.5", "--currency", "usd"], "--amount: expected an integer"),
        (["--order-id", "o 1", "--amount", "500", "--currency", "usd"], "order_id: String should"),
        (["--order-id", "o1", "--amount", "500", "--currency", "usd", "--item", "mug"], "--item: expected KEY=VALUE"),
        (["--input", "{not json"], "--input: not JSON"),
        (["--input", '{"order_id": "o1", "amount": 500, "currency": "usd", "tip": 1}'], "tip: unknown field"),
        (["--amount", "500", "--currency", "usd"], "order_id: Input should be a valid string"),
        (["--order-id", "o1", "--amount", "500", "--currency", "usd", "--capture-deadline-s", "60"], 'capture_deadline_s: only with capture_method "manual"'),
        (["--order-id", "o1", "--amount", "500", "--currency", "usd", "--capture-method", "manual", "--capture-deadline-s", "1d"], "--capture-deadline-s: expected a whole number of seconds"),
    ],
)  # fmt: skip
def test_invalid_input_names_the_field_and_starts_nothing(
    stack: LocalStack, deployed: dict[str, Any], args: list[str], message: str
) -> None:
    before = len(_executions(deployed))
    result = _pay(stack, deployed, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(_executions(deployed)) == before


def test_pay_starts_an_execution_named_after_the_order(
    stack: LocalStack, deployed: dict[str, Any]
) -> None:
    order = f"ord_{uuid.uuid4().hex[:8]}"
    result = _pay(
        stack, deployed, "--order-id", order, "--amount", "1999", "--currency", "usd",
        "--item", "sku_mug=2", "--metadata", "campaign=winter",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    started = json.loads(result.stdout)
    assert started["execution_arn"].endswith(f":{order}")
    task = receive_task(boto3.client("sqs"), deployed["queue_url"], "reserve_order")
    assert task["request"] == {
        "order_id": order,
        "amount": 1999,
        "currency": "usd",
        "items": [{"sku": "sku_mug", "quantity": 2}],
        "metadata": {"campaign": "winter"},
    }


def test_pay_starts_a_manual_capture_with_its_deadline(
    stack: LocalStack, deployed: dict[str, Any]
) -> None:
    order = f"ord_{uuid.uuid4().hex[:8]}"
    result = _pay(
        stack, deployed, "--order-id", order, "--amount", "1999", "--currency", "usd",
        "--capture-method", "manual", "--capture-deadline-s", "3600",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    task = receive_task(boto3.client("sqs"), deployed["queue_url"], "reserve_order")
    assert task["request"] == {
        "order_id": order,
        "amount": 1999,
        "currency": "usd",
        "capture_method": "manual",
        "capture_deadline_s": 3600,
    }


def _answer_next_task(deployed: dict[str, Any], succeed: bool) -> None:
    sfn: Any = boto3.client("stepfunctions")
    answer_order_task(boto3.client("sqs"), sfn, deployed, "reserve_order")
    task = receive_task(boto3.client("sqs"), deployed["queue_url"], "create_payment")
    if succeed:
        payment = {"payment_intent_id": "pi_w", "status": "succeeded", "amount_received": 700,
                   "currency": "eur"}  # fmt: skip
        sfn.send_task_success(taskToken=task["task_token"], output=json.dumps(payment))
    else:
        sfn.send_task_failure(taskToken=task["task_token"], error="Payment.Rejected", cause="no")
        answer_order_task(boto3.client("sqs"), sfn, deployed, "release_order")


@pytest.mark.parametrize("succeed", [True, False])
def test_wait_follows_to_the_end_and_exits_by_status(
    stack: LocalStack, deployed: dict[str, Any], succeed: bool
) -> None:
    worker = threading.Thread(target=_answer_next_task, args=(deployed, succeed))
    worker.start()
    order = f"ord_{uuid.uuid4().hex[:8]}"
    result = _pay(
        stack, deployed, "--input", json.dumps({"order_id": order, "amount": 700, "currency": "eur"}),
        "--wait",
    )  # fmt: skip
    worker.join()
    assert "-> CreatePayment" in result.stdout
    if succeed:
        assert result.returncode == 0, result.stdout + result.stderr
        assert '"payment_intent_id": "pi_w"' in result.stdout
    else:
        assert result.returncode == 1
        assert "FAILED: Payment.Rejected: no" in result.stdout


def test_second_start_of_an_ended_order_says_how_to_retry(
    stack: LocalStack, deployed: dict[str, Any]
) -> None:
    order = f"ord_{uuid.uuid4().hex[:8]}"
    args = ["--order-id", order, "--amount", "700", "--currency", "eur"]
    worker = threading.Thread(target=_answer_next_task, args=(deployed, False))
    worker.start()
    assert _pay(stack, deployed, *args, "--wait").returncode == 1
    worker.join()
    again = _pay(stack, deployed, *args)
    assert again.returncode == 2
    assert "--execution-name" in again.stderr
