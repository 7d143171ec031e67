"""One cause per failure: the same decline reads the same whichever side reports it first."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import stripe

from statemachine import causes, errors
from tests.webhook.conftest import Waiting, event, payment_intent, reader_for
from webhook.events import parse_event
from webhook.mapping import Fail, Plan, plan
from worker.classify import FailTask, classify
from worker.errors import TaskFailure
from worker.handlers import _adopt

PI_ID = "pi_declined"
EVENT_ID = "evt_failed"
WAITING = Waiting("arn:aws:states:us-east-1:1:execution:m:ord_1", "ord_1", "token", 1)

# Stripe's error object as each side receives it, and the cause every side must send.
DECLINES = [
    pytest.param(
        {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "insufficient_funds",
            "message": "Your card has insufficient funds.",
        },
        '{"payment_intent_id":"pi_declined","code":"card_declined",'
        '"decline_code":"insufficient_funds","message":"Your card has insufficient funds.",'
        '"verdict":"retry","retryable":true,"reason":"decline_code:insufficient_funds"}',
        id="insufficient_funds",
    ),
    pytest.param(
        # Stripe sends no decline_code for a processing error.
        {
            "type": "card_error",
            "code": "processing_error",
            "message": "An error occurred while processing your card.",
            "doc_url": "https://docs.stripe.com/error-codes/processing-error",
        },
        '{"payment_intent_id":"pi_declined","code":"processing_error",'
        '"message":"An error occurred while processing your card.",'
        '"verdict":"retry","retryable":true,"reason":"code:processing_error"}',
        id="no_decline_code",
    ),
]


def by_the_worker(error: dict[str, Any]) -> causes.Failure:
    """The create call answers 402 with a CardError naming the PaymentIntent it made."""
    body = {"error": {**error, "payment_intent": {"id": PI_ID, "object": "payment_intent"}}}
    exc = stripe.CardError(error["message"], None, error["code"], json.dumps(body), 402, body, {})
    decision = classify(exc)
    assert isinstance(decision, FailTask)
    return causes.Failure(decision.error, decision.cause)


def by_a_late_worker(error: dict[str, Any]) -> causes.Failure:
    """A redelivered create finds the attempt's PaymentIntent, declined, and reports it."""
    intent = stripe.PaymentIntent.construct_from(
        {
            "id": PI_ID,
            "object": "payment_intent",
            "status": "requires_payment_method",
            "last_payment_error": error,
        },
        "sk_test",
    )
    with pytest.raises(TaskFailure) as raised:
        _adopt([intent])
    return raised.value.failure


def by_the_webhook(error: dict[str, Any]) -> causes.Failure:
    """payment_intent.payment_failed carries the same error as last_payment_error."""
    pi = payment_intent(WAITING, status="requires_payment_method", last_payment_error=error)
    evt = event("payment_intent.payment_failed", {**pi, "id": PI_ID})
    decision = plan(parse_event({**evt, "id": EVENT_ID}), reader_for(WAITING))
    assert isinstance(decision, Plan) and isinstance(decision.callback, Fail)
    return decision.callback.failure


@pytest.mark.parametrize(("error", "cause"), DECLINES)
def test_a_decline_reads_the_same_from_the_worker_a_late_worker_and_the_webhook(
    error: dict[str, Any], cause: str
) -> None:
    assert by_the_worker(error) == causes.Failure(errors.DECLINED, cause)
    assert by_a_late_worker(error) == causes.Failure(errors.DECLINED, cause)
    # The webhook adds the event it acted on, after the same fields in the same order.
    with_event = cause.removesuffix("}") + f',"event_id":"{EVENT_ID}"}}'
    assert by_the_webhook(error) == causes.Failure(errors.DECLINED, with_event)


def test_a_late_worker_leaves_a_decline_the_customer_must_fix_open() -> None:
    """incorrect_cvc asks the customer: a redelivered create reports no failure."""
    intent = stripe.PaymentIntent.construct_from(
        {
            "id": PI_ID,
            "object": "payment_intent",
            "status": "requires_payment_method",
            "last_payment_error": {"type": "card_error", "code": "incorrect_cvc"},
        },
        "sk_test",
    )
    assert _adopt([intent]) == "ask_customer"


BUILT: list[tuple[str, causes.Failure, str]] = [
    (
        "declined",
        causes.declined("pi_1", None, event_id="evt_1"),
        '{"payment_intent_id":"pi_1","verdict":"retry","retryable":true,"reason":"unknown",'
        '"event_id":"evt_1"}',
    ),
    (
        "declined, nothing known",
        causes.declined(None, None),
        '{"verdict":"retry","retryable":true,"reason":"unknown"}',
    ),
    (
        "declined, with advice and the charge",
        causes.declined(
            "pi_1",
            stripe.ErrorObject.construct_from(
                {
                    "code": "card_declined",
                    "decline_code": "generic_decline",
                    "advice_code": "do_not_try_again",
                    "network_advice_code": "03",
                    "network_decline_code": "05",
                    "charge": "ch_1",
                },
                "sk_test",
            ),
        ),
        '{"payment_intent_id":"pi_1","code":"card_declined","decline_code":"generic_decline",'
        '"advice_code":"do_not_try_again","network_advice_code":"03","network_decline_code":"05",'
        '"charge":"ch_1","verdict":"final","retryable":false,"reason":"advice_code:do_not_try_again"}',
    ),
    (
        "canceled",
        causes.canceled("pi_1", "abandoned", event_id="evt_1"),
        '{"payment_intent_id":"pi_1","cancellation_reason":"abandoned","event_id":"evt_1"}',
    ),
    ("canceled, no reason", causes.canceled("pi_1", None), '{"payment_intent_id":"pi_1"}'),
    (
        "rejected",
        causes.rejected(
            None,
            stripe.ErrorObject.construct_from(
                {"code": "resource_missing", "param": "customer", "message": "No such customer"},
                "sk_test",
            ),
        ),
        '{"code":"resource_missing","param":"customer","message":"No such customer"}',
    ),
    ("invalid input", causes.invalid_input("amount: must be > 0"), "amount: must be > 0"),
]


@pytest.mark.parametrize(
    ("failure", "cause"), [row[1:] for row in BUILT], ids=[r[0] for r in BUILT]
)
def test_builders_drop_none_and_keep_their_key_order(failure: causes.Failure, cause: str) -> None:
    assert failure.cause == cause


BUILDERS: list[Callable[[], causes.Failure]] = [
    lambda: causes.declined("pi_1", None),
    lambda: causes.canceled("pi_1", None),
    lambda: causes.rejected(None, None),
    lambda: causes.invalid_input("amount"),
]


@pytest.mark.parametrize("build", BUILDERS, ids=["declined", "canceled", "rejected", "invalid"])
def test_every_builder_names_a_contract_error(build: Callable[[], causes.Failure]) -> None:
    assert build().error in errors.CONTRACT_ERRORS


def test_parse_reads_a_built_cause_back() -> None:
    failure = causes.declined("pi_1", None, event_id="evt_1")
    assert causes.parse(failure.cause) == {
        "payment_intent_id": "pi_1",
        "verdict": "retry",
        "retryable": True,
        "reason": "unknown",
        "event_id": "evt_1",
    }


@pytest.mark.parametrize("text", ["amount: must be > 0", "[]"])
def test_parse_refuses_what_is_not_a_json_object(text: str) -> None:
    with pytest.raises(ValueError):
        causes.parse(text)
