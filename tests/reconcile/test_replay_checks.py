"""Reconcile meets orphans as the webhook does: a replayed success whose task closed is checked.

GIVEN events listed from Stripe, replayed through the webhook's mapping
WHEN a `payment_intent.succeeded` finds its task already closed
THEN a `check_payment` task goes to the worker (counted in the summary), and a check
that cannot be queued is an error of the run, which goes on.
"""

from __future__ import annotations

from typing import Any

from statemachine.callbacks import CallbackResult
from tests.webhook.conftest import (
    FakeBudget,
    FakeChecks,
    FakeNotices,
    Waiting,
    event,
    payment_intent,
    reader_for,
)
from webhook.checks import CheckError
from webhook.events import parse_event
from webhook.reconcile import Summary, replay

WAITING = Waiting(
    "arn:aws:states:us-east-1:123456789012:execution:paystep-payment:ord_r", "ord_r", "T" * 900, 1
)


class ClosedCallbacks:
    """Step Functions' answer for every task of an execution that ended."""

    async def succeed(self, token: str, output: Any) -> CallbackResult:
        return CallbackResult.ALREADY_CLOSED

    async def fail(self, token: str, error: str, cause: str) -> CallbackResult:
        return CallbackResult.ALREADY_CLOSED

    async def heartbeat(self, token: str) -> CallbackResult:
        return CallbackResult.ALREADY_CLOSED


async def _replay(checks: FakeChecks) -> tuple[Summary, list[str]]:
    paid = payment_intent(WAITING)
    events = [
        parse_event(event("payment_intent.payment_failed", payment_intent(WAITING))),
        parse_event(event("payment_intent.succeeded", paid)),
    ]
    summary = Summary()
    await replay(
        events,
        ClosedCallbacks(),  # type: ignore[arg-type]
        reader_for(WAITING),
        checks,
        FakeNotices(),
        FakeBudget(),
        summary,
        dry_run=False,
        concurrency=2,
    )
    return summary, [paid["id"]]


async def test_a_replayed_success_on_a_closed_task_is_sent_to_the_worker() -> None:
    checks = FakeChecks()

    summary, [paid] = await _replay(checks)

    assert [(t.payment_intent_id, t.execution_id) for t in checks.sent] == [
        (paid, WAITING.execution_arn)
    ]
    assert (summary.payment_checks, summary.already_closed, summary.errors) == (1, 2, 0)
    assert "payments to check 1" in summary.line(dry_run=False)


async def test_a_check_that_cannot_be_queued_is_an_error_and_the_run_goes_on() -> None:
    summary, _ = await _replay(FakeChecks(CheckError("queue down")))

    assert (summary.payment_checks, summary.already_closed, summary.errors) == (0, 1, 1)
