"""End to end: the whole local stack as real processes, the demo's payments and more.

moto (AWS-length task tokens), localstripe, `paystep deploy`, one webhook and two
workers are started as processes, exactly as `paystep demo` starts them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from paystep.demo import DEMO_DEPLOY_ARGS, DEMO_MAX_ATTEMPTS
from paystep_local.localstack import LOCAL_STRIPE_KEY, LocalStack
from paystep_local.scenarios import Observed, Scenario, Stack, demo_scenarios, run

SCENARIOS = {s.name: s for s in demo_scenarios(DEMO_MAX_ATTEMPTS)}


@pytest.fixture(scope="module")
def full_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("e2e"), workers=2) as stack:
        stack.start(*DEMO_DEPLOY_ARGS)
        with stack.environment():
            yield stack


def _clients(stack: LocalStack) -> Stack:
    assert stack.deployment and stack.stripe_base
    return Stack(stack.deployment, stack.stripe_base, LOCAL_STRIPE_KEY)


def _run(stack: LocalStack, *scenarios: Scenario) -> list[Observed]:
    async def go() -> list[Observed]:
        async with _clients(stack) as clients:
            return list(await asyncio.gather(*(run(clients, s) for s in scenarios)))

    return asyncio.run(go())


def test_the_demos_manual_capture_is_authorised_then_captured_in_full(
    full_stack: LocalStack,
) -> None:
    [observed] = _run(full_stack, SCENARIOS["manual_capture"])
    assert observed.problems == []
    assert observed.payment_intent["capture_method"] == "manual"


def test_card_payment_succeeds_with_order_stock_and_receipt(full_stack: LocalStack) -> None:
    [observed] = _run(full_stack, SCENARIOS["card"])
    assert observed.problems == []
    assert (observed.status, observed.output["payment"]["status"]) == ("SUCCEEDED", "succeeded")
    assert observed.order_row["status"] == "paid"
    assert [m["type"] for m in observed.messages] == ["receipt"]
    metadata = observed.payment_intent["metadata"]
    assert int(metadata["paystep_token_parts"]) >= 2, "an AWS-length token spans several keys"
    assert metadata["paystep_execution"] == observed.execution_arn


def test_a_retried_decline_and_a_final_one_side_by_side(full_stack: LocalStack) -> None:
    retried, final = _run(full_stack, SCENARIOS["declined_retried"], SCENARIOS["declined_final"])
    assert (retried.problems, final.problems) == ([], [])
    assert (retried.status, retried.error) == ("FAILED", "Payment.Declined")
    assert len(retried.payment_intents) == DEMO_MAX_ATTEMPTS
    assert json.loads(retried.cause)["reason"] == "decline_code:insufficient_funds"
    assert len(final.payment_intents) == 1
    assert json.loads(final.cause)["reason"] == "decline_code:stolen_card"


def test_a_declined_attempt_paid_after_the_failure_is_refunded_with_an_alert(
    full_stack: LocalStack,
) -> None:
    [observed] = _run(full_stack, SCENARIOS["paid_too_late"])
    assert observed.problems == []
    assert (observed.status, observed.error) == ("FAILED", "Payment.Declined")
    assert [r["amount"] for r in observed.refunds] == [1999]
    assert "payment_refunded" in [m["type"] for m in observed.messages]


def test_sepa_debit_succeeds_asynchronously(full_stack: LocalStack) -> None:
    [observed] = _run(full_stack, SCENARIOS["sepa_debit"])
    assert observed.problems == []
    assert observed.status == "SUCCEEDED"


def test_payment_confirmed_later_by_the_customer_completes(full_stack: LocalStack) -> None:
    [observed] = _run(full_stack, SCENARIOS["confirm_later"])
    assert observed.problems == []
    assert observed.status == "SUCCEEDED"


def test_invalid_input_fails_without_a_payment_intent(full_stack: LocalStack) -> None:
    [observed] = _run(full_stack, SCENARIOS["invalid_input"])
    assert observed.problems == []
    assert (observed.error, observed.payment_intents) == ("Payment.InvalidInput", [])


def test_out_of_stock_fails_before_any_payment(full_stack: LocalStack) -> None:
    [observed] = _run(full_stack, SCENARIOS["out_of_stock"])
    assert observed.problems == []
    assert observed.error == "Order.Unfulfillable"
    assert (observed.payment_intents, observed.refunds) == ([], [])


@pytest.mark.slow
def test_fifty_concurrent_payments_all_end_as_expected(full_stack: LocalStack) -> None:
    mix = (
        [SCENARIOS["card"]] * 40
        + [SCENARIOS["invalid_input"]] * 5
        + [SCENARIOS["out_of_stock"]] * 5
    )
    results = _run(full_stack, *mix)
    problems = {r.order_id: r.problems for r in results if r.problems}
    assert problems == {}
    assert sum(r.status == "SUCCEEDED" for r in results) == 40
    assert all(len(r.payment_intents) == 1 for r in results if r.scenario == "card")


def test_aws_cli_start_execution_completes_a_payment(full_stack: LocalStack) -> None:
    aws = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")
    assert aws, "awscli is a dev dependency: pip install -e '.[dev]'"
    assert full_stack.deployment and full_stack.aws_endpoint
    order = f"ord_cli_{uuid.uuid4().hex[:8]}"
    request = {
        "order_id": order,
        "amount": 2500,
        "currency": "usd",
        "payment_method": "pm_card_visa",
    }
    started = subprocess.run(
        [aws, "--endpoint-url", full_stack.aws_endpoint, "stepfunctions", "start-execution",
         "--state-machine-arn", full_stack.deployment["state_machine_arn"], "--name", order,
         "--input", json.dumps(request)],
        env=full_stack.env(), capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    arn = json.loads(started.stdout)["executionArn"]

    async def wait() -> dict[str, Any]:
        async with _clients(full_stack) as clients:
            return await clients.wait_done(arn)

    described = asyncio.run(wait())
    assert described["status"] == "SUCCEEDED", described
    assert json.loads(described["output"])["payment"]["amount_received"] == 2500


def _port_open(url: str) -> bool:
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


def test_stopping_the_stack_leaves_no_process_or_port(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, workers=1)
    try:
        stack.start()
        processes = list(stack.processes)
        urls = [stack.aws_endpoint or "", stack.stripe_base or ""]
        urls += [url for p in processes for url in p.urls.values()]
        assert all(_port_open(url) for url in urls)
    finally:
        stack.stop()
    assert [p.name for p in processes if p.process.poll() is None] == []
    for p in processes:
        with pytest.raises(ProcessLookupError):
            os.killpg(p.process.pid, 0)
    assert [url for url in urls if _port_open(url)] == []
