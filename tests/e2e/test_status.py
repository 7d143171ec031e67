"""`paystep status` on the demo's orders, on the whole local stack: each story told right.

GIVEN moto, the local Stripe, `paystep deploy`, one webhook and one worker as processes,
and the demo's scenarios run to their ends (paid; declined for good; out of stock;
invalid input; declined, then paid too late and refunded) beside a payment still waiting
WHEN `paystep status ORDER_ID` runs as the CLI, `--output json` and the table
THEN it names each execution's status, error and attempts, each PaymentIntent's status,
decline and refunds, the order's row and holds, and exits with the code of its verdict;
an order nobody knows exits 4, an id paystep would never take exits 2.

An execution's state is read from `DescribeExecution` and `GetExecutionHistory`
(https://docs.aws.amazon.com/step-functions/latest/apireference/API_GetExecutionHistory.html),
a PaymentIntent's refunds from the refunds list
(https://docs.stripe.com/api/refunds/list#list_refunds-payment_intent).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from paystep.cli import main
from paystep_local.localstack import LocalStack
from paystep_local.polling import eventually_async
from paystep_local.scenarios import Observed, Stack, demo_scenarios, run
from statemachine import errors
from tests.support.stacks import deployed_stack, run_scenario

pytestmark = pytest.mark.slow

MAX_ATTEMPTS = 2
DEPLOY_ARGS = ("--max-attempts", str(MAX_ATTEMPTS), "--retry-backoff-s", "1")
STORIES = (
    "card",
    "manual_capture",
    "declined_final",
    "out_of_stock",
    "invalid_input",
    "paid_too_late",
)


@dataclass(frozen=True)
class Demo:
    stack: LocalStack
    observed: dict[str, Observed]
    waiting_order: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with deployed_stack(tmp_path_factory.mktemp("status"), DEPLOY_ARGS, workers=1) as stack:

        async def scenarios(clients: Stack) -> tuple[dict[str, Observed], str]:
            chosen = [s for s in demo_scenarios(MAX_ATTEMPTS) if s.name in STORIES]
            # No payment method: the PaymentIntent waits for a customer who has not come yet.
            waiting = f"ord_waiting_{uuid.uuid4().hex[:8]}"
            await clients.put_stock(f"sku_{waiting}", 3)
            await clients.start(
                {
                    "order_id": waiting,
                    "amount": 1999,
                    "currency": "usd",
                    "items": [{"sku": f"sku_{waiting}", "quantity": 1}],
                }
            )
            ran = await asyncio.gather(*(run(clients, s) for s in chosen))
            await eventually_async(
                lambda: clients.payment_intents_of(waiting),
                timeout_s=60,
                what="the waiting order's PaymentIntent",
            )
            return {o.scenario: o for o in ran}, waiting

        observed, waiting = run_scenario(stack, scenarios)
        for o in observed.values():
            assert not o.problems, (o.scenario, o.problems)
        yield Demo(stack, observed, waiting)


def _command(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    """`paystep status` in a process of its own, as a person or a script runs it."""
    return subprocess.run(
        [sys.executable, "-m", "paystep", "status", *args],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _main(*args: str) -> tuple[int, str]:
    """The same command line through the CLI's `main` in this process (the stack's
    environment is this process's while the fixture runs): its exit code and stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["status", *args])
    return code, out.getvalue()


def _json(demo: Demo, story: str) -> tuple[dict[str, Any], Observed]:
    observed = demo.observed[story]
    code, out = _main(observed.order_id, "--output", "json")
    view: dict[str, Any] = json.loads(out)
    assert code == view["exit_code"]
    return view, observed


def test_a_paid_order_exits_0_with_its_payment_and_no_holds_left(demo: Demo) -> None:
    view, observed = _json(demo, "card")

    assert (view["verdict"], view["exit_code"]) == ("paid", 0), view["summary"]
    pi = observed.payment_intent
    assert view["order"]["status"] == "paid"
    assert view["order"]["payment_intent_id"] == pi["id"]
    assert view["order"]["holds"] == [] and view["order"]["claim_state"] is None
    [execution] = view["executions"]
    assert execution["arn"] == observed.execution_arn
    assert (execution["status"], execution["error"], execution["attempts"]) == (
        "SUCCEEDED",
        None,
        1,
    )
    assert execution["current_state"] == "Paid"
    [payment] = view["payment_intents"]
    assert (payment["id"], payment["status"]) == (pi["id"], "succeeded")
    assert (payment["amount"], payment["amount_received"], payment["currency"]) == (
        1999,
        1999,
        "usd",
    )
    assert payment["refunds"] == [] and payment["last_payment_error"] is None


def test_a_manual_capture_order_exits_0_with_its_captured_authorisation(demo: Demo) -> None:
    view, observed = _json(demo, "manual_capture")

    assert (view["verdict"], view["exit_code"]) == ("paid", 0), view["summary"]
    assert view["order"]["status"] == "paid" and view["order"]["holds"] == []
    [execution] = view["executions"]
    assert (execution["status"], execution["current_state"]) == ("SUCCEEDED", "Paid")
    [payment] = view["payment_intents"]
    assert (payment["id"], payment["capture_method"]) == (
        observed.payment_intent["id"],
        "manual",
    )
    assert (payment["status"], payment["amount_received"]) == ("succeeded", payment["amount"])
    assert payment["refunds"] == []


def test_the_table_tells_the_same_story(demo: Demo) -> None:
    observed = demo.observed["card"]
    result = _command(demo.stack, observed.order_id)

    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith(f"order {observed.order_id}: paid (exit 0)")
    assert f"order row: paid, paid by {observed.payment_intent['id']}" in text
    assert "SUCCEEDED" in text and observed.payment_intent["id"] in text


def test_a_final_decline_exits_1_with_the_decline_and_the_claim_released(demo: Demo) -> None:
    view, _ = _json(demo, "declined_final")

    assert (view["verdict"], view["exit_code"]) == ("not_paid", 1), view["summary"]
    assert view["order"]["status"] == "released" and view["order"]["holds"] == []
    [execution] = view["executions"]
    assert (execution["status"], execution["error"], execution["attempts"]) == (
        "FAILED",
        errors.DECLINED,
        1,
    )
    assert json.loads(execution["cause"])["reason"] == "decline_code:stolen_card"
    [payment] = view["payment_intents"]
    assert payment["status"] == "requires_payment_method"
    assert payment["last_payment_error"]["decline_code"] == "stolen_card"
    assert payment["amount_received"] == 0 and payment["refunds"] == []


def test_an_order_out_of_stock_has_no_row_and_names_its_execution(demo: Demo) -> None:
    view, observed = _json(demo, "out_of_stock")

    assert (view["verdict"], view["exit_code"]) == ("not_paid", 1), view["summary"]
    assert view["order"] is None and view["payment_intents"] == []
    [execution] = view["executions"]
    assert (execution["arn"], execution["status"], execution["error"]) == (
        observed.execution_arn,
        "FAILED",
        errors.UNFULFILLABLE,
    )
    assert execution["attempts"] == 0


def test_invalid_input_names_the_field_and_no_payment(demo: Demo) -> None:
    view, _ = _json(demo, "invalid_input")

    assert (view["verdict"], view["exit_code"]) == ("not_paid", 1), view["summary"]
    [execution] = view["executions"]
    assert execution["error"] == errors.INVALID_INPUT and "amount" in execution["cause"]
    assert view["payment_intents"] == [] and view["order"] is None


def test_a_payment_made_too_late_shows_its_refund_and_is_not_paid(demo: Demo) -> None:
    view, observed = _json(demo, "paid_too_late")

    assert (view["verdict"], view["exit_code"]) == ("not_paid", 1), view["summary"]
    [execution] = view["executions"]
    assert (execution["error"], execution["attempts"]) == (errors.DECLINED, MAX_ATTEMPTS)
    assert [p["status"] for p in view["payment_intents"]] == ["canceled", "succeeded"]
    late = view["payment_intents"][-1]
    assert late["id"] == observed.payment_intent["id"]
    assert [(r["id"], r["amount"], r["status"]) for r in late["refunds"]] == [
        (r["id"], r["amount"], "succeeded") for r in observed.refunds
    ]
    assert view["order"]["status"] == "released"


def test_a_payment_still_waiting_exits_3_with_its_hold_counted(demo: Demo) -> None:
    code, out = _main(demo.waiting_order, "--output", "json")
    view = json.loads(out)

    assert (code, view["verdict"]) == (3, "in_progress"), view["summary"]
    [execution] = view["executions"]
    assert (execution["status"], execution["current_state"]) == ("RUNNING", "CreatePayment")
    assert view["order"]["status"] == "paying" and view["order"]["claim_state"] == "open"
    hold = {"sku": f"sku_{demo.waiting_order}", "quantity": 1, "stock": 2}
    assert view["order"]["holds"] == [hold]
    [payment] = view["payment_intents"]
    assert payment["status"] == "requires_payment_method"


def test_an_unknown_order_exits_4_and_a_bad_id_exits_2(demo: Demo) -> None:
    unknown = _command(demo.stack, f"ord_nobody_{uuid.uuid4().hex[:8]}", "--output", "json")
    assert unknown.returncode == 4, unknown.stdout + unknown.stderr
    assert json.loads(unknown.stdout)["verdict"] == "unknown"

    assert _main("not an order") == (2, "")
