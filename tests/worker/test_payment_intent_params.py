"""The create the worker sends is one Stripe accepts, for each kind of request.

GIVEN an execution input (off-session card, customer present, listed types)
WHEN the worker builds its PaymentIntent create
THEN it carries what Stripe needs since 2023-08-16 (a `return_url`, or off-session with
automatic payment methods without redirects) and passes the local Stripe's rules at
the pinned API version (https://docs.stripe.com/changelog/2023-08-16/automatic-payment-methods).
"""

from __future__ import annotations

from typing import Any

import pytest

from paystep_common.settings import STRIPE_API_VERSION
from paystep_local import stripe_rules
from statemachine.models import CreatePaymentTask
from statemachine.seal import TokenKeys, new_key
from worker.handlers import payment_intent_params, payment_metadata

KEYS = TokenKeys.parse(new_key())

NEVER = {"enabled": True, "allow_redirects": "never"}


def _params(**request: Any) -> dict[str, Any]:
    task = CreatePaymentTask(
        type="create_payment",
        task_token="token",
        execution_id="arn:aws:states:us-east-1:000000000000:execution:paystep:e1",
        state="CreatePayment",
        attempt=1,
        request={"order_id": "ord_1", "amount": 1999, "currency": "usd", **request},
    )
    payment = task.payment_request()
    sealed = payment_metadata(task, payment, KEYS, livemode=False)
    return dict(payment_intent_params(task, payment, sealed))


def _form(params: dict[str, Any]) -> dict[str, Any]:
    """The params as the Stripe client encodes them, decoded as a double reads them."""
    flat: dict[str, Any] = {}
    for name, value in params.items():
        if isinstance(value, dict):
            flat[name] = {k: str(v).lower() if isinstance(v, bool) else v for k, v in value.items()}
        elif isinstance(value, list):
            flat[name] = {str(i): v for i, v in enumerate(value)}
        else:
            flat[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return flat


@pytest.mark.parametrize(
    ("request_fields", "expected", "absent"),
    [
        (
            {"payment_method": "pm_card_visa"},
            {"confirm": True, "off_session": True, "automatic_payment_methods": NEVER},
            ("return_url", "allowed_payment_method_types"),
        ),
        (
            {"payment_method": "pm_card_visa", "return_url": "https://shop.example/back"},
            {
                "confirm": True,
                "return_url": "https://shop.example/back",
                "automatic_payment_methods": {"enabled": True, "allow_redirects": "always"},
            },
            ("off_session",),
        ),
        (
            {"payment_method": "pm_card_visa", "payment_method_types": ["card"]},
            {"confirm": True, "off_session": True, "allowed_payment_method_types": ["card"]},
            ("automatic_payment_methods", "payment_method_types"),
        ),
        ({}, {"automatic_payment_methods": NEVER}, ("confirm", "off_session", "return_url")),
    ],
)
def test_the_create_is_one_stripe_accepts_at_the_pinned_version(
    request_fields: dict[str, Any], expected: dict[str, Any], absent: tuple[str, ...]
) -> None:
    params = _params(**request_fields)
    assert {k: params[k] for k in expected} == expected
    assert not set(absent) & set(params)
    stripe_rules.check_create(_form(params), STRIPE_API_VERSION)
