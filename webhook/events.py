"""The parts of a Stripe event that paystep reads, parsed at the edge into frozen models.

Stripe adds fields to its objects without notice, so these models read what
they need and ignore the rest (unlike paystep's own contract models). The same
models take the JSON of a webhook body, a dict, or a `stripe.Event` listed from
Stripe's Events API.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import stripe
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from statemachine.models import describe_validation_error


class MalformedEvent(ValueError):
    """The body is not a Stripe event, or its object is not what its type promises."""


class StripeModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class PaymentError(StripeModel):
    """`last_payment_error`: why the last attempt to pay failed.

    The advice fields are what the decline policy reads
    (https://docs.stripe.com/api/errors); `charge` is the declined charge's id.
    """

    type: str | None = None
    code: str | None = None
    decline_code: str | None = None
    advice_code: str | None = None
    network_advice_code: str | None = None
    network_decline_code: str | None = None
    message: str | None = None
    charge: str | None = None
    # The PaymentMethod object (its card's fingerprint and brand key the card's budget).
    payment_method: dict[str, Any] | str | None = None


class PaymentIntentSnapshot(StripeModel):
    """The PaymentIntent as it was when the event happened (`data.object`)."""

    id: str = Field(min_length=1)
    object: str
    status: str
    amount: int
    amount_received: int | None = None
    amount_capturable: int | None = None
    currency: str
    latest_charge: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    last_payment_error: PaymentError | None = None
    cancellation_reason: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _charge_id(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        charge = data.get("latest_charge")
        if charge is None:
            # API versions before 2022-11-15 list the charges instead, newest first.
            charges = data.get("charges")
            listed = charges.get("data") if isinstance(charges, Mapping) else None
            charge = listed[0] if isinstance(listed, list) and listed else None
        # An expandable field: an id, or the whole Charge when expanded.
        if isinstance(charge, Mapping):
            charge = charge.get("id")
        return {**data, "latest_charge": charge}

    @field_validator("object")
    @classmethod
    def _is_payment_intent(cls, value: str) -> str:
        if value != "payment_intent":
            raise ValueError(f"expected a payment_intent, got {value[:40]!r}")
        return value


class EventData(StripeModel):
    object: dict[str, Any]


class StripeEvent(StripeModel):
    """A snapshot event: https://docs.stripe.com/api/events/object"""

    id: str = Field(min_length=1, max_length=255)
    object: str
    type: str = Field(min_length=1, max_length=255)
    livemode: bool
    created: int
    data: EventData
    api_version: str | None = None
    """The version `data.object` is rendered in: the endpoint's, or the account's default
    when the endpoint has none (https://docs.stripe.com/webhooks/versioning). Read the same
    whatever it is: the fields paystep reads exist in every version since 2017-08-15."""

    @field_validator("object")
    @classmethod
    def _is_event(cls, value: str) -> str:
        if value != "event":
            raise ValueError(f"expected an event, got {value[:40]!r}")
        return value

    def payment_intent(self) -> PaymentIntentSnapshot:
        """`data.object` read as a PaymentIntent; raises `MalformedEvent`."""
        try:
            return PaymentIntentSnapshot.model_validate(self.data.object)
        except ValidationError as exc:
            raise MalformedEvent(f"data.object: {describe_validation_error(exc)}") from exc


def parse_event(event: str | bytes | Mapping[str, Any] | stripe.StripeObject) -> StripeEvent:
    """A webhook body, or an event from the API; raises `MalformedEvent`."""
    if isinstance(event, stripe.StripeObject):
        event = event.to_dict()
    if isinstance(event, str | bytes):
        try:
            event = json.loads(event)
        except ValueError as exc:
            raise MalformedEvent("body is not JSON") from exc
        except RecursionError as exc:
            # json.loads recurses once per level of nesting: a body of brackets well under
            # the size limit exhausts the stack. No Stripe event nests anywhere near that.
            raise MalformedEvent("body is nested too deeply to be an event") from exc
    if not isinstance(event, Mapping):
        raise MalformedEvent("body is not a JSON object")
    try:
        return StripeEvent.model_validate(event)
    except ValidationError as exc:
        raise MalformedEvent(describe_validation_error(exc)) from exc
