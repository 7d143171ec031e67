"""Typed models of everything that crosses the Step Functions boundary.

- `PaymentRequest`: the execution input, the JSON a caller passes to StartExecution
  (https://docs.aws.amazon.com/step-functions/latest/apireference/API_StartExecution.html).
- `CreatePaymentTask`, `CancelPaymentTask`, `RefundPaymentTask`, `CapturePaymentTask`,
  `CancelAuthorizationTask`: the SQS task messages the state machine sends, and
  `CheckPaymentTask`, the one the webhook and reconcile send about a payment whose task
  was closed: a union discriminated by `type`.
- `PaymentOutcome`, `CancelOutcome`, `RefundOutcome`: what the services send back
  with SendTaskSuccess.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from typing import Annotated, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from statemachine.metadata import (
    MAX_CALLER_KEYS,
    RESERVED_KEYS,
    STRIPE_METADATA_KEY_MAX_CHARS,
    STRIPE_METADATA_MAX_KEYS,
    STRIPE_METADATA_VALUE_MAX_CHARS,
    is_reserved,
)

# https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts (minor units).
STRIPE_MAX_AMOUNT: Final = 99_999_999
STRIPE_MIN_AMOUNT: Final = {
    "usd": 50, "eur": 50, "gbp": 30, "aud": 50, "cad": 50, "chf": 50, "jpy": 50, "dkk": 250,
    "nok": 300, "sek": 300, "hkd": 400, "mxn": 1000, "sgd": 50, "nzd": 50, "pln": 200,
    "czk": 1500, "huf": 17500, "inr": 50, "brl": 50, "aed": 200, "ron": 200, "bgn": 100,
    "myr": 200, "thb": 1000,
}  # fmt: skip

OrderId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
_ORDER_ID: Final[TypeAdapter[str]] = TypeAdapter(OrderId)
Sku = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[a-z]{3}$")]
CustomerId = Annotated[str, StringConstraints(pattern=r"^cus_[A-Za-z0-9]{1,250}$")]
PaymentMethodId = Annotated[str, StringConstraints(pattern=r"^(pm|card|src)_[A-Za-z0-9_]{1,250}$")]
PaymentIntentId = Annotated[str, StringConstraints(pattern=r"^pi_[A-Za-z0-9_]{1,250}$")]
Email = Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
# https://docs.stripe.com/api/payment_intents/create#create_payment_intent-return_url: where the
# customer comes back after a redirect-based payment method; paystep takes https only.
ReturnUrl = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
# https://docs.stripe.com/api/payment_methods/object#payment_method_object-type: lowercase names.
PaymentMethodType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,49}$")]
TaskToken = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
ExecutionId = Annotated[str, StringConstraints(min_length=1, max_length=2048)]

_METADATA_KEY = re.compile(rf"^[^\[\]]{{1,{STRIPE_METADATA_KEY_MAX_CHARS}}}$")


def _idempotency_key(*parts: str) -> str:
    # Stripe keys are at most 255 characters; execution ARNs can come close on their own.
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return f"paystep-{parts[0]}-{digest[:40]}"


def _cancel_idempotency_key(execution_id: str, payment_intent_id: str) -> str:
    return _idempotency_key("cancel", execution_id, payment_intent_id)


# https://docs.stripe.com/api/payment_intents/cancel#cancel_payment_intent-cancellation_reason:
# an ended execution's authorisation is abandoned: its order will never be captured.
ABANDONED: Final = "abandoned"


def abandoned_authorization_key(payment_intent_id: str) -> str:
    """The cancel of an ended execution's authorisation: one cancel, whichever release asks.

    Its own key, not the execution's cancel key: a request with a key is refused when
    its parameters differ from the first one's (https://docs.stripe.com/api/idempotent_requests).
    """
    return _idempotency_key("cancel-authorization", payment_intent_id)


# https://docs.stripe.com/payments/place-a-hold-on-a-payment-method#auth-and-capture: Visa
# holds a merchant-initiated online authorisation 5 days (every payment paystep confirms
# off-session is one), other brands 7; Stripe cancels an uncaptured PaymentIntent after 7
# days (https://docs.stripe.com/api/payment_intents/capture).
DEFAULT_CAPTURE_DEADLINE_S: Final = 5 * 24 * 3600
MAX_CAPTURE_DEADLINE_S: Final = 7 * 24 * 3600

# The order's claim and its items are one DynamoDB transaction (`statemachine.orders`), of
# at most 100 writes: the order's row and one per item.
# https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html
MAX_ITEMS: Final = 99


class Frozen(BaseModel):
    """Immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Item(Frozen):
    sku: Sku
    quantity: StrictInt = Field(gt=0, le=10_000)


class PaymentRequest(Frozen):
    """The execution input: one order, one payment."""

    order_id: OrderId
    amount: StrictInt = Field(gt=0, le=STRIPE_MAX_AMOUNT)
    currency: CurrencyCode
    customer: CustomerId | None = None
    payment_method: PaymentMethodId | None = None
    receipt_email: Email | None = None
    return_url: ReturnUrl | None = None
    payment_method_types: tuple[PaymentMethodType, ...] | None = Field(
        default=None, min_length=1, max_length=20
    )
    items: tuple[Item, ...] = Field(default=(), max_length=MAX_ITEMS)
    metadata: dict[str, str] = Field(default_factory=dict)
    # `manual`: authorise now, capture once the order is recorded
    # (https://docs.stripe.com/payments/place-a-hold-on-a-payment-method).
    capture_method: Literal["automatic", "manual"] = "automatic"
    # How long after the authorisation the capture may still happen (manual capture only);
    # the card's own `capture_before` wins when it is sooner.
    capture_deadline_s: StrictInt | None = Field(default=None, ge=1, le=MAX_CAPTURE_DEADLINE_S)

    @field_validator("metadata")
    @classmethod
    def _metadata_fits_stripe(cls, metadata: dict[str, str]) -> dict[str, str]:
        if len(metadata) > MAX_CALLER_KEYS:
            raise ValueError(
                f"at most {MAX_CALLER_KEYS} keys (Stripe allows "
                f"{STRIPE_METADATA_MAX_KEYS}, paystep keeps {RESERVED_KEYS})"
            )
        for key, value in metadata.items():
            if not _METADATA_KEY.match(key):
                raise ValueError(
                    f"key {key[:50]!r} must be 1-{STRIPE_METADATA_KEY_MAX_CHARS} characters "
                    "without square brackets"
                )
            if is_reserved(key):
                raise ValueError(f"key {key!r} is reserved for paystep")
            if len(value) > STRIPE_METADATA_VALUE_MAX_CHARS:
                raise ValueError(
                    f"value of {key!r} is {len(value)} characters, "
                    f"at most {STRIPE_METADATA_VALUE_MAX_CHARS}"
                )
        return metadata

    @field_validator("items")
    @classmethod
    def _one_line_per_sku(cls, items: tuple[Item, ...]) -> tuple[Item, ...]:
        seen: set[str] = set()
        for item in items:
            if item.sku in seen:
                raise ValueError(f"sku {item.sku!r} is listed twice (one line per sku)")
            seen.add(item.sku)
        return items

    @field_validator("return_url")
    @classmethod
    def _https_url(cls, url: str | None) -> str | None:
        parts = urllib.parse.urlsplit(url or "")
        if url is not None and (parts.scheme != "https" or not parts.hostname or " " in url):
            raise ValueError(f"must be an https URL, got {url[:60]!r}")
        return url

    @model_validator(mode="after")
    def _return_url_with_payment_method(self) -> Self:
        # Stripe takes return_url only on a confirm; paystep confirms only with a method.
        if self.return_url is not None and self.payment_method is None:
            raise ValueError("return_url: only with payment_method (paystep confirms with it)")
        return self

    @model_validator(mode="after")
    def _deadline_with_manual_capture(self) -> Self:
        if self.capture_deadline_s is not None and self.capture_method != "manual":
            raise ValueError(
                'capture_deadline_s: only with capture_method "manual" (an automatic '
                "payment is captured at once)"
            )
        return self

    @property
    def capture_deadline(self) -> int:
        """Seconds from the authorisation to the latest capture paystep attempts."""
        return self.capture_deadline_s or DEFAULT_CAPTURE_DEADLINE_S

    @model_validator(mode="after")
    def _amount_within_stripe_minimum(self) -> Self:
        minimum = STRIPE_MIN_AMOUNT.get(self.currency, 1)
        if self.amount < minimum:
            raise ValueError(
                f"amount: {self.amount} is below Stripe's minimum charge of {minimum} "
                f"for {self.currency} (in the currency's minor unit)"
            )
        return self


class PreviousDecline(BaseModel):
    """The cause of the attempt before this one, when it was declined (`causes.declined`).

    Read loosely: the cause's other fields (codes, message, event) are not the worker's.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    payment_intent_id: PaymentIntentId | None = None


class _CarriesRequest(Frozen):
    """A task carrying the execution's request raw, validated where it is used."""

    request: JsonValue

    def payment_request(self) -> PaymentRequest:
        """The validated request; raises `ValidationError` naming the field."""
        return PaymentRequest.model_validate(self.request)


class ReserveOrderTask(_CarriesRequest):
    """Before any Stripe call: claim the order for the execution and hold its stock.

    `request` stays raw, as in `CreatePaymentTask`: this is where a bad input is
    first seen and failed with `Payment.InvalidInput`.
    """

    type: Literal["reserve_order"]
    task_token: TaskToken
    execution_id: ExecutionId
    # The execution's start: the claim's time, the same on every repeat of the task.
    started_at: str = Field(min_length=1, max_length=40)


class ReleaseOrderTask(Frozen):
    """Every end but a paid one: put the execution's holds back and end its claim, once."""

    type: Literal["release_order"]
    task_token: TaskToken
    execution_id: ExecutionId
    # Raw: an input that failed validation has no order to release.
    request: JsonValue
    reason: str = Field(default="", max_length=256)

    @property
    def order_id(self) -> str | None:
        """The order of a request that has a valid order id, else None."""
        raw = self.request.get("order_id") if isinstance(self.request, dict) else None
        try:
            return _ORDER_ID.validate_python(raw)
        except ValidationError:
            return None


class CreatePaymentTask(_CarriesRequest):
    """Create (and, with a payment method, confirm) the PaymentIntent of one attempt.

    `request` stays raw here: the envelope (token, execution) must be usable even
    when the caller's input is not, so the worker can fail the task with
    `Payment.InvalidInput` instead of losing it.
    """

    type: Literal["create_payment"]
    task_token: TaskToken
    execution_id: ExecutionId
    state: str = Field(min_length=1, max_length=80)
    attempt: StrictInt = Field(ge=1)
    # Empty on the first attempt (and in messages sent before the field existed).
    previous_decline: PreviousDecline = PreviousDecline()

    @property
    def idempotency_key(self) -> str:
        """Same task, same key: redeliveries and racing workers create one PaymentIntent."""
        return _idempotency_key("create", self.execution_id, self.state, str(self.attempt))

    def cancel_idempotency_key(self, payment_intent_id: str) -> str:
        """The cancel task's key: one cancel per PaymentIntent of the execution."""
        return _cancel_idempotency_key(self.execution_id, payment_intent_id)


class CancelPaymentTask(Frozen):
    """After the payment wait timed out: cancel the attempt's PaymentIntent, if any."""

    type: Literal["cancel_payment"]
    task_token: TaskToken
    execution_id: ExecutionId
    attempt: StrictInt = Field(ge=1)

    def idempotency_key(self, payment_intent_id: str) -> str:
        """One cancel per PaymentIntent of this execution, however often the task runs."""
        return _cancel_idempotency_key(self.execution_id, payment_intent_id)


class RefundPaymentTask(Frozen):
    """Fulfilment failed: refund the payment in full, once."""

    type: Literal["refund_payment"]
    task_token: TaskToken
    execution_id: ExecutionId
    order_id: OrderId
    payment_intent_id: PaymentIntentId
    reason: str = Field(default="fulfilment_failed", max_length=200)

    @property
    def idempotency_key(self) -> str:
        """One refund per PaymentIntent, whichever execution asks for it."""
        return _idempotency_key("refund", self.payment_intent_id)


class CapturePaymentTask(_CarriesRequest):
    """The order is recorded with its authorisation: capture the full amount, once.

    `request` stays raw, as in `CreatePaymentTask` (it carries the capture deadline).
    """

    type: Literal["capture_payment"]
    task_token: TaskToken
    execution_id: ExecutionId
    payment_intent_id: PaymentIntentId

    @property
    def idempotency_key(self) -> str:
        """One capture per PaymentIntent of the execution, however often the task runs."""
        return _idempotency_key("capture", self.execution_id, self.payment_intent_id)


class CancelAuthorizationTask(Frozen):
    """Fulfilment failed after the authorisation: cancel it (nothing is charged), unless the
    capture went through after all."""

    type: Literal["cancel_authorization"]
    task_token: TaskToken
    execution_id: ExecutionId
    payment_intent_id: PaymentIntentId
    reason: str = Field(default="", max_length=256)

    @property
    def idempotency_key(self) -> str:
        """The cancel key of the execution's PaymentIntent: one cancel, whoever asks."""
        return _cancel_idempotency_key(self.execution_id, self.payment_intent_id)


class CheckPaymentTask(Frozen):
    """A payment succeeded after its task had closed: keep it, or refund it as an orphan.

    Sent by the webhook and reconcile (no task token: nothing waits for it). The ids
    come from the PaymentIntent's metadata; the worker reads the rest from Stripe and
    the execution from Step Functions.
    """

    type: Literal["check_payment"]
    execution_id: ExecutionId
    payment_intent_id: PaymentIntentId
    order_id: OrderId | None = None
    attempt: StrictInt | None = Field(default=None, ge=1)
    event_id: str | None = Field(default=None, max_length=255)

    @property
    def refund_idempotency_key(self) -> str:
        """The key of `RefundPaymentTask`: one refund per PaymentIntent, whoever asks."""
        return _idempotency_key("refund", self.payment_intent_id)


WaitingTask = (
    ReserveOrderTask
    | ReleaseOrderTask
    | CreatePaymentTask
    | CancelPaymentTask
    | RefundPaymentTask
    | CapturePaymentTask
    | CancelAuthorizationTask
)
"""A task an execution waits for: it carries the token that resumes it."""

Task = Annotated[
    ReserveOrderTask
    | ReleaseOrderTask
    | CreatePaymentTask
    | CancelPaymentTask
    | RefundPaymentTask
    | CapturePaymentTask
    | CancelAuthorizationTask
    | CheckPaymentTask,
    Field(discriminator="type"),
]
TASK_ADAPTER: Final[TypeAdapter[Task]] = TypeAdapter(Task)


class PaymentOutcome(Frozen):
    """SendTaskSuccess output of the payment wait (the `payment` of the execution output)."""

    payment_intent_id: PaymentIntentId
    # Only captured money is paid. An authorisation (`requires_capture`, manual capture
    # only) is recorded, then captured: its `amount_capturable` is what it holds.
    status: Literal["succeeded", "requires_capture"]
    amount_received: StrictInt = Field(ge=0)
    currency: CurrencyCode
    amount_capturable: StrictInt | None = Field(default=None, ge=0)
    latest_charge: str | None = None
    event_id: str | None = None

    @model_validator(mode="after")
    def _authorization_says_what_it_holds(self) -> Self:
        # The state machine compares it with the order before recording anything.
        if self.status == "requires_capture" and self.amount_capturable is None:
            raise ValueError("amount_capturable: required for an authorisation")
        return self


class CancelOutcome(Frozen):
    """SendTaskSuccess output of the cancel task.

    `succeeded` means the payment went through after all: the state machine goes
    on to fulfilment with `payment`. `processing` means it is still settling (a
    bank debit can take two weeks): nothing was canceled, and the state machine
    asks again after its settlement wait.
    """

    outcome: Literal["canceled", "succeeded", "not_found", "processing"]
    payment_intent_id: PaymentIntentId | None = None
    payment: PaymentOutcome | None = None


class ReserveOutcome(Frozen):
    """SendTaskSuccess output of the reserve task: `claimed` False when it was already."""

    claimed: bool
    items: StrictInt = Field(ge=0)


class ReleaseOutcome(Frozen):
    """SendTaskSuccess output of the release task: `released` False when nothing was open."""

    released: bool
    items: StrictInt = Field(ge=0)


class RefundOutcome(Frozen):
    refund_id: str
    status: str
    amount: StrictInt = Field(ge=0)
    currency: CurrencyCode


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each failing field and what was expected.

    `amount: Input should be greater than 0; currency: String should match pattern '^[a-z]{3}$'`
    """
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        if message.startswith(f"{location}: "):
            parts.append(message)
        else:
            parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


def dump_json(model: BaseModel) -> str:
    """Compact JSON of a model without null fields, as sent to Step Functions."""
    return model.model_dump_json(exclude_none=True)
