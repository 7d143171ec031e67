"""Every failure the worker and the webhook report: a contract error name and its cause.

A decline reaches Step Functions from the worker (a CardError on create, or a
declined PaymentIntent found when a late message is adopted) or from the
webhook (`payment_intent.payment_failed`), whichever comes first; that one is
what the execution ends with and what the decline notice publishes. So each
error has one builder here, fed with Stripe's own fields, and every JSON cause
follows one rule: keys in the builder's order, None values left out, compact
separators. The webhook adds the `event_id` it acted on, last.

`Payment.InvalidInput` keeps a plain-text cause that names the field, as the
README promises callers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from statemachine import declines, errors


@dataclass(frozen=True, slots=True)
class Failure:
    """What SendTaskFailure sends: `error` from `statemachine.errors`, `cause` saying why."""

    error: str
    cause: str


class StripeErrorFields(Protocol):
    """Stripe's error object: a StripeError's `error`, a PaymentIntent's `last_payment_error`.

    `decline_code` and `param` are read too, where the object has them.
    """

    @property
    def code(self) -> str | None: ...

    @property
    def message(self) -> str | None: ...


def declined(
    payment_intent_id: str | None,
    error: StripeErrorFields | None,
    *,
    verdict: declines.Verdict | None = None,
    event_id: str | None = None,
) -> Failure:
    """`Payment.Declined`: the PaymentIntent's payment failed, with Stripe's codes.

    The policy's verdict goes with it (`declines.decide(error)` unless given): `verdict`
    (`retry`, `ask_customer` or `final`), `retryable` (a bool the state machine's Choice
    reads) and `reason` (the deciding field, `decline_code:stolen_card`, or
    `retry_budget`). `charge` names the declined charge.
    """
    verdict = declines.decide(error) if verdict is None else verdict
    return _json_failure(
        errors.DECLINED,
        payment_intent_id=payment_intent_id,
        **_read(
            error,
            "code",
            "decline_code",
            "advice_code",
            "network_advice_code",
            "network_decline_code",
            "message",
        ),
        charge=charge_id(error),
        verdict=verdict.kind,
        retryable=verdict.retryable,
        reason=verdict.reason,
        event_id=event_id,
    )


def charge_id(error: StripeErrorFields | None) -> str | None:
    """The declined charge's id: Stripe's error object names it in `charge`."""
    charge = getattr(error, "charge", None)
    if isinstance(charge, str) or charge is None:
        return charge
    found = getattr(charge, "id", None)
    return found if isinstance(found, str) else None


def canceled(
    payment_intent_id: str, cancellation_reason: str | None, *, event_id: str | None = None
) -> Failure:
    """`Payment.Canceled`: the PaymentIntent was canceled (by whom: `cancellation_reason`)."""
    return _json_failure(
        errors.CANCELED,
        payment_intent_id=payment_intent_id,
        cancellation_reason=cancellation_reason,
        event_id=event_id,
    )


def authorization_expired(
    payment_intent_id: str,
    *,
    deadline: int | None = None,
    cancellation_reason: str | None = None,
    event_id: str | None = None,
) -> Failure:
    """`Payment.AuthorizationExpired`: not captured in time, canceled (nothing charged).

    `deadline` (Unix seconds) when paystep found it passed before capturing;
    `cancellation_reason` when Stripe canceled the authorisation itself.
    """
    return _json_failure(
        errors.AUTHORIZATION_EXPIRED,
        payment_intent_id=payment_intent_id,
        deadline=deadline,
        cancellation_reason=cancellation_reason,
        event_id=event_id,
    )


def rejected(payment_intent_id: str | None, error: StripeErrorFields | None) -> Failure:
    """`Payment.Rejected`: Stripe refused the request (an unknown customer, a bad parameter)."""
    return _json_failure(
        errors.REJECTED,
        payment_intent_id=payment_intent_id,
        **_read(error, "code", "param", "message"),
    )


def already_paid(order_id: str, payment_intent_id: str | None, execution_id: str | None) -> Failure:
    """`Order.AlreadyPaid`: another execution paid the order; this one took no payment."""
    return _json_failure(
        errors.ALREADY_PAID,
        order_id=order_id,
        payment_intent_id=payment_intent_id,
        paid_by=execution_id,
    )


def in_progress(order_id: str, execution_id: str | None) -> Failure:
    """`Order.InProgress`: another execution, still running, is paying the order."""
    return _json_failure(errors.IN_PROGRESS, order_id=order_id, claimed_by=execution_id)


def unfulfillable(order_id: str, shortages: list[dict[str, str | int]]) -> Failure:
    """`Order.Unfulfillable` before any payment: each short item's sku, asked and left."""
    return _json_failure(errors.UNFULFILLABLE, order_id=order_id, shortages=shortages)


def invalid_input(reason: str) -> Failure:
    """`Payment.InvalidInput`: `reason` names the field; no Stripe call was made."""
    return Failure(errors.INVALID_INPUT, reason)


def parse(cause: str) -> dict[str, Any]:
    """The fields of a JSON cause built here; raises `ValueError` for any other text."""
    fields = json.loads(cause)
    if not isinstance(fields, dict):
        raise ValueError(f"a cause is a JSON object, got {type(fields).__name__}")
    return fields


def _json_failure(error: str, **cause: object) -> Failure:
    present = {key: value for key, value in cause.items() if value is not None}
    return Failure(error, json.dumps(present, separators=(",", ":")))


def _read(error: StripeErrorFields | None, *names: str) -> dict[str, str | None]:
    # Stripe leaves out what does not apply (no decline_code on an incorrect_cvc), and a
    # StripeObject raises AttributeError for a key its JSON did not carry.
    values = {name: getattr(error, name, None) for name in names}
    return {name: None if value is None else str(value) for name, value in values.items()}
