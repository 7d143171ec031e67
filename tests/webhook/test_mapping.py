"""The event → callback table as pure functions, and `handle_event` over a fake `Callbacks`."""

from __future__ import annotations

import json
from typing import Any

import pytest
import stripe

from statemachine import causes, errors
from statemachine.callbacks import CallbackError, CallbackResult
from statemachine.card_budget import Card
from statemachine.metadata import TOKEN_PARTS_KEY
from statemachine.models import PaymentOutcome
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
from webhook.events import MalformedEvent, parse_event
from webhook.mapping import (
    Fail,
    Heartbeat,
    Ignore,
    IgnoreReason,
    Plan,
    Result,
    Succeed,
    handle_event,
    plan,
)
from webhook.notices import NoticeError

TOKEN = "T" * 1500 + "end"
EVENT_ID = "evt_planned"
WAITING = Waiting("arn:aws:states:us-east-1:123456789012:execution:m:ord_1", "ord_1", TOKEN, 1)
READER = reader_for(WAITING)


class FakeCallbacks:
    """Records SendTask* calls and answers `result` (or raises `error`)."""

    def __init__(
        self, result: CallbackResult = CallbackResult.DELIVERED, error: Exception | None = None
    ) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self._result = result
        self._error = error

    async def _answer(self, call: tuple[str, str, Any]) -> CallbackResult:
        self.calls.append(call)
        if self._error is not None:
            raise self._error
        return self._result

    async def succeed(self, token: str, output: PaymentOutcome) -> CallbackResult:
        return await self._answer(("succeed", token, output))

    async def fail(self, token: str, error: str, cause: str) -> CallbackResult:
        return await self._answer(("fail", token, (error, causes.parse(cause))))

    async def heartbeat(self, token: str) -> CallbackResult:
        return await self._answer(("heartbeat", token, None))


def planned(event_type: str, **pi_fields: Any) -> Plan | Ignore:
    evt = event(event_type, payment_intent(WAITING, **pi_fields))
    return plan(parse_event({**evt, "id": EVENT_ID}), READER)


def test_succeeded_plans_success_with_the_payment_of_the_snapshot() -> None:
    evt = event("payment_intent.succeeded", payment_intent(WAITING, latest_charge="ch_9"))

    decision = plan(parse_event(evt), READER)

    assert isinstance(decision, Plan)
    assert decision.token == TOKEN
    assert decision.callback == Succeed(
        PaymentOutcome(
            payment_intent_id=evt["data"]["object"]["id"],
            status="succeeded",
            amount_received=1999,
            currency="usd",
            latest_charge="ch_9",
            event_id=evt["id"],
        )
    )


def test_an_expanded_latest_charge_is_read_as_its_id() -> None:
    decision = planned("payment_intent.succeeded", latest_charge={"id": "ch_x", "object": "charge"})

    assert isinstance(decision, Plan) and isinstance(decision.callback, Succeed)
    assert decision.callback.output.latest_charge == "ch_x"


def test_older_api_versions_give_the_latest_charge_as_the_first_listed() -> None:
    listed = {"object": "list", "data": [{"id": "ch_new"}, {"id": "ch_old"}]}

    decision = planned("payment_intent.succeeded", latest_charge=None, charges=listed)

    assert isinstance(decision, Plan) and isinstance(decision.callback, Succeed)
    assert decision.callback.output.latest_charge == "ch_new"


def test_an_authorisation_resumes_the_task_as_authorised_not_paid() -> None:
    # https://docs.stripe.com/api/events/types#event_types-payment_intent.amount_capturable_updated
    decision = planned(
        "payment_intent.amount_capturable_updated",
        status="requires_capture",
        amount_capturable=1999,
        amount_received=0,
    )

    assert isinstance(decision, Plan) and isinstance(decision.callback, Succeed)
    output = decision.callback.output
    assert (output.status, output.amount_capturable, output.amount_received) == (
        "requires_capture",
        1999,
        0,
    )


def test_any_event_of_an_authorised_payment_intent_resumes_as_authorised() -> None:
    decision = planned("payment_intent.processing", status="requires_capture")

    assert isinstance(decision, Plan) and isinstance(decision.callback, Succeed)
    assert decision.callback.output.status == "requires_capture"


@pytest.mark.parametrize("reason", ["automatic", "expired"])
def test_stripes_cancel_of_an_expired_authorisation_fails_authorization_expired(
    reason: str,
) -> None:
    # https://docs.stripe.com/api/payment_intents/object#payment_intent_object-cancellation_reason
    decision = planned("payment_intent.canceled", status="canceled", cancellation_reason=reason)

    assert isinstance(decision, Plan) and isinstance(decision.callback, Fail)
    assert decision.callback.failure.error == errors.AUTHORIZATION_EXPIRED
    assert json.loads(decision.callback.failure.cause)["cancellation_reason"] == reason


def test_a_cancel_for_another_reason_stays_canceled() -> None:
    decision = planned(
        "payment_intent.canceled", status="canceled", cancellation_reason="abandoned"
    )

    assert isinstance(decision, Plan) and isinstance(decision.callback, Fail)
    assert decision.callback.failure.error == errors.CANCELED


def test_payment_failed_plans_a_declined_failure_with_stripes_codes() -> None:
    decision = planned(
        "payment_intent.payment_failed",
        status="requires_payment_method",
        last_payment_error={
            "code": "card_declined",
            "decline_code": "stolen_card",
            "message": "Your card was declined.",
        },
    )

    assert isinstance(decision, Plan) and isinstance(decision.callback, Fail)
    assert decision.callback.failure.error == errors.DECLINED
    assert causes.parse(decision.callback.failure.cause) == {
        "payment_intent_id": decision.payment_intent.id,
        "code": "card_declined",
        "decline_code": "stolen_card",
        "message": "Your card was declined.",
        "verdict": "final",
        "retryable": False,
        "reason": "decline_code:stolen_card",
        "event_id": EVENT_ID,
    }


def test_canceled_plans_a_canceled_failure() -> None:
    decision = planned(
        "payment_intent.canceled", status="canceled", cancellation_reason="abandoned"
    )

    assert isinstance(decision, Plan) and isinstance(decision.callback, Fail)
    assert decision.callback.failure.error == errors.CANCELED
    assert causes.parse(decision.callback.failure.cause) == {
        "payment_intent_id": decision.payment_intent.id,
        "cancellation_reason": "abandoned",
        "event_id": EVENT_ID,
    }


@pytest.mark.parametrize(
    "event_type", ["payment_intent.processing", "payment_intent.requires_action"]
)
def test_progress_plans_a_heartbeat(event_type: str) -> None:
    decision = planned(event_type, status=event_type.rsplit(".", 1)[1])

    assert isinstance(decision, Plan) and decision.callback == Heartbeat()


def test_a_token_missing_a_part_is_not_reassembled() -> None:
    """Rule: damaged parts are ignored, never reassembled into a wrong token (metadata.py)."""
    pi = payment_intent(WAITING)
    pi["metadata"][TOKEN_PARTS_KEY] = str(int(pi["metadata"][TOKEN_PARTS_KEY]) + 1)

    decision = plan(parse_event(event("payment_intent.succeeded", pi)), READER)

    assert decision == Ignore(IgnoreReason.DAMAGED_TOKEN, decision.payment_intent)


def test_other_types_are_ignored_without_reading_the_object() -> None:
    decision = plan(parse_event(event("invoice.paid", {"object": "invoice"})), READER)

    assert decision == Ignore(IgnoreReason.UNHANDLED_TYPE)


@pytest.mark.parametrize(
    "fields",
    [{"charges": []}, {"charges": {"data": "x"}}, {"amount": "lots"}, {"metadata": ["a"]}],
)
def test_odd_payment_intent_fields_are_malformed_or_ignored_never_a_crash(
    fields: dict[str, Any],
) -> None:
    evt = event("payment_intent.succeeded", payment_intent(WAITING, latest_charge=None, **fields))

    try:
        decision = plan(parse_event(evt), READER)
    except MalformedEvent:
        return
    assert isinstance(decision, Plan) and isinstance(decision.callback, Succeed)
    assert decision.callback.output.latest_charge is None


def test_a_payment_intent_type_with_another_object_is_malformed() -> None:
    with pytest.raises(MalformedEvent, match="payment_intent"):
        plan(
            parse_event(event("payment_intent.succeeded", {"object": "charge", "id": "ch_1"})),
            READER,
        )


async def test_handle_event_takes_a_plain_mapping_and_sends_the_callback() -> None:
    callbacks = FakeCallbacks()
    evt = event("payment_intent.succeeded", payment_intent(WAITING))

    outcome = await handle_event(evt, callbacks, READER, FakeChecks(), FakeNotices(), FakeBudget())  # type: ignore[arg-type]

    assert (outcome.result, outcome.action) == (Result.DELIVERED, "succeed")
    assert [(name, token) for name, token, _ in callbacks.calls] == [("succeed", TOKEN)]


async def test_handle_event_takes_an_event_listed_from_stripes_api() -> None:
    # Reconciliation replays `stripe.Event` objects from the Events API.
    callbacks = FakeCallbacks(CallbackResult.ALREADY_CLOSED)
    listed = stripe.Event.construct_from(
        event("payment_intent.canceled", payment_intent(WAITING)), "sk_test_x"
    )

    outcome = await handle_event(
        listed, callbacks, READER, FakeChecks(), FakeNotices(), FakeBudget()
    )  # type: ignore[arg-type]

    assert (outcome.result, outcome.action) == (Result.ALREADY_CLOSED, "fail")
    assert callbacks.calls[0][2][0] == "Payment.Canceled"


async def test_handle_event_lets_a_callback_error_through_for_the_caller_to_retry() -> None:
    callbacks = FakeCallbacks(error=CallbackError("throttled", code="ThrottlingException"))

    with pytest.raises(CallbackError):
        await handle_event(
            event("payment_intent.succeeded", payment_intent(WAITING)),
            callbacks,  # type: ignore[arg-type]
            READER,
            FakeChecks(),
            FakeNotices(),
            FakeBudget(),
        )


async def test_handle_event_sends_nothing_for_an_ignored_event() -> None:
    callbacks = FakeCallbacks()

    outcome = await handle_event(
        event("payment_intent.succeeded", payment_intent(None)),
        callbacks,  # type: ignore[arg-type]
        READER,
        FakeChecks(),
        FakeNotices(),
        FakeBudget(),
    )

    assert (outcome.result, outcome.reason) == (Result.IGNORED, IgnoreReason.NO_TOKEN)
    assert callbacks.calls == []


async def test_a_success_on_a_closed_task_is_handed_to_the_worker_to_check() -> None:
    checks = FakeChecks()
    pi = payment_intent(WAITING)
    evt = event("payment_intent.succeeded", pi)

    outcome = await handle_event(
        evt,
        FakeCallbacks(CallbackResult.ALREADY_CLOSED),  # type: ignore[arg-type]
        READER,
        checks,
        FakeNotices(),
        FakeBudget(),
    )

    assert (outcome.result, outcome.checked) == (Result.ALREADY_CLOSED, True)
    [task] = checks.sent
    assert (task.execution_id, task.payment_intent_id) == (WAITING.execution_arn, pi["id"])
    assert (task.order_id, task.attempt, task.event_id) == ("ord_1", 1, evt["id"])


@pytest.mark.parametrize(
    ("event_type", "result"),
    [
        ("payment_intent.succeeded", CallbackResult.DELIVERED),
        ("payment_intent.payment_failed", CallbackResult.ALREADY_CLOSED),
        ("payment_intent.canceled", CallbackResult.ALREADY_CLOSED),
    ],
)
async def test_only_a_closed_success_is_checked(event_type: str, result: CallbackResult) -> None:
    checks = FakeChecks()

    outcome = await handle_event(
        event(event_type, payment_intent(WAITING)),
        FakeCallbacks(result),  # type: ignore[arg-type]
        READER,
        checks,
        FakeNotices(),
        FakeBudget(),
    )

    assert (outcome.checked, checks.sent) == (False, [])


async def test_a_check_that_cannot_be_queued_raises_for_a_redelivery() -> None:
    with pytest.raises(CheckError):
        await handle_event(
            event("payment_intent.succeeded", payment_intent(WAITING)),
            FakeCallbacks(CallbackResult.ALREADY_CLOSED),  # type: ignore[arg-type]
            READER,
            FakeChecks(CheckError("queue down")),
            FakeNotices(),
            FakeBudget(),
        )


ASKING = [
    ({"type": "card_error", "code": "expired_card", "charge": "ch_exp"}, "update_card"),
    ({"type": "card_error", "code": "incorrect_cvc", "charge": "ch_cvc"}, "update_card"),
    (
        {
            "type": "card_error",
            "code": "authentication_required",
            "decline_code": "authentication_required",
            "charge": "ch_auth",
        },
        "authenticate",
    ),
]


@pytest.mark.parametrize(("error", "action"), ASKING, ids=["expired", "cvc", "authentication"])
async def test_a_decline_the_customer_must_fix_keeps_the_task_open_and_tells_them(
    error: dict[str, Any], action: str
) -> None:
    callbacks, notices = FakeCallbacks(), FakeNotices()
    pi = payment_intent(WAITING, status="requires_payment_method", last_payment_error=error)

    outcome = await handle_event(
        event("payment_intent.payment_failed", pi),
        callbacks,  # type: ignore[arg-type]
        READER,
        FakeChecks(),
        notices,
        FakeBudget(),
    )

    assert (outcome.result, outcome.action) == (Result.DELIVERED, "ask_customer")
    assert [name for name, _, _ in callbacks.calls] == ["heartbeat"]
    [notice] = notices.published
    assert (notice.type, notice.action, notice.payment_intent_id) == (
        "payment_action_required",
        action,
        pi["id"],
    )
    assert (notice.order_id, notice.execution_id) == ("ord_1", WAITING.execution_arn)
    assert notice.dedupe_key == error["charge"]


async def test_no_notice_when_the_task_no_longer_waits() -> None:
    notices = FakeNotices()
    pi = payment_intent(WAITING, status="requires_payment_method", last_payment_error=ASKING[0][0])
    outcome = await handle_event(
        event("payment_intent.payment_failed", pi),
        FakeCallbacks(CallbackResult.ALREADY_CLOSED),  # type: ignore[arg-type]
        READER,
        FakeChecks(),
        notices,
        FakeBudget(),
    )
    assert (outcome.result, notices.published) == (Result.ALREADY_CLOSED, [])


async def test_a_notice_that_cannot_be_published_raises_for_a_redelivery() -> None:
    pi = payment_intent(WAITING, status="requires_payment_method", last_payment_error=ASKING[0][0])
    with pytest.raises(NoticeError):
        await handle_event(
            event("payment_intent.payment_failed", pi),
            FakeCallbacks(),  # type: ignore[arg-type]
            READER,
            FakeChecks(),
            FakeNotices(NoticeError("sns down")),
            FakeBudget(),
        )


def test_a_final_decline_fails_with_the_verdict() -> None:
    decision = planned(
        "payment_intent.payment_failed",
        status="requires_payment_method",
        last_payment_error={
            "code": "card_declined",
            "decline_code": "insufficient_funds",
            "advice_code": "do_not_try_again",
        },
    )
    assert isinstance(decision, Plan) and isinstance(decision.callback, Fail)
    cause = causes.parse(decision.callback.failure.cause)
    assert (cause["verdict"], cause["reason"]) == ("final", "advice_code:do_not_try_again")


VISA_DECLINE = {
    "type": "card_error",
    "code": "card_declined",
    "decline_code": "insufficient_funds",
    "charge": "ch_1",
    "payment_method": {"id": "pm_1", "card": {"brand": "visa", "fingerprint": "fp_1"}},
}


@pytest.mark.parametrize(("room", "verdict"), [(True, "retry"), (False, "final")])
async def test_a_decline_is_counted_against_its_card_as_the_worker_counts_it(
    room: bool, verdict: str
) -> None:
    callbacks, budget = FakeCallbacks(), FakeBudget(room=room)
    pi = payment_intent(WAITING, status="requires_payment_method", last_payment_error=VISA_DECLINE)

    await handle_event(
        event("payment_intent.payment_failed", pi),
        callbacks,  # type: ignore[arg-type]
        READER,
        FakeChecks(),
        FakeNotices(),
        budget,
    )

    assert budget.counted == [(Card("fp_1", "visa"), f"{WAITING.execution_arn}#1")]
    [(name, _, (_, cause))] = callbacks.calls
    assert (name, cause["verdict"]) == ("fail", verdict)
    assert cause["reason"] == ("decline_code:insufficient_funds" if room else "retry_budget")


async def test_a_decline_naming_no_card_is_not_counted() -> None:
    budget = FakeBudget()
    error = {k: v for k, v in VISA_DECLINE.items() if k != "payment_method"}
    pi = payment_intent(WAITING, status="requires_payment_method", last_payment_error=error)
    await handle_event(
        event("payment_intent.payment_failed", pi),
        FakeCallbacks(),  # type: ignore[arg-type]
        READER,
        FakeChecks(),
        FakeNotices(),
        budget,
    )
    assert budget.counted == []
