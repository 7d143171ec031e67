"""`paystep status`: the verdict and exit code of what was read, and reading over fakes.

GIVEN an order's row, executions and PaymentIntents (or a source that fails)
WHEN the view is judged and rendered
THEN the verdict says where the payment is (a refund that failed or money no paid order
accounts for needs a person; a running execution is in progress even with its payment
already succeeded), the exit code is the verdict's, or 6 when a source could not be read,
and `--help` documents every code.

Step Functions numbers an execution's events in the order they happened
(https://docs.aws.amazon.com/step-functions/latest/apireference/API_HistoryEvent.html).
"""

from __future__ import annotations

import asyncio
import json
import re
from types import SimpleNamespace
from typing import Any

import pytest
import stripe
from botocore.exceptions import ClientError

from paystep.cli import STATUS_EXIT_CODES, main
from paystep.status import (
    EXIT_BAD_ARGUMENTS,
    EXIT_CODES,
    EXIT_UNREADABLE,
    ExecutionView,
    OrderRow,
    OrderStatus,
    PaymentIntentView,
    RefundView,
    StatusReader,
    StatusSettings,
    judge,
    render_json,
    render_table,
)
from statemachine import errors

MACHINE = "arn:aws:states:us-east-1:123456789012:stateMachine:paystep-payment"
EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:paystep-payment:ord_1"
UNREACHABLE = stripe.APIConnectionError("no route to Stripe")  # type: ignore[no-untyped-call]


def _execution(status: str = "SUCCEEDED", error: str | None = None) -> ExecutionView:
    return ExecutionView(EXECUTION, "ord_1", status, "Paid", 1, "t0", "t1", error, None)


def _intent(
    pi_id: str = "pi_1", received: int = 1999, refunds: list[RefundView] | None = None
) -> PaymentIntentView:
    status = "succeeded" if received else "requires_payment_method"
    return PaymentIntentView(
        pi_id, status, 1999, received, "usd", "automatic_async", EXECUTION, "1", 1, None,
        refunds or [],
    )  # fmt: skip


def _row(status: str, payment_intent_id: str | None = None) -> OrderRow:
    return OrderRow(status, EXECUTION, None, "t0", payment_intent_id, None, None, [EXECUTION], [])


def _judged(**parts: Any) -> OrderStatus:
    status = OrderStatus("ord_1", **parts)
    judge(status)
    return status


def test_a_paid_row_with_its_payment_is_paid() -> None:
    status = _judged(
        order=_row("paid", "pi_1"), executions=[_execution()], payment_intents=[_intent()]
    )
    assert (status.verdict, status.exit_code) == ("paid", 0)


def test_a_second_payment_kept_beside_the_paid_one_needs_a_person() -> None:
    status = _judged(
        order=_row("paid", "pi_1"),
        executions=[_execution()],
        payment_intents=[_intent("pi_1"), _intent("pi_2")],
    )
    assert (status.verdict, status.exit_code) == ("attention", 5)
    assert "pi_2 1999 usd" in status.summary and "pi_1" not in status.summary


def test_a_late_payment_refunded_or_refunding_is_not_paid_and_needs_no_one() -> None:
    for refund_status in ("succeeded", "pending"):
        late = _intent(refunds=[RefundView("re_1", 1999, refund_status, None)])
        status = _judged(
            order=_row("released"),
            executions=[_execution("FAILED", errors.DECLINED)],
            payment_intents=[late],
        )
        assert (status.verdict, status.exit_code) == ("not_paid", 1), refund_status


def test_a_late_payment_not_refunded_yet_needs_a_person() -> None:
    status = _judged(
        order=_row("released"),
        executions=[_execution("FAILED", errors.DECLINED)],
        payment_intents=[_intent(refunds=[RefundView("re_1", 1999, "failed", None)])],
    )
    assert (status.verdict, status.exit_code) == ("attention", 5)


def test_a_payment_succeeded_while_its_execution_runs_is_in_progress() -> None:
    status = _judged(
        order=_row("paying"), executions=[_execution("RUNNING")], payment_intents=[_intent()]
    )
    assert (status.verdict, status.exit_code) == ("in_progress", 3)


@pytest.mark.parametrize("claimed", ["paying", "authorized"])
def test_a_claim_without_a_running_execution_is_in_progress(claimed: str) -> None:
    status = _judged(order=_row(claimed))
    assert (status.verdict, status.exit_code) == ("in_progress", 3)


@pytest.mark.parametrize("claimed", ["paying", "authorized"])
def test_a_claim_left_by_an_ended_execution_is_not_paid_and_says_reconcile_releases_it(
    claimed: str,
) -> None:
    status = _judged(order=_row(claimed), executions=[_execution("ABORTED")])
    assert (status.verdict, status.exit_code) == ("not_paid", 1)
    assert "paystep reconcile releases it" in status.summary


def test_a_refund_that_failed_needs_a_person_first() -> None:
    status = _judged(
        order=_row("released"),
        executions=[_execution("FAILED", errors.REFUND_FAILED), _execution("RUNNING")],
    )
    assert (status.verdict, status.exit_code) == ("attention", 5)
    assert errors.REFUND_FAILED in status.summary


def test_nothing_found_is_an_unknown_order_and_a_failed_source_is_its_own_code() -> None:
    assert (_judged().verdict, _judged().exit_code) == ("unknown", 4)
    partial = _judged(unreadable=["stripe search: APIConnectionError"])
    assert partial.exit_code == EXIT_UNREADABLE
    assert json.loads(render_json(partial))["unreadable"] == ["stripe search: APIConnectionError"]


def test_the_help_documents_every_exit_code() -> None:
    documented = {int(code) for code in re.findall(r"^  (\d+)  ", STATUS_EXIT_CODES, re.M)}
    assert documented == {*EXIT_CODES.values(), EXIT_BAD_ARGUMENTS, EXIT_UNREADABLE}


def test_the_json_keys_are_stable() -> None:
    view = json.loads(
        render_json(
            _judged(
                order=_row("paid", "pi_1"), executions=[_execution()], payment_intents=[_intent()]
            )
        )
    )
    assert list(view) == [
        "order_id", "verdict", "exit_code", "summary", "order", "executions",
        "payment_intents", "unreadable",
    ]  # fmt: skip
    assert list(view["executions"][0]) == [
        "arn", "name", "status", "current_state", "attempts", "started_at", "stopped_at",
        "error", "cause",
    ]  # fmt: skip
    assert list(view["payment_intents"][0]) == [
        "id", "status", "amount", "amount_received", "currency", "capture_method",
        "execution", "attempt", "created", "last_payment_error", "refunds",
    ]  # fmt: skip


# -- reading, over fakes -------------------------------------------------------------------


def _history(order: str) -> list[dict[str, Any]]:
    entered = ["Init", "ReserveOrder", "CreatePayment", "NextAttempt", "CreatePayment", "Failed"]
    events = [
        {
            "id": n + 2,
            "stateEnteredEventDetails": {
                "name": name,
                "input": json.dumps({"attempt": 1 + (n > 3)}),
            },
        }
        for n, name in enumerate(entered)
    ]
    events.insert(0, {"id": 1, "executionStartedEventDetails": {}})
    return events if order == "oldest first" else list(reversed(events))


class FakeSfn:
    def __init__(self, order: str, known: set[str]) -> None:
        self.order = order
        self.known = known

    async def describe_execution(self, executionArn: str) -> dict[str, Any]:
        if executionArn not in self.known:
            raise ClientError({"Error": {"Code": "ExecutionDoesNotExist"}}, "DescribeExecution")
        return {
            "name": executionArn.rsplit(":", 1)[-1],
            "status": "FAILED",
            "error": errors.DECLINED,
        }

    async def get_execution_history(self, **params: Any) -> dict[str, Any]:
        return {"events": _history(self.order)}


class FakeDynamo:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def get_item(self, **params: Any) -> dict[str, Any]:
        if self.fail:
            raise ClientError({"Error": {"Code": "AccessDeniedException"}}, "GetItem")
        return {}


def _stripe(fail: bool) -> Any:
    async def search_async(params: dict[str, Any]) -> Any:
        if fail:
            raise UNREACHABLE
        return SimpleNamespace(data=[], has_more=False, next_page=None)

    return SimpleNamespace(
        v1=SimpleNamespace(payment_intents=SimpleNamespace(search_async=search_async))
    )


def _read(sfn: FakeSfn, ddb: FakeDynamo | None = None, stripe_fails: bool = False) -> OrderStatus:
    settings = StatusSettings.model_validate(
        {
            "stripe_api_key": "rk_test_x",
            "orders_table": "orders",
            "inventory_table": "inventory",
            "state_machine_arn": MACHINE,
        }
    )
    reader = StatusReader(settings, ddb or FakeDynamo(), sfn, _stripe(stripe_fails))
    return asyncio.run(reader.read("ord_1"))


@pytest.mark.parametrize("order", ["oldest first", "newest first"])
def test_the_current_state_and_attempts_are_the_newest_whatever_the_page_order(order: str) -> None:
    """moto returns the history oldest first even when asked for newest first."""
    status = _read(FakeSfn(order, {EXECUTION}))
    [execution] = status.executions
    assert (execution.current_state, execution.attempts) == ("Failed", 2)
    assert (status.verdict, status.exit_code) == ("not_paid", 1)


def test_an_execution_not_named_after_the_order_and_not_found_is_left_out() -> None:
    status = _read(FakeSfn("oldest first", set()))
    assert status.executions == [] and status.verdict == "unknown"


def test_a_failing_source_is_reported_not_raised() -> None:
    status = _read(FakeSfn("oldest first", {EXECUTION}), FakeDynamo(fail=True), stripe_fails=True)
    assert sorted(status.unreadable) == [
        "dynamodb: AccessDeniedException",
        "stripe search: APIConnectionError: no route to Stripe",
    ]
    assert status.exit_code == EXIT_UNREADABLE
    assert status.executions[0].error == errors.DECLINED
    assert "could not read dynamodb: AccessDeniedException" in render_table(status)


def test_a_bad_setting_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {
        "PAYSTEP_STRIPE_API_KEY": "rk_test_x",
        "PAYSTEP_ORDERS_TABLE": "orders",
        "PAYSTEP_INVENTORY_TABLE": "inventory",
        "PAYSTEP_STATE_MACHINE_ARN": "paystep-payment",
    }.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(SystemExit) as exited:
        main(["status", "ord_1"])

    assert exited.value.code == EXIT_BAD_ARGUMENTS
    assert "paystep status: PAYSTEP_STATE_MACHINE_ARN: expected arn:" in capsys.readouterr().err
