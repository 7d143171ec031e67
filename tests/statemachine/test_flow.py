"""Every branch of the payment state machine, executed by moto, with the test as the worker.

GIVEN a fresh deployment on moto (Step Functions execution on)
WHEN the test answers the SQS task messages the way the worker and webhook would (the
     order's claim and stock with the worker's own `Orders`)
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
    answer_order_task,
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

    reserve = answer_order_task(sqs, sfn, fast, "reserve_order")
    assert (reserve["execution_id"], reserve["request"]) == (arn, request)
    task = receive_task(sqs, fast["queue_url"], "create_payment")
    # The stock is held before any payment is asked for.
    assert stock_of(ddb, fast["inventory_table"], "sku_mug") == 3
    claimed = order_row(ddb, fast["orders_table"], request["order_id"])
    assert (claimed["status"], claimed["execution_id"]) == ("paying", arn)
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
    assert "claim_state" not in row and "held_items" not in row, "the holds are kept"
    assert stock_of(ddb, fast["inventory_table"], "sku_mug") == 3
    assert stock_of(ddb, fast["inventory_table"], "sku_tea") == 2
    published = receipts.messages()
    assert [m["type"] for m in published] == ["receipt"]
    assert published[0]["payment"]["payment_intent_id"] == "pi_ok"


def test_order_without_items_succeeds(fast: dict[str, Any]) -> None:
    sfn, sqs, ddb, _ = clients()
    request = _order()
    arn = start(sfn, fast["state_machine_arn"], request)
    answer_order_task(sqs, sfn, fast, "reserve_order")
    task = receive_task(sqs, fast["queue_url"], "create_payment")
    sfn.send_task_success(taskToken=task["task_token"], output=_paid("pi_noitems"))
    assert wait_done(sfn, arn)["status"] == "SUCCEEDED"
    assert order_row(ddb, fast["orders_table"], request["order_id"])["status"] == "paid"


def test_decline_notifies_then_retry_succeeds(fast: dict[str, Any]) -> None:
    sfn, sqs, _, sns = clients()
    notices = TopicInbox(sqs, sns, fast["notifications_topic_arn"])
    arn = start(sfn, fast["state_machine_arn"], _order(payment_method="pm_card_visa"))
    answer_order_task(sqs, sfn, fast, "reserve_order")

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
    sfn, sqs, ddb, sns = clients()
    notices = TopicInbox(sqs, sns, deployed["notifications_topic_arn"])
    put_stock(ddb, deployed["inventory_table"], "sku_declined", 4)
    request = _order(payment_method="pm_card_visa", items=[{"sku": "sku_declined", "quantity": 3}])
    arn = start(sfn, deployed["state_machine_arn"], request)
    answer_order_task(sqs, sfn, deployed, "reserve_order")
    for attempt in (1, 2):
        task = receive_task(sqs, deployed["queue_url"], "create_payment")
        assert task["attempt"] == attempt
        cause = causes.declined(f"pi_{attempt}", _CardDeclined("do_not_honor")).cause
        sfn.send_task_failure(taskToken=task["task_token"], error=errors.DECLINED, cause=cause)
    assert stock_of(ddb, deployed["inventory_table"], "sku_declined") == 1
    release = answer_order_task(sqs, sfn, deployed, "release_order")
    assert release["reason"] == errors.DECLINED
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"]) == ("FAILED", errors.DECLINED)
    assert causes.parse(done["cause"])["payment_intent_id"] == "pi_2"
    assert stock_of(ddb, deployed["inventory_table"], "sku_declined") == 4, "stock is back"
    assert order_row(ddb, deployed["orders_table"], request["order_id"])["status"] == "released"
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
    answer_order_task(sqs, sfn, fast, "reserve_order")
    task = receive_task(sqs, fast["queue_url"], "create_payment")
    sfn.send_task_failure(taskToken=task["task_token"], error=errors.DECLINED, cause=cause.cause)
    assert answer_order_task(sqs, sfn, fast, "release_order")["reason"] == errors.DECLINED

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
    answer_order_task(sqs, sfn, fast, "reserve_order")
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
    answer_order_task(sqs, sfn, deployment, "reserve_order")
    receive_task(sqs, deployment["queue_url"], "create_payment")  # never answered
    return arn, receive_task(sqs, deployment["queue_url"], "cancel_payment", timeout_s=30)


def test_timeout_cancels_releases_and_fails(impatient: dict[str, Any]) -> None:
    sfn, sqs, ddb, _ = clients()
    put_stock(ddb, impatient["inventory_table"], "sku_slow", 2)
    arn, cancel = _timed_out(impatient, _order(items=[{"sku": "sku_slow", "quantity": 2}]))
    assert cancel["execution_id"] == arn and cancel["attempt"] == 1
    assert stock_of(ddb, impatient["inventory_table"], "sku_slow") == 0
    sfn.send_task_success(
        taskToken=cancel["task_token"],
        output=json.dumps({"outcome": "canceled", "payment_intent_id": "pi_late"}),
    )
    assert answer_order_task(sqs, sfn, impatient, "release_order")["reason"] == errors.TIMED_OUT
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"]) == ("FAILED", errors.TIMED_OUT)
    assert stock_of(ddb, impatient["inventory_table"], "sku_slow") == 2


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


def test_out_of_stock_ends_unfulfillable_before_any_payment(fast: dict[str, Any]) -> None:
    sfn, sqs, ddb, sns = clients()
    notices = TopicInbox(sqs, sns, fast["notifications_topic_arn"])
    put_stock(ddb, fast["inventory_table"], "sku_plenty", 10)
    put_stock(ddb, fast["inventory_table"], "sku_scarce", 1)
    request = _order(
        items=[{"sku": "sku_plenty", "quantity": 2}, {"sku": "sku_scarce", "quantity": 2}]
    )
    arn = start(sfn, fast["state_machine_arn"], request)
    answer_order_task(sqs, sfn, fast, "reserve_order")

    done = wait_done(sfn, arn)
    assert (done["status"], done["error"]) == ("FAILED", errors.UNFULFILLABLE)
    assert causes.parse(done["cause"]) == {
        "order_id": request["order_id"],
        "shortages": [{"sku": "sku_scarce", "asked": 2, "left": 1}],
    }
    assert "CreatePayment" not in states_entered(sfn, arn), "no payment is asked for"
    assert stock_of(ddb, fast["inventory_table"], "sku_plenty") == 10, "nothing was held"
    assert stock_of(ddb, fast["inventory_table"], "sku_scarce") == 1
    assert order_row(ddb, fast["orders_table"], request["order_id"]) == {}
    assert notices.messages(wait_s=0.5) == []


def test_a_paid_order_is_not_paid_again(fast: dict[str, Any]) -> None:
    sfn, sqs, ddb, _ = clients()
    request = _order()
    first = start(sfn, fast["state_machine_arn"], request)
    answer_order_task(sqs, sfn, fast, "reserve_order")
    task = receive_task(sqs, fast["queue_url"], "create_payment")

    # While the first execution waits for its payment, a second one is refused at once.
    second = start(sfn, fast["state_machine_arn"], request)
    answer_order_task(sqs, sfn, fast, "reserve_order")
    refused = wait_done(sfn, second)
    assert (refused["status"], refused["error"]) == ("FAILED", errors.IN_PROGRESS)
    assert causes.parse(refused["cause"])["claimed_by"] == first

    sfn.send_task_success(taskToken=task["task_token"], output=_paid("pi_first"))
    assert wait_done(sfn, first)["status"] == "SUCCEEDED"
    # Once it is paid, a third one is refused as already paid, naming the payment.
    third = start(sfn, fast["state_machine_arn"], request)
    answer_order_task(sqs, sfn, fast, "reserve_order")
    done = wait_done(sfn, third)
    assert (done["status"], done["error"]) == ("FAILED", errors.ALREADY_PAID)
    assert causes.parse(done["cause"])["payment_intent_id"] == "pi_first"
    for refused_arn in (second, third):
        assert "CreatePayment" not in states_entered(sfn, refused_arn)
    row = order_row(ddb, fast["orders_table"], request["order_id"])
    assert (row["status"], row["payment_intent_id"]) == ("paid", "pi_first")


def test_an_order_whose_execution_failed_can_be_paid_again(fast: dict[str, Any]) -> None:
    sfn, sqs, ddb, _ = clients()
    put_stock(ddb, fast["inventory_table"], "sku_again", 1)
    request = _order(items=[{"sku": "sku_again", "quantity": 1}])
    failed = start(sfn, fast["state_machine_arn"], request)
    answer_order_task(sqs, sfn, fast, "reserve_order")
    task = receive_task(sqs, fast["queue_url"], "create_payment")
    sfn.send_task_failure(taskToken=task["task_token"], error=errors.REJECTED, cause="no")
    answer_order_task(sqs, sfn, fast, "release_order")
    assert wait_done(sfn, failed)["error"] == errors.REJECTED

    again = start(sfn, fast["state_machine_arn"], request)
    answer_order_task(sqs, sfn, fast, "reserve_order")
    task = receive_task(sqs, fast["queue_url"], "create_payment")
    sfn.send_task_success(taskToken=task["task_token"], output=_paid("pi_again"))
    assert wait_done(sfn, again)["status"] == "SUCCEEDED"
    row = order_row(ddb, fast["orders_table"], request["order_id"])
    assert (row["status"], row["execution_id"]) == ("paid", again)
    assert stock_of(ddb, fast["inventory_table"], "sku_again") == 0, "taken once"


def _release_claim_by_hand(ddb: Any, deployment: dict[str, Any], order_id: str) -> None:
    """What an operator does to an order's claim while its payment is under way."""
    ddb.update_item(
        TableName=deployment["orders_table"],
        Key={"order_id": {"S": order_id}},
        UpdateExpression="SET #s = :released REMOVE claim_state",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":released": {"S": "released"}},
    )


def test_a_claim_that_is_no_longer_open_refunds_the_payment(fast: dict[str, Any]) -> None:
    sfn, sqs, ddb, _ = clients()
    request = _order()
    arn = start(sfn, fast["state_machine_arn"], request)
    answer_order_task(sqs, sfn, fast, "reserve_order")
    task = receive_task(sqs, fast["queue_url"], "create_payment")
    # An operator released the claim by hand while the payment was under way.
    _release_claim_by_hand(ddb, fast, request["order_id"])
    sfn.send_task_success(taskToken=task["task_token"], output=_paid("pi_unclaimed"))
    refund = receive_task(sqs, fast["queue_url"], "refund_payment")
    assert (refund["payment_intent_id"], refund["reason"]) == ("pi_unclaimed", errors.ALREADY_PAID)
    sfn.send_task_success(
        taskToken=refund["task_token"],
        output=json.dumps(
            {"refund_id": "re_dup", "status": "succeeded", "amount": 1999, "currency": "usd"}
        ),
    )
    answer_order_task(sqs, sfn, fast, "release_order")
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"]) == ("FAILED", errors.UNFULFILLABLE)
    row = order_row(ddb, fast["orders_table"], request["order_id"])
    assert (row["status"], row["refund_id"]) == ("refunded", "re_dup")


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
    answer_order_task(sqs, sfn, fast, "reserve_order")
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
    assert answer_order_task(sqs, sfn, fast, "release_order")["reason"] == errors.MISMATCH
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
    assert "RecordPaid" not in states_entered(sfn, arn)
    assert stock_of(ddb, fast["inventory_table"], "sku_match") == 3, "the hold is released"
    assert order_row(ddb, fast["orders_table"], request["order_id"])["status"] == "refunded"
    assert receipts.messages() == []


def test_refund_failure_ends_with_its_own_error(fast: dict[str, Any]) -> None:
    sfn, sqs, ddb, _ = clients()
    put_stock(ddb, fast["inventory_table"], "sku_kept", 1)
    request = _order(items=[{"sku": "sku_kept", "quantity": 1}])
    arn = start(sfn, fast["state_machine_arn"], request)
    answer_order_task(sqs, sfn, fast, "reserve_order")
    task = receive_task(sqs, fast["queue_url"], "create_payment")
    sfn.send_task_success(taskToken=task["task_token"], output=_paid("pi_no_refund", amount=5))
    refund = receive_task(sqs, fast["queue_url"], "refund_payment")
    sfn.send_task_failure(taskToken=refund["task_token"], error="Payment.Rejected", cause="nope")
    assert answer_order_task(sqs, sfn, fast, "release_order")["reason"] == errors.REFUND_FAILED
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"], done["cause"]) == (
        "FAILED",
        errors.REFUND_FAILED,
        "nope",
    )
    assert stock_of(ddb, fast["inventory_table"], "sku_kept") == 1


def test_invalid_input_fails_before_anything_is_held(fast: dict[str, Any]) -> None:
    sfn, sqs, _, _ = clients()
    arn = start(sfn, fast["state_machine_arn"], {"order_id": "bad", "amount": -5})
    task = receive_task(sqs, fast["queue_url"], "reserve_order")
    assert task["request"] == {"order_id": "bad", "amount": -5}, "input reaches the worker as is"
    sfn.send_task_failure(
        taskToken=task["task_token"], error=errors.INVALID_INPUT, cause="amount: must be > 0"
    )
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"], done["cause"]) == (
        "FAILED",
        errors.INVALID_INPUT,
        "amount: must be > 0",
    )
    assert states_entered(sfn, arn) == ["Init", "ReserveOrder", "Failed"]


@pytest.mark.parametrize("error", [errors.INVALID_INPUT, errors.REJECTED, errors.CANCELED])
def test_other_contract_errors_end_the_execution_with_their_name(
    fast: dict[str, Any], error: str
) -> None:
    sfn, sqs, _, _ = clients()
    arn = start(sfn, fast["state_machine_arn"], _order())
    answer_order_task(sqs, sfn, fast, "reserve_order")
    task = receive_task(sqs, fast["queue_url"], "create_payment")
    sfn.send_task_failure(taskToken=task["task_token"], error=error, cause="amount: must be > 0")
    assert answer_order_task(sqs, sfn, fast, "release_order")["reason"] == error
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"], done["cause"]) == (
        "FAILED",
        error,
        "amount: must be > 0",
    )
    assert "NotifyDeclined" not in states_entered(sfn, arn)


# Manual capture: authorise, record the order with its claim open, capture, then keep the
# holds (https://docs.stripe.com/payments/place-a-hold-on-a-payment-method).


def _authorized(pi: str, amount: int = 1999) -> str:
    return json.dumps(
        {
            "payment_intent_id": pi,
            "status": "requires_capture",
            "amount_received": 0,
            "amount_capturable": amount,
            "currency": "usd",
        }
    )


def _authorized_order(
    deployment: dict[str, Any], sku: str, stock: int
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A manual-capture order of one `sku` started, its stock held, its create task taken."""
    sfn, sqs, ddb, _ = clients()
    put_stock(ddb, deployment["inventory_table"], sku, stock)
    request = _order(capture_method="manual", items=[{"sku": sku, "quantity": 1}])
    arn = start(sfn, deployment["state_machine_arn"], request)
    answer_order_task(sqs, sfn, deployment, "reserve_order")
    return arn, request, receive_task(sqs, deployment["queue_url"], "create_payment")


def test_manual_capture_records_the_authorisation_then_captures_and_keeps_the_stock(
    fast: dict[str, Any],
) -> None:
    sfn, sqs, ddb, _ = clients()
    sku = f"sku_{uuid.uuid4().hex[:8]}"
    arn, request, create = _authorized_order(fast, sku, 3)
    sfn.send_task_success(taskToken=create["task_token"], output=_authorized("pi_auth"))

    capture = receive_task(sqs, fast["queue_url"], "capture_payment")
    assert (capture["execution_id"], capture["payment_intent_id"]) == (arn, "pi_auth")
    assert capture["request"] == request
    # Recorded with its authorisation, the claim still open: a failure now can release.
    row = order_row(ddb, fast["orders_table"], request["order_id"])
    assert (row["status"], row["claim_state"], row["payment_intent_id"]) == (
        "authorized",
        "open",
        "pi_auth",
    )
    assert stock_of(ddb, fast["inventory_table"], sku) == 2
    sfn.send_task_success(taskToken=capture["task_token"], output=_paid("pi_auth"))

    done = wait_done(sfn, arn)
    assert done["status"] == "SUCCEEDED", done
    payment = json.loads(done["output"])["payment"]
    assert (payment["status"], payment["amount_received"]) == ("succeeded", 1999)
    row = order_row(ddb, fast["orders_table"], request["order_id"])
    assert row["status"] == "paid" and "claim_state" not in row and "held_items" not in row
    assert stock_of(ddb, fast["inventory_table"], sku) == 2


def test_a_claim_released_before_the_authorisation_is_recorded_cancels_it_without_refund(
    fast: dict[str, Any],
) -> None:
    sfn, sqs, ddb, _ = clients()
    sku = f"sku_{uuid.uuid4().hex[:8]}"
    arn, request, create = _authorized_order(fast, sku, 1)
    _release_claim_by_hand(ddb, fast, request["order_id"])
    sfn.send_task_success(taskToken=create["task_token"], output=_authorized("pi_orphaned"))

    cancel = receive_task(sqs, fast["queue_url"], "cancel_authorization")
    assert (cancel["payment_intent_id"], cancel["reason"]) == ("pi_orphaned", errors.UNFULFILLABLE)
    sfn.send_task_success(
        taskToken=cancel["task_token"],
        output=json.dumps({"outcome": "canceled", "payment_intent_id": "pi_orphaned"}),
    )
    answer_order_task(sqs, sfn, fast, "release_order")
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"]) == ("FAILED", errors.UNFULFILLABLE)
    entered = states_entered(sfn, arn)
    assert "RefundPayment" not in entered and "CapturePayment" not in entered


def test_a_capture_past_its_deadline_cancels_releases_and_fails_authorization_expired(
    fast: dict[str, Any],
) -> None:
    sfn, sqs, ddb, _ = clients()
    sku = f"sku_{uuid.uuid4().hex[:8]}"
    arn, request, create = _authorized_order(fast, sku, 1)
    sfn.send_task_success(taskToken=create["task_token"], output=_authorized("pi_late"))
    capture = receive_task(sqs, fast["queue_url"], "capture_payment")
    failure = causes.authorization_expired("pi_late", deadline=1_700_000_000)
    sfn.send_task_failure(taskToken=capture["task_token"], error=failure.error, cause=failure.cause)

    cancel = receive_task(sqs, fast["queue_url"], "cancel_authorization")
    assert cancel["reason"] == errors.AUTHORIZATION_EXPIRED
    sfn.send_task_success(
        taskToken=cancel["task_token"],
        output=json.dumps({"outcome": "canceled", "payment_intent_id": "pi_late"}),
    )
    release = answer_order_task(sqs, sfn, fast, "release_order")
    assert release["reason"] == errors.AUTHORIZATION_EXPIRED
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"]) == ("FAILED", errors.AUTHORIZATION_EXPIRED)
    assert json.loads(done["cause"])["deadline"] == 1_700_000_000
    assert stock_of(ddb, fast["inventory_table"], sku) == 1
    assert order_row(ddb, fast["orders_table"], request["order_id"])["status"] == "released"


def test_a_failed_capture_that_went_through_after_all_is_kept(fast: dict[str, Any]) -> None:
    sfn, sqs, ddb, _ = clients()
    sku = f"sku_{uuid.uuid4().hex[:8]}"
    arn, request, create = _authorized_order(fast, sku, 1)
    sfn.send_task_success(taskToken=create["task_token"], output=_authorized("pi_slow"))
    capture = receive_task(sqs, fast["queue_url"], "capture_payment")
    sfn.send_task_failure(taskToken=capture["task_token"], error="Worker.Lost", cause="gone")

    cancel = receive_task(sqs, fast["queue_url"], "cancel_authorization")
    sfn.send_task_success(taskToken=cancel["task_token"], output=_found_paid("pi_slow"))
    done = wait_done(sfn, arn)
    assert done["status"] == "SUCCEEDED", done
    assert order_row(ddb, fast["orders_table"], request["order_id"])["status"] == "paid"
    assert stock_of(ddb, fast["inventory_table"], sku) == 0


def test_an_other_failure_after_the_authorisation_ends_unfulfillable(
    fast: dict[str, Any],
) -> None:
    sfn, sqs, ddb, _ = clients()
    sku = f"sku_{uuid.uuid4().hex[:8]}"
    arn, _, create = _authorized_order(fast, sku, 1)
    sfn.send_task_success(taskToken=create["task_token"], output=_authorized("pi_lost"))
    capture = receive_task(sqs, fast["queue_url"], "capture_payment")
    sfn.send_task_failure(taskToken=capture["task_token"], error="Worker.Lost", cause="gone")
    cancel = receive_task(sqs, fast["queue_url"], "cancel_authorization")
    sfn.send_task_success(
        taskToken=cancel["task_token"],
        output=json.dumps({"outcome": "canceled", "payment_intent_id": "pi_lost"}),
    )
    answer_order_task(sqs, sfn, fast, "release_order")
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"]) == ("FAILED", errors.UNFULFILLABLE)
    assert json.loads(done["cause"])["Error"] == "Worker.Lost"
    assert stock_of(ddb, fast["inventory_table"], sku) == 1


def test_an_authorisation_of_another_amount_is_canceled_and_fails_mismatch(
    fast: dict[str, Any],
) -> None:
    sfn, sqs, ddb, _ = clients()
    sku = f"sku_{uuid.uuid4().hex[:8]}"
    arn, _, create = _authorized_order(fast, sku, 1)
    sfn.send_task_success(taskToken=create["task_token"], output=_authorized("pi_less", 999))

    cancel = receive_task(sqs, fast["queue_url"], "cancel_authorization")
    assert cancel["reason"] == errors.MISMATCH
    sfn.send_task_success(
        taskToken=cancel["task_token"],
        output=json.dumps({"outcome": "canceled", "payment_intent_id": "pi_less"}),
    )
    answer_order_task(sqs, sfn, fast, "release_order")
    done = wait_done(sfn, arn)
    assert (done["status"], done["error"]) == ("FAILED", errors.MISMATCH)
    assert json.loads(done["cause"])["amount_capturable"] == 999
    assert "RefundPayment" not in states_entered(sfn, arn)
    assert stock_of(ddb, fast["inventory_table"], sku) == 1
