"""Every branch of the payment state machine, executed by moto, with the test as the worker.

GIVEN a fresh deployment on moto (Step Functions execution on)
WHEN the test answers the SQS task messages the way the worker and webhook would
THEN the execution ends as the contract says, and DynamoDB / SNS show its effects.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from statemachine import causes, declines, errors
from tests.conftest import Deployer
from tests.support.aws import (
    TopicInbox,
    clients,
    order_row,
    put_stock,
    receive_task,
    start,
    states_entered,
    stock_of,
    wait_done,
)

pytestmark = pytest.mark.usefixtures("stack")


def _order(**extra: Any) -> dict[str, Any]:
    return {"order_id": f"ord_{uuid.uuid4().hex[:10]}", "amount": 1999, "currency": "usd", **extra}


def _paid(pi: str, amount: int = 1999) -> str:
    return json.dumps(
        {
            "payment_intent_id": pi,
            "status": "succeeded",
            "amount_received": amount,
            "currency": "usd",
        }
    )


@dataclass(frozen=True)
class _CardDeclined:
    decline_code: str
    code: str = "card_declined"
    message: str = "Your card was declined."


def _found_paid(pi: str) -> str:
    """The cancel task's answer when the PaymentIntent had succeeded after all."""
    return json.dumps(
        {"outcome": "succeeded", "payment_intent_id": pi, "payment": json.loads(_paid(pi))}
    )


@pytest.fixture(scope="module")
def fast(deploy_fresh: Deployer) -> dict[str, Any]:
    """Declines retried after 1 s (then 2 s), three attempts, no heartbeat window."""
    return deploy_fresh(
        "--retry-backoff-s", "1", "--max-attempts", "3", "--payment-heartbeat-s", "0"
    )


@pytest.fixture(scope="module")
def impatient(deploy_fresh: Deployer) -> dict[str, Any]:
    """The payment wait times out after 2 s; a processing payment is asked about every 1 s."""
    return deploy_fresh(
        "--payment-timeout-s", "2", "--payment-heartbeat-s", "0", "--settlement-poll-s", "1"
    )


def test_success_records_order_takes_stock_and_publishes_receipt(fast: dict[str, Any]) -> None:
    sfn, sqs, ddb, sns = clients()
    receipts = TopicInbox(sqs, sns, fast["receipts_topic_arn"])
    put_stock(ddb, fast["inventory_table"], "sku_mug", 5)
    put_stock(ddb, fast["inventory_table"], "sku_tea", 3)
    request = _order(items=[{"sku": "sku_mug", "quantity": 2}, {"sku": "sku_tea", "quantity": 1}])
    arn = start(sfn, fast["state_machine_arn"], request)

    task = receive_task(sqs, fast["queue_url"], "create_payment")
    assert task["request"] == request
    assert task["attempt"] == 1 and task["execution_id"] == arn and task["state"] == "CreatePayment"
    assert len(task["task_token"]) >= 1000, "the local stack issues AWS-length tokens"
    sfn.send_task_success(taskToken=task["task_token"], output=_paid("pi_ok"))

    done = wait_done(sfn, arn)
    assert done["status"] == "SUCCEEDED", done
    output = json.loads(done["output"])
    assert output["order_id"] == request["order_id"]
    assert output["payment"]["payment_intent_id"] == "pi_ok"
    assert output["payment"]["amount_received"] == 1999
    row = order_row(ddb, fast["orders_table"], request["order_id"])
    assert row["status"] == "paid" and row["payment_intent_id"] == "pi_ok"
    assert row["amount_received"] == "1999"
    assert stock_of(ddb, fast["inventory_table"], "sku_mug") == 3
    assert stock_of(ddb, fast["inventory_table"], "sku_tea") == 2
    published = receipts.messages()
    assert [m["type"] for m in published] == ["receipt"]
    assert published[0]["payment"]["payment_intent_id"] == "pi_ok"


def test_order_without_items_succeeds(fast: dict[str, Any]) -> None:
    sfn, sqs, ddb, _ = clients()
    request = _order()
    arn = start(sfn, fast["state_machine_arn"], request)
    task = receive_task(sqs, fast["queue_url"], "create_payment")
    sfn.send_task_success(taskToken=task["task_token"], output=_paid("pi_noitems"))
    assert wait_done(sfn, arn)["status"] == "SUCCEEDED"
    assert order_row(ddb, fast["orders_table"], request["order_id"])["status"] == "paid"


def test_decline_notifies_then_retry_succeeds(fast: dict[str, Any]) -> None:
    sfn, sqs, _, sns = clients()
    notices = TopicInbox(sqs, sns, fast["notifications_topic_arn"])
    arn = start(sfn, fast["state_machine_arn"], _order(payment_method="pm_card_visa"))

    first = receive_task(sqs, fast["queue_url"], "create_payment")
    assert first["previous_decline"] == {}
    cause = causes.declined("pi_first", _CardDeclined("insufficient_funds")).cause
    sfn.send_task_failure(taskToken=first["task_token"], error=errors.DECLINED, cause=cause)
    second = receive_task(sqs, fast["queue_url"], "create_payment")
    assert second["attempt"] == 2
    assert second["task_token"] != first["task_token"]
    # The declined PaymentIntent travels to the next attempt, which cancels (or adopts) it.
    assert second["previous_decline"]["payment_intent_id"] == "pi_first"
    sfn.send_task_success(taskToken=second["task_token"], output=_paid("pi_second"))

    done = wait_done(sfn, arn)
    assert done["status"] == "SUCCEEDED", done
    assert json.loads(done["output"])["attempts"] == 2
    notice = notices.messages()
    assert [m["type"] for m in notice] == ["payment_declined"]
    assert notice[0]["attempt"] == 1 and "insufficient_funds" in notice[0]["cause"]


def test_declines_exhaust_the_attempts(deploy_fresh: Deployer) -> None:
    deployed = deploy_fresh("--retry-backoff-s", "0", "--max-attempts", "2")
    sfn, sqs, _, sns = clients()
    notices = TopicInbox(sqs, sns, deployed["notifications_topic_arn"])
    arn = start(sfn, deployed["state_machine_arn"], _order(payment_method="pm_card_visa"))
    for attempt in (1, 2):
        task = receive_task(sqs, deployed["queue_url"], "create_payment")
        assert task["attempt"] == attempt
        cause = causes.declined(f"pi_{attempt}", _CardDeclined("do_not_honor")).cause
        sfn.send_task_failure(taskToken=task["task_token"], error=errors.DECLINED, cause=cause)
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"]) == ("FAILED", errors.DECLINED)
    assert causes.parse(done["cause"])["payment_intent_id"] == "pi_2"
    assert len(notices.messages()) == 2
    assert states_entered(sfn, arn).count("CreatePayment") == 2


@pytest.mark.parametrize(
    ("cause", "reason"),
    [
        (causes.declined("pi_stolen", _CardDeclined("stolen_card")), "decline_code:stolen_card"),
        (
            causes.declined(
                "pi_spent", _CardDeclined("insufficient_funds"), verdict=declines.over_budget()
            ),
            "retry_budget",
        ),
    ],
    ids=["stolen_card", "retry_budget"],
)
def test_a_final_decline_notifies_and_fails_without_a_retry(
    fast: dict[str, Any], cause: causes.Failure, reason: str
) -> None:
    sfn, sqs, _, sns = clients()
    notices = TopicInbox(sqs, sns, fast["notifications_topic_arn"])
    arn = start(sfn, fast["state_machine_arn"], _order(payment_method="pm_card_visa"))
    task = receive_task(sqs, fast["queue_url"], "create_payment")
    sfn.send_task_failure(taskToken=task["task_token"], error=errors.DECLINED, cause=cause.cause)

    done = wait_done(sfn, arn)
    assert (done["status"], done["error"]) == ("FAILED", errors.DECLINED)
    ended = causes.parse(done["cause"])
    assert (ended["verdict"], ended["retryable"], ended["reason"]) == ("final", False, reason)
    assert states_entered(sfn, arn).count("CreatePayment") == 1
    assert "WaitBeforeRetry" not in states_entered(sfn, arn)
    assert [m["type"] for m in notices.messages()] == ["payment_declined"]


def test_a_cause_without_a_verdict_is_retried_never_final(fast: dict[str, Any]) -> None:
    sfn, sqs, _, _ = clients()
    arn = start(sfn, fast["state_machine_arn"], _order(payment_method="pm_card_visa"))
    first = receive_task(sqs, fast["queue_url"], "create_payment")
    sfn.send_task_failure(
        taskToken=first["task_token"],
        error=errors.DECLINED,
        cause=json.dumps({"payment_intent_id": "pi_old", "code": "card_declined"}),
    )
    second = receive_task(sqs, fast["queue_url"], "create_payment")
    assert second["attempt"] == 2
    sfn.send_task_success(taskToken=second["task_token"], output=_paid("pi_second"))
    assert wait_done(sfn, arn)["status"] == "SUCCEEDED"


def _timed_out(deployment: dict[str, Any], request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Start `request`, leave its create_payment task unanswered: the execution and the
    cancel_payment task the timeout asks for."""
    sfn, sqs, _, _ = clients()
    arn = start(sfn, deployment["state_machine_arn"], request)
    receive_task(sqs, deployment["queue_url"], "create_payment")  # never answered
    return arn, receive_task(sqs, deployment["queue_url"], "cancel_payment", timeout_s=30)


def test_timeout_cancels_and_fails(impatient: dict[str, Any]) -> None:
    sfn, _, _, _ = clients()
    arn, cancel = _timed_out(impatient, _order())
    assert cancel["execution_id"] == arn and cancel["attempt"] == 1
    sfn.send_task_success(
        taskToken=cancel["task_token"],
        output=json.dumps({"outcome": "canceled", "payment_intent_id": "pi_late"}),
    )
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"]) == ("FAILED", errors.TIMED_OUT)


def test_timeout_where_the_payment_had_succeeded_fulfils(impatient: dict[str, Any]) -> None:
    sfn, _, ddb, _ = clients()
    request = _order()
    arn, cancel = _timed_out(impatient, request)
    sfn.send_task_success(taskToken=cancel["task_token"], output=_found_paid("pi_after_all"))
    done = wait_done(sfn, arn)
    assert done["status"] == "SUCCEEDED", done
    assert json.loads(done["output"])["payment"]["payment_intent_id"] == "pi_after_all"
    assert order_row(ddb, impatient["orders_table"], request["order_id"])["status"] == "paid"


def test_timeout_while_processing_asks_again_until_settled(impatient: dict[str, Any]) -> None:
    sfn, sqs, ddb, _ = clients()
    request = _order()
    arn, first = _timed_out(impatient, request)
    sfn.send_task_success(
        taskToken=first["task_token"],
        output=json.dumps({"outcome": "processing", "payment_intent_id": "pi_slow"}),
    )
    second = receive_task(sqs, impatient["queue_url"], "cancel_payment", timeout_s=30)
    assert second["attempt"] == 1 and second["task_token"] != first["task_token"]
    sfn.send_task_success(taskToken=second["task_token"], output=_found_paid("pi_slow"))
    done = wait_done(sfn, arn)
    assert done["status"] == "SUCCEEDED", done
    assert states_entered(sfn, arn).count("AwaitSettlement") == 1
    assert (
        order_row(ddb, impatient["orders_table"], request["order_id"])["payment_intent_id"]
        == "pi_slow"
    )


def test_out_of_stock_refunds_restocks_and_fails(fast: dict[str, Any]) -> None:
    sfn, sqs, ddb, sns = clients()
    receipts = TopicInbox(sqs, sns, fast["receipts_topic_arn"])
    notices = TopicInbox(sqs, sns, fast["notifications_topic_arn"])
    put_stock(ddb, fast["inventory_table"], "sku_plenty", 10)
    put_stock(ddb, fast["inventory_table"], "sku_scarce", 1)
    request = _order(
        items=[{"sku": "sku_plenty", "quantity": 2}, {"sku": "sku_scarce", "quantity": 2}]
    )
    arn = start(sfn, fast["state_machine_arn"], request)
    task = receive_task(sqs, fast["queue_url"], "create_payment")
    sfn.send_task_success(taskToken=task["task_token"], output=_paid("pi_refund_me"))

    refund = receive_task(sqs, fast["queue_url"], "refund_payment")
    assert refund["payment_intent_id"] == "pi_refund_me"
    assert refund["order_id"] == request["order_id"]
    sfn.send_task_success(
        taskToken=refund["task_token"],
        output=json.dumps(
            {"refund_id": "re_1", "status": "succeeded", "amount": 1999, "currency": "usd"}
        ),
    )
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"]) == ("FAILED", errors.UNFULFILLABLE)
    assert "out of stock" in done["cause"]
    assert stock_of(ddb, fast["inventory_table"], "sku_plenty") == 10, "taken stock goes back"
    assert stock_of(ddb, fast["inventory_table"], "sku_scarce") == 1
    row = order_row(ddb, fast["orders_table"], request["order_id"])
    assert (row["status"], row["refund_id"]) == ("refunded", "re_1")
    assert receipts.messages(wait_s=0.5) == [], "no receipt for a refunded order"
    assert [m["type"] for m in notices.messages()] == ["order_refunded"]


def test_second_payment_for_a_paid_order_is_refunded(fast: dict[str, Any]) -> None:
    sfn, sqs, ddb, _ = clients()
    request = _order()
    for pi in ("pi_first", "pi_duplicate"):
        arn = start(sfn, fast["state_machine_arn"], request)
        task = receive_task(sqs, fast["queue_url"], "create_payment")
        sfn.send_task_success(taskToken=task["task_token"], output=_paid(pi))
    refund = receive_task(sqs, fast["queue_url"], "refund_payment")
    assert refund["payment_intent_id"] == "pi_duplicate"
    sfn.send_task_success(
        taskToken=refund["task_token"],
        output=json.dumps(
            {"refund_id": "re_dup", "status": "succeeded", "amount": 1999, "currency": "usd"}
        ),
    )
    assert wait_done(sfn, arn)["error"] == errors.UNFULFILLABLE
    row = order_row(ddb, fast["orders_table"], request["order_id"])
    assert (row["status"], row["payment_intent_id"]) == ("paid", "pi_first")


@pytest.mark.parametrize(
    ("amount_received", "currency"), [(999, "usd"), (1999, "eur")], ids=["amount", "currency"]
)
def test_a_payment_that_does_not_match_the_order_is_refunded_and_fails_mismatch(
    fast: dict[str, Any], amount_received: int, currency: str
) -> None:
    sfn, sqs, ddb, sns = clients()
    receipts = TopicInbox(sqs, sns, fast["receipts_topic_arn"])
    put_stock(ddb, fast["inventory_table"], "sku_match", 3)
    request = _order(items=[{"sku": "sku_match", "quantity": 1}])
    arn = start(sfn, fast["state_machine_arn"], request)
    task = receive_task(sqs, fast["queue_url"], "create_payment")
    paid = {**json.loads(_paid("pi_other")), "amount_received": amount_received}
    sfn.send_task_success(
        taskToken=task["task_token"], output=json.dumps({**paid, "currency": currency})
    )

    refund = receive_task(sqs, fast["queue_url"], "refund_payment")
    assert (refund["payment_intent_id"], refund["reason"]) == ("pi_other", errors.MISMATCH)
    sfn.send_task_success(
        taskToken=refund["task_token"],
        output=json.dumps(
            {
                "refund_id": "re_m",
                "status": "succeeded",
                "amount": amount_received,
                "currency": currency,
            }
        ),
    )
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"]) == ("FAILED", errors.MISMATCH)
    mismatch = json.loads(done["cause"])
    assert mismatch == {
        "payment_intent_id": "pi_other",
        "status": "succeeded",
        "amount_received": amount_received,
        "currency": currency,
        "expected_amount": 1999,
        "expected_currency": "usd",
    }
    assert "Fulfil" not in states_entered(sfn, arn)
    assert stock_of(ddb, fast["inventory_table"], "sku_match") == 3
    assert receipts.messages() == []


def test_refund_failure_ends_with_its_own_error(fast: dict[str, Any]) -> None:
    sfn, sqs, ddb, _ = clients()
    put_stock(ddb, fast["inventory_table"], "sku_none", 0)
    arn = start(sfn, fast["state_machine_arn"], _order(items=[{"sku": "sku_none", "quantity": 1}]))
    task = receive_task(sqs, fast["queue_url"], "create_payment")
    sfn.send_task_success(taskToken=task["task_token"], output=_paid("pi_no_refund"))
    refund = receive_task(sqs, fast["queue_url"], "refund_payment")
    sfn.send_task_failure(taskToken=refund["task_token"], error="Payment.Rejected", cause="nope")
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"], done["cause"]) == (
        "FAILED",
        errors.REFUND_FAILED,
        "nope",
    )


@pytest.mark.parametrize("error", [errors.INVALID_INPUT, errors.REJECTED, errors.CANCELED])
def test_other_contract_errors_end_the_execution_with_their_name(
    fast: dict[str, Any], error: str
) -> None:
    sfn, sqs, _, _ = clients()
    arn = start(sfn, fast["state_machine_arn"], {"order_id": "bad", "amount": -5})
    task = receive_task(sqs, fast["queue_url"], "create_payment")
    assert task["request"] == {"order_id": "bad", "amount": -5}, "input reaches the worker as is"
    sfn.send_task_failure(taskToken=task["task_token"], error=error, cause="amount: must be > 0")
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"], done["cause"]) == (
        "FAILED",
        error,
        "amount: must be > 0",
    )
    assert "NotifyDeclined" not in states_entered(sfn, arn)
