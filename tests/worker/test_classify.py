"""classify(): one decision per exception; Backoff: jittered, growing, capped; RetryPolicy."""

from __future__ import annotations

import json
from typing import Any

import pytest
import stripe
from botocore.exceptions import EndpointConnectionError

from statemachine import causes, errors
from statemachine.callbacks import CallbackError
from statemachine.card_budget import BudgetContention
from worker.classify import Backoff, DeadLetter, FailTask, Retry, RetryPolicy, classify
from worker.errors import PoisonMessage, TaskFailure


def stripe_error(cls: type[stripe.StripeError], status: int, **error: Any) -> stripe.StripeError:
    body = {"error": {"message": error.get("message", "refused"), **error}}
    kwargs = {"http_body": json.dumps(body), "http_status": status, "json_body": body}
    if cls in (stripe.CardError, stripe.InvalidRequestError):
        return cls(body["error"]["message"], error.get("param"), error.get("code"), **kwargs)  # type: ignore[call-arg]
    return cls(body["error"]["message"], **kwargs)


def test_card_error_fails_the_task_as_declined_with_codes() -> None:
    exc = stripe_error(
        stripe.CardError,
        402,
        type="card_error",
        code="card_declined",
        decline_code="insufficient_funds",
        message="Your card has insufficient funds.",
        payment_intent={"id": "pi_123", "object": "payment_intent"},
    )
    decision = classify(exc)
    assert isinstance(decision, FailTask)
    assert decision.error == errors.DECLINED
    assert causes.parse(decision.cause) == {
        "payment_intent_id": "pi_123",
        "code": "card_declined",
        "decline_code": "insufficient_funds",
        "message": "Your card has insufficient funds.",
        "verdict": "retry",
        "retryable": True,
        "reason": "decline_code:insufficient_funds",
    }


@pytest.mark.parametrize(
    ("status", "code", "payment_intent"),
    [
        (400, "resource_missing", None),
        (404, "resource_missing", None),
        (400, "parameter_unknown", None),
        # A confirm refused after the create made the PaymentIntent: the cause names it.
        (400, "payment_method_unactivated", {"id": "pi_made", "object": "payment_intent"}),
    ],
)
def test_refusals_fail_the_task_as_rejected(
    status: int, code: str, payment_intent: dict[str, str] | None
) -> None:
    exc = stripe_error(
        stripe.InvalidRequestError,
        status,
        code=code,
        param="customer",
        message="No such customer",
        payment_intent=payment_intent,
    )
    decision = classify(exc)
    assert isinstance(decision, FailTask)
    assert decision.error == errors.REJECTED
    named = {"payment_intent_id": payment_intent["id"]} if payment_intent else {}
    assert causes.parse(decision.cause) == {
        **named,
        "code": code,
        "param": "customer",
        "message": "No such customer",
    }


@pytest.mark.parametrize(
    "exc",
    [
        stripe_error(stripe.APIError, 500, type="api_error"),
        stripe_error(stripe.APIError, 503),
        stripe_error(stripe.APIError, 409, code="lock_timeout"),
        stripe_error(stripe.InvalidRequestError, 409, code="idempotency_key_in_use"),
        stripe_error(stripe.RateLimitError, 429, code="rate_limit"),
        stripe_error(stripe.InvalidRequestError, 400, code="payment_intent_unexpected_state"),
        stripe_error(stripe.AuthenticationError, 401),
        stripe_error(stripe.PermissionError, 403),
        stripe_error(stripe.IdempotencyError, 400, type="idempotency_error"),
        stripe.APIConnectionError("connection reset"),
        CallbackError("send_task_failure failed: ThrottlingException", code="ThrottlingException"),
        EndpointConnectionError(endpoint_url="http://sqs"),
        TimeoutError(),
        ConnectionResetError(),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_transient_errors_retry(exc: Exception) -> None:
    decision = classify(exc)
    assert isinstance(decision, Retry)
    assert decision.expected


def test_unknown_errors_retry_and_are_flagged_unexpected() -> None:
    decision = classify(KeyError("bug"))
    assert isinstance(decision, Retry)
    assert not decision.expected


def test_task_failures_and_poison() -> None:
    assert classify(TaskFailure(causes.invalid_input("amount: bad"))) == FailTask(
        errors.INVALID_INPUT, "amount: bad"
    )
    assert classify(PoisonMessage("body is not JSON")) == DeadLetter("body is not JSON")


def test_backoff_grows_is_jittered_and_capped() -> None:
    low, high = Backoff(2, 900, random=lambda: 0.0), Backoff(2, 900, random=lambda: 1.0)
    assert [low.delay_s(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert [high.delay_s(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert high.delay_s(40) == 900
    assert low.delay_s(40) == 450
    assert Backoff(0.1, 900, random=lambda: 0.0).delay_s(1) == 1


def test_the_policy_gives_a_retry_its_delay_by_receive_count_and_leaves_the_rest() -> None:
    policy = RetryPolicy(Backoff(2, 900, random=lambda: 0.0))
    transient = stripe_error(stripe.APIError, 500, type="api_error")
    assert policy.decide(transient, receive_count=3) == Retry("stripe: server error 500", delay_s=4)
    failure = TaskFailure(causes.invalid_input("amount: bad"))
    assert policy.decide(failure, receive_count=3) == classify(failure)


def test_failed_receives_back_off_on_their_own_scale() -> None:
    policy = RetryPolicy(
        Backoff(2, 900, random=lambda: 0.0), receive_backoff=Backoff(1, 30, random=lambda: 1.0)
    )
    assert [policy.receive_error_delay_s(n) for n in (1, 2, 6, 7)] == [1, 2, 30, 30]


def test_a_card_budget_too_contended_to_write_is_retried_as_expected() -> None:
    decision = classify(BudgetContention("card fp_1: 20 conflicting writes"))
    assert isinstance(decision, Retry) and decision.expected
