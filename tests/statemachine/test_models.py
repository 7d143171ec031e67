"""The execution input contract: what is accepted, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from statemachine.models import (
    TASK_ADAPTER,
    CancelPaymentTask,
    CreatePaymentTask,
    PaymentRequest,
    RefundPaymentTask,
    describe_validation_error,
)

VALID: dict[str, Any] = {
    "order_id": "ord_1001",
    "amount": 1999,
    "currency": "usd",
    "customer": "cus_123",
    "payment_method": "pm_card_visa",
    "receipt_email": "ada@example.com",
    "items": [{"sku": "sku_red_mug", "quantity": 2}],
    "metadata": {"campaign": "winter"},
}


def _error(**changes: Any) -> str:
    data = {**VALID, **changes}
    with pytest.raises(ValidationError) as caught:
        PaymentRequest.model_validate(data)
    return describe_validation_error(caught.value)


def test_design_example_is_valid_and_frozen() -> None:
    request = PaymentRequest.model_validate(VALID)
    assert request.items[0].quantity == 2
    with pytest.raises(ValidationError):
        request.amount = 5


def test_minimal_input_is_valid() -> None:
    request = PaymentRequest.model_validate({"order_id": "o-1", "amount": 50, "currency": "eur"})
    assert request.customer is None and request.items == () and request.metadata == {}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"amount": -1}, "amount: Input should be greater than 0"),
        ({"amount": 0}, "amount: Input should be greater than 0"),
        ({"amount": 19.99}, "amount: Input should be a valid integer"),
        ({"amount": "1999"}, "amount: Input should be a valid integer"),
        ({"amount": 10}, "amount: 10 is below Stripe's minimum charge of 50 for usd"),
        ({"amount": 100_000_000}, "amount: Input should be less than or equal to 99999999"),
        ({"currency": "USD"}, "currency: String should match pattern"),
        ({"order_id": "has space"}, "order_id: String should match pattern"),
        ({"order_id": "x" * 65}, "order_id: String should match pattern"),
        ({"customer": "123"}, "customer: String should match pattern"),
        ({"receipt_email": "not-an-email"}, "receipt_email: String should match pattern"),
        ({"items": [{"sku": "a", "quantity": 0}]}, "items.0.quantity: Input should be greater"),
        ({"metadata": {"paystep_token_0": "x"}}, "metadata: key 'paystep_token_0' is reserved"),
        ({"metadata": {"k": "v" * 501}}, "metadata: value of 'k' is 501 characters, at most 500"),
        ({"metadata": {f"k{i}": "v" for i in range(41)}}, "metadata: at most 40 keys"),
        ({"surprise": 1}, "surprise: unknown field"),
        ({"return_url": "http://shop.example/back"}, "return_url: must be an https URL"),
        ({"return_url": "https://"}, "return_url: must be an https URL"),
        (
            {"return_url": "https://shop.example/back", "payment_method": None},
            "return_url: only with payment_method",
        ),
        ({"payment_method_types": []}, "payment_method_types: Tuple should have at least 1"),
        ({"payment_method_types": "card"}, "payment_method_types: Input should be a valid tuple"),
        ({"payment_method_types": ["Card!"]}, "payment_method_types.0: String should match"),
        ({"capture_method": "later"}, "capture_method: Input should be 'automatic' or 'manual'"),
        ({"capture_deadline_s": 60}, 'capture_deadline_s: only with capture_method "manual"'),
        (
            {"capture_method": "manual", "capture_deadline_s": 0},
            "capture_deadline_s: Input should be greater than or equal to 1",
        ),
        (
            {"capture_method": "manual", "capture_deadline_s": 604_801},
            "capture_deadline_s: Input should be less than or equal to 604800",
        ),
    ],
)
def test_invalid_input_names_the_field(changes: dict[str, Any], expected: str) -> None:
    assert expected in _error(**changes)


def test_capture_is_automatic_by_default_and_manual_waits_five_days() -> None:
    automatic = PaymentRequest.model_validate({"order_id": "o-1", "amount": 50, "currency": "eur"})
    manual = PaymentRequest.model_validate(
        {"order_id": "o-1", "amount": 50, "currency": "eur", "capture_method": "manual"}
    )
    assert automatic.capture_method == "automatic"
    # https://docs.stripe.com/payments/place-a-hold-on-a-payment-method: Visa holds a
    # merchant-initiated authorisation 5 days.
    assert manual.capture_deadline == 5 * 24 * 3600


def test_missing_required_fields_are_each_named() -> None:
    with pytest.raises(ValidationError) as caught:
        PaymentRequest.model_validate({})
    message = describe_validation_error(caught.value)
    for field in ("order_id", "amount", "currency"):
        assert f"{field}: Field required" in message


def test_zero_decimal_currency_uses_whole_units() -> None:
    assert PaymentRequest.model_validate({"order_id": "o", "amount": 50, "currency": "jpy"})
    assert "minimum charge of 50 for jpy" in _error(amount=49, currency="jpy")


def _create(**changes: Any) -> dict[str, Any]:
    return {
        "type": "create_payment",
        "task_token": "tok",
        "execution_id": "arn:exec",
        "state": "CreatePayment",
        "attempt": 1,
        "request": VALID,
        **changes,
    }


def test_task_messages_are_discriminated_by_type() -> None:
    assert isinstance(TASK_ADAPTER.validate_python(_create()), CreatePaymentTask)
    cancel = {"type": "cancel_payment", "task_token": "t", "execution_id": "e", "attempt": 1}
    assert isinstance(TASK_ADAPTER.validate_python(cancel), CancelPaymentTask)
    refund = {
        "type": "refund_payment",
        "task_token": "t",
        "execution_id": "e",
        "order_id": "o",
        "payment_intent_id": "pi_1",
    }
    assert isinstance(TASK_ADAPTER.validate_python(refund), RefundPaymentTask)
    with pytest.raises(ValidationError, match=r"union_tag_invalid|does not match any"):
        TASK_ADAPTER.validate_python({**cancel, "type": "explode"})


def test_invalid_request_keeps_the_envelope_usable() -> None:
    task = TASK_ADAPTER.validate_python(_create(request={"amount": -1}))
    assert isinstance(task, CreatePaymentTask) and task.task_token == "tok"
    with pytest.raises(ValidationError):
        task.payment_request()


def test_idempotency_key_is_per_execution_state_and_attempt() -> None:
    first = CreatePaymentTask.model_validate(_create())
    assert first.idempotency_key == CreatePaymentTask.model_validate(_create()).idempotency_key
    assert (
        first.idempotency_key
        != CreatePaymentTask.model_validate(_create(attempt=2)).idempotency_key
    )
    other = CreatePaymentTask.model_validate(_create(execution_id="arn:other"))
    assert first.idempotency_key != other.idempotency_key
    long_arn = CreatePaymentTask.model_validate(_create(execution_id="a" * 2000))
    assert len(long_arn.idempotency_key) <= 255


def test_cancel_key_is_per_execution_and_payment_intent_not_attempt() -> None:
    def cancel(execution_id: str = "arn:e", attempt: int = 1) -> CancelPaymentTask:
        return CancelPaymentTask(
            type="cancel_payment", task_token="t", execution_id=execution_id, attempt=attempt
        )

    key = cancel().idempotency_key("pi_1")
    assert key == cancel(attempt=2).idempotency_key("pi_1")
    assert key != cancel().idempotency_key("pi_2")
    assert key != cancel(execution_id="arn:other").idempotency_key("pi_1")
    assert key.startswith("paystep-cancel-")
    assert len(cancel(execution_id="a" * 2048).idempotency_key("pi_" + "x" * 250)) <= 255


def test_a_customer_present_request_with_listed_types_is_valid() -> None:
    request = PaymentRequest.model_validate(
        {
            **VALID,
            "return_url": "https://shop.example/orders/1?paid=1",
            "payment_method_types": ["card", "sepa_debit"],
        }
    )
    assert request.return_url == "https://shop.example/orders/1?paid=1"
    assert request.payment_method_types == ("card", "sepa_debit")
