"""Stripe's documented rules for a PaymentIntent create, confirm, cancel or capture, for the
local doubles.

Both doubles ask this module before acting: the fake Stripe (`fake_stripe`, its
own state) and the local Stripe in front of localstripe (`stripe_chaos_proxy`),
so a request the real Stripe refuses is refused locally too, with Stripe's error
shape. Each rule names the page it comes from.

Requests arrive form-encoded (`decode_form`), their rules chosen by the
request's `Stripe-Version` header; without one, the local account's default
version applies, as on Stripe (https://docs.stripe.com/api/versioning): the one
localstripe renders its events with, older than automatic payment methods.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

# The local account's default API version (localstripe renders every event with it).
LOCAL_ACCOUNT_VERSION: Final = "2017-08-15"
# https://docs.stripe.com/changelog/2023-08-16/automatic-payment-methods: automatic payment
# methods are on by default; confirming then needs a `return_url` unless `off_session=true`
# or `automatic_payment_methods[allow_redirects]=never`.
AUTOMATIC_PAYMENT_METHODS_SINCE: Final = "2023-08-16"
# https://docs.stripe.com/changelog/endive/2026-09-30/removes-the-payment-method-types-parameter-from-payment-intents-and-setup-intents
PAYMENT_METHOD_TYPES_REMOVED_SINCE: Final = "2026-09-30"

# https://docs.stripe.com/api/metadata: 50 keys, names up to 40 characters, values up to 500.
METADATA_MAX_KEYS: Final = 50
METADATA_KEY_MAX_CHARS: Final = 40
METADATA_VALUE_MAX_CHARS: Final = 500

# https://docs.stripe.com/api/payment_intents/confirm: the parameters Stripe takes.
CONFIRM_PARAMS: Final = frozenset(
    {
        "capture_method",
        "confirmation_token",
        "error_on_requires_action",
        "expand",
        "mandate",
        "mandate_data",
        "off_session",
        "payment_method",
        "payment_method_data",
        "payment_method_options",
        "payment_method_types",
        "radar_options",
        "receipt_email",
        "return_url",
        "setup_future_usage",
        "shipping",
        "use_stripe_sdk",
    }
)
# https://docs.stripe.com/api/payment_intents/capture: the parameters Stripe takes.
CAPTURE_PARAMS: Final = frozenset(
    {
        "amount_to_capture",
        "amount_details",
        "application_fee_amount",
        "expand",
        "final_capture",
        "metadata",
        "payment_details",
        "statement_descriptor",
        "statement_descriptor_suffix",
        "transfer_data",
    }
)
# https://docs.stripe.com/api/refunds/update
REFUND_UPDATE_PARAMS: Final = frozenset({"metadata", "expand"})
# https://docs.stripe.com/api/payment_intents/create: those and these.
CREATE_PARAMS: Final = CONFIRM_PARAMS | {
    "amount",
    "currency",
    "allowed_payment_method_types",
    "amount_details",
    "application_fee_amount",
    "automatic_payment_methods",
    "confirm",
    "confirmation_method",
    "customer",
    "description",
    "excluded_payment_method_types",
    "metadata",
    "on_behalf_of",
    "payment_method_configuration",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "transfer_data",
    "transfer_group",
}
# https://docs.stripe.com/api/payment_intents/confirm: the statuses a confirm starts from.
CONFIRMABLE: Final = frozenset(
    {"requires_payment_method", "requires_confirmation", "requires_action"}
)
# https://docs.stripe.com/api/payment_intents/cancel: the statuses a cancel starts from. Stripe
# adds `processing` "in rare cases" (some payment methods only); neither double models those,
# and localstripe refuses a processing one too.
CANCELABLE: Final = frozenset(
    {"requires_payment_method", "requires_capture", "requires_confirmation", "requires_action"}
)
# https://docs.stripe.com/changelog/dahlia/2026-07-29/allowed-payment-method-types-parameter:
# `allowed_payment_method_types` excludes each of these.
ALLOWED_TYPES_EXCLUDES: Final = (
    "payment_method_types",
    "excluded_payment_method_types",
    "automatic_payment_methods",
    "payment_method_configuration",
)
RETURN_URL_REQUIRED: Final = (
    "A `return_url` must be specified because this Payment Intent is configured to "
    "automatically accept the payment methods enabled in the Dashboard, some of which may "
    "require a full page redirect to succeed. If you do not want to accept redirect-based "
    "payment methods, set `automatic_payment_methods[enabled]` to `true` and "
    "`automatic_payment_methods[allow_redirects]` to `never` when creating Setup Intents and "
    "Payment Intents."
)


class StripeFailure(Exception):
    """An answer in Stripe's error shape."""

    def __init__(
        self, status: int, type_: str, message: str, *, executed: bool = False, **fields: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type_, "message": message, **fields}}
        # Stripe stores an idempotent answer only once the endpoint ran: a validation
        # failure leaves the key free, a refusal after it ran is replayed.
        self.executed = executed


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> StripeFailure:
    fields: dict[str, Any] = {"param": param, "code": code}
    return StripeFailure(
        400, "invalid_request_error", message, **{k: v for k, v in fields.items() if v}
    )


def decode_form(text: str) -> dict[str, Any]:
    """Stripe's form encoding: `a=1&metadata[k]=v&types[0]=card` -> nested dicts (one level)."""
    params: dict[str, Any] = {}
    for name, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
        base, _, rest = name.partition("[")
        if not rest:
            params[base] = value
            continue
        nested = params.setdefault(base, {})
        if isinstance(nested, dict):
            nested[rest.rstrip("]").split("][")[0]] = value
    return params


def version_date(stripe_version: str | None) -> str:
    """`2026-10-28` of `2026-10-28.endive`; the local account's default without a header."""
    return (stripe_version or LOCAL_ACCOUNT_VERSION).partition(".")[0]


def check_metadata(raw: Any) -> dict[str, str]:
    """The metadata of a request, or a refusal past Stripe's limits."""
    if raw in (None, ""):
        return {}
    if not isinstance(raw, dict):
        raise invalid("Invalid metadata.", param="metadata")
    if len(raw) > METADATA_MAX_KEYS:
        raise invalid(f"Metadata can have up to {METADATA_MAX_KEYS} keys.", param="metadata")
    for key, value in raw.items():
        if len(key) > METADATA_KEY_MAX_CHARS or len(value) > METADATA_VALUE_MAX_CHARS:
            raise invalid(
                f"Metadata keys are limited to {METADATA_KEY_MAX_CHARS} characters and values "
                f"to {METADATA_VALUE_MAX_CHARS}.",
                param=f"metadata[{key[:60]}]",
            )
    return dict(raw)


def automatic_payment_methods(params: Mapping[str, Any], stripe_version: str | None) -> Any:
    """The PaymentIntent's `automatic_payment_methods` after this create (None: off)."""
    explicit = params.get("automatic_payment_methods")
    if isinstance(explicit, Mapping):
        if explicit.get("enabled") != "true":
            return None
        return {"enabled": True, "allow_redirects": explicit.get("allow_redirects", "always")}
    if _lists_types(params) or version_date(stripe_version) < AUTOMATIC_PAYMENT_METHODS_SINCE:
        return None
    return {"enabled": True, "allow_redirects": "always"}


def check_create(params: Mapping[str, Any], stripe_version: str | None) -> dict[str, str]:
    """Refuse a PaymentIntent create Stripe refuses; the metadata it holds."""
    _check_known(params, CREATE_PARAMS)
    date = version_date(stripe_version)
    if "payment_method_types" in params and date >= PAYMENT_METHOD_TYPES_REMOVED_SINCE:
        raise invalid(
            "The `payment_method_types` parameter is no longer supported on this API version; "
            "use `allowed_payment_method_types` or `excluded_payment_method_types`.",
            param="payment_method_types",
            code="payment_method_types_no_longer_supported",
        )
    _one_of(params, "automatic_payment_methods", "payment_method_types")
    if "allowed_payment_method_types" in params:
        for other in ALLOWED_TYPES_EXCLUDES:
            _one_of(params, "allowed_payment_method_types", other)
    explicit = params.get("automatic_payment_methods")
    if explicit is not None and (not isinstance(explicit, Mapping) or "enabled" not in explicit):
        raise invalid(
            "Missing required param: automatic_payment_methods[enabled].",
            param="automatic_payment_methods[enabled]",
            code="parameter_missing",
        )
    confirm = params.get("confirm") == "true"
    # https://docs.stripe.com/api/payment_intents/create#create_payment_intent-return_url and
    # #create_payment_intent-off_session: "can only be used with confirm=true".
    for only_with_confirm in ("return_url", "off_session"):
        if only_with_confirm in params and not confirm:
            raise invalid(
                f"The `{only_with_confirm}` parameter can only be used with `confirm=true`.",
                param=only_with_confirm,
            )
    if confirm:
        _check_confirmation(
            automatic_payment_methods(params, stripe_version), params, param="return_url"
        )
    return check_metadata(params.get("metadata"))


def check_refund_update(params: Mapping[str, Any]) -> dict[str, str]:
    """The metadata of a refund update; only `metadata` can change
    (https://docs.stripe.com/api/refunds/update)."""
    _check_known(params, REFUND_UPDATE_PARAMS)
    return check_metadata(params.get("metadata"))


def check_confirm(
    intent: Mapping[str, Any], params: Mapping[str, Any], stripe_version: str | None
) -> None:
    """Refuse a confirm (`POST /v1/payment_intents/{id}/confirm`) Stripe refuses."""
    _check_known(params, CONFIRM_PARAMS)
    status = intent.get("status")
    if status not in CONFIRMABLE:
        raise invalid(
            f"You cannot confirm this PaymentIntent because it has a status of {status}.",
            code="payment_intent_unexpected_state",
        )
    # A declined attempt leaves the PaymentIntent in requires_payment_method: the next
    # confirm brings another payment method (https://docs.stripe.com/payments/paymentintents/lifecycle).
    if not params.get("payment_method") and (
        status == "requires_payment_method" or not intent.get("payment_method")
    ):
        raise invalid(
            "You cannot confirm this PaymentIntent because it's missing a payment method. "
            "To confirm the PaymentIntent, provide a `payment_method`.",
            param="payment_method",
            code="payment_intent_unexpected_state",
        )
    if "payment_method_types" in params and (
        version_date(stripe_version) >= PAYMENT_METHOD_TYPES_REMOVED_SINCE
    ):
        raise invalid(
            "The `payment_method_types` parameter is no longer supported on this API version.",
            param="payment_method_types",
            code="payment_method_types_no_longer_supported",
        )
    _check_confirmation(intent.get("automatic_payment_methods"), params, param="return_url")


def check_cancel(intent: Mapping[str, Any]) -> None:
    """Refuse a cancel (`POST /v1/payment_intents/{id}/cancel`) Stripe refuses: the
    PaymentIntent's status is not one a cancel starts from. Stripe names the status and
    puts the PaymentIntent in the error; the endpoint ran, so an idempotency key stores it."""
    status = intent.get("status")
    if status not in CANCELABLE:
        raise StripeFailure(
            400,
            "invalid_request_error",
            f"You cannot cancel this PaymentIntent because it has a status of {status}. Only a "
            "PaymentIntent with one of the following statuses may be canceled: "
            f"{', '.join(sorted(CANCELABLE))}.",
            executed=True,
            code="payment_intent_unexpected_state",
            payment_intent=dict(intent),
        )


# https://docs.stripe.com/api/payment_intents/cancel#cancel_payment_intent-cancellation_reason:
# the reasons a caller may give; Stripe sets `automatic`, `expired` and the invoice ones itself.
CALLER_CANCELLATION_REASONS: Final = frozenset(
    {"duplicate", "fraudulent", "requested_by_customer", "abandoned"}
)


def cancellation_reason(params: Mapping[str, Any]) -> str | None:
    """The `cancellation_reason` a cancel records (none when it gives none), or Stripe's
    refusal of one a caller may not give, naming the parameter."""
    reason = params.get("cancellation_reason")
    if reason is None or reason in CALLER_CANCELLATION_REASONS:
        return reason
    raise StripeFailure(
        400,
        "invalid_request_error",
        f"Invalid cancellation_reason: must be one of "
        f"{', '.join(sorted(CALLER_CANCELLATION_REASONS))}",
        code="parameter_invalid_empty" if reason == "" else "parameter_invalid_string",
        param="cancellation_reason",
    )


def check_capture(intent: Mapping[str, Any], params: Mapping[str, Any]) -> int:
    """The amount a capture (`POST /v1/payment_intents/{id}/capture`) takes, or Stripe's refusal.

    https://docs.stripe.com/api/payment_intents/capture: only a PaymentIntent in
    `requires_capture` is captured (one canceled, by paystep or as expired, or captured
    already is refused `payment_intent_unexpected_state`), and `amount_to_capture` is at most
    the `amount_capturable`, the whole of it by default.
    """
    _check_known(params, CAPTURE_PARAMS)
    status = intent.get("status")
    if status != "requires_capture":
        raise StripeFailure(
            400,
            "invalid_request_error",
            f"This PaymentIntent could not be captured because it has a status of {status}. "
            "Only a PaymentIntent with one of the following statuses may be captured: "
            "requires_capture.",
            executed=True,
            code="payment_intent_unexpected_state",
            payment_intent=dict(intent),
        )
    capturable = int(intent.get("amount_capturable") or intent.get("amount") or 0)
    raw = params.get("amount_to_capture", capturable)
    try:
        amount = int(raw)
    except (TypeError, ValueError):
        raise invalid("Invalid integer: amount_to_capture", param="amount_to_capture") from None
    if not 0 < amount <= capturable:
        raise invalid(
            f"amount_to_capture must be at most the amount_capturable ({capturable}).",
            param="amount_to_capture",
        )
    return amount


def _check_known(params: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(params) - known)
    if unknown:
        raise invalid(
            f"Received unknown parameter: {unknown[0]}", param=unknown[0], code="parameter_unknown"
        )


def _check_confirmation(automatic: Any, params: Mapping[str, Any], *, param: str) -> None:
    """The return_url rule of https://docs.stripe.com/changelog/2023-08-16/automatic-payment-methods."""
    redirects = isinstance(automatic, Mapping) and automatic.get("allow_redirects") != "never"
    if redirects and not params.get("return_url") and params.get("off_session") != "true":
        raise invalid(RETURN_URL_REQUIRED, param=param)
    # Same page: with automatic payment methods, `error_on_requires_action` is refused.
    if isinstance(automatic, Mapping) and params.get("error_on_requires_action") == "true":
        raise invalid(
            "`error_on_requires_action` cannot be used with automatic payment methods; "
            "set `payment_method_types` instead.",
            param="error_on_requires_action",
        )


def _lists_types(params: Mapping[str, Any]) -> bool:
    return any(
        params.get(name) for name in ("payment_method_types", "allowed_payment_method_types")
    )


def _one_of(params: Mapping[str, Any], first: str, second: str) -> None:
    if first in params and second in params:
        raise invalid(
            f"You may only specify one of these parameters: {first}, {second}.", param=second
        )


@dataclass(frozen=True, slots=True)
class DecliningCard:
    """One of Stripe's test PaymentMethods that is declined when charged.

    https://docs.stripe.com/testing#declined-payments: the PaymentMethod, its card
    number and the error the charge answers with (402, `card_error`). The error names the
    declined `charge` and the `payment_method`, and the PaymentIntent keeps the same error
    as `last_payment_error` (https://docs.stripe.com/api/errors). Every card of a kind
    has one fixed fingerprint, as on Stripe where a fingerprint is per card number.
    """

    number: str
    code: str
    decline_code: str | None
    message: str
    brand: str = "visa"
    off_session_only: bool = False
    """Declined only off-session: on-session, the customer is asked to authenticate."""

    @property
    def fingerprint(self) -> str:
        return card_fingerprint(self.number)

    def error(self, charge_id: str, payment_method_id: str) -> dict[str, Any]:
        """Stripe's error object for a charge of this card (no `payment_intent` yet)."""
        error: dict[str, Any] = {"type": "card_error", "code": self.code}
        if self.decline_code is not None:
            error["decline_code"] = self.decline_code
        error.update(
            message=self.message,
            charge=charge_id,
            payment_method=self.payment_method(payment_method_id),
        )
        return error

    def payment_method(self, payment_method_id: str) -> dict[str, Any]:
        """The PaymentMethod object as an error carries it: the card's brand and fingerprint."""
        return {
            "id": payment_method_id,
            "object": "payment_method",
            "type": "card",
            "card": {
                "brand": self.brand,
                "last4": self.number[-4:],
                "fingerprint": self.fingerprint,
                "exp_month": 12,
                "exp_year": 2034,
            },
        }


_DECLINED: Final = "Your card was declined."


def _card_declined(number: str, decline_code: str, message: str = _DECLINED) -> DecliningCard:
    return DecliningCard(number, "card_declined", decline_code, message)


# https://docs.stripe.com/testing#declined-payments
DECLINING_CARDS: Final[Mapping[str, DecliningCard]] = {
    "pm_card_chargeCustomerFail": _card_declined("4000000000000341", "generic_decline"),
    "pm_card_chargeDeclined": _card_declined("4000000000000002", "generic_decline"),
    "pm_card_visa_chargeDeclined": _card_declined("4000000000000002", "generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": _card_declined(
        "4000000000009995", "insufficient_funds", "Your card has insufficient funds."
    ),
    "pm_card_chargeDeclinedLostCard": _card_declined("4000000000009987", "lost_card"),
    "pm_card_chargeDeclinedStolenCard": _card_declined("4000000000009979", "stolen_card"),
    "pm_card_chargeDeclinedFraudulent": _card_declined("4100000000000019", "fraudulent"),
    "pm_card_chargeDeclinedExpiredCard": DecliningCard(
        "4000000000000069", "expired_card", None, "Your card has expired."
    ),
    "pm_card_chargeDeclinedIncorrectCvc": DecliningCard(
        "4000000000000127", "incorrect_cvc", None, "Your card's security code is incorrect."
    ),
    "pm_card_chargeDeclinedProcessingError": DecliningCard(
        "4000000000000119",
        "processing_error",
        None,
        "An error occurred while processing your card. Try again in a little bit.",
    ),
    # https://docs.stripe.com/testing#authentication-and-setup: off-session it is declined
    # `authentication_required`; the customer, back on-session, authenticates and pays.
    "pm_card_authenticationRequired": DecliningCard(
        "4000002760003184",
        "authentication_required",
        "authentication_required",
        "Your card was declined. This transaction requires authentication.",
        off_session_only=True,
    ),
}
DECLINING_NUMBERS: Final[Mapping[str, DecliningCard]] = {
    card.number: card for card in DECLINING_CARDS.values()
}


def card_fingerprint(number: str) -> str:
    """A stable 16-character fingerprint per card number, shaped like Stripe's."""
    return hashlib.sha256(f"paystep-local:{number}".encode()).hexdigest()[:16]
