"""The decline policy: from Stripe's fields on a failed payment to what paystep does next.

Three verdicts:

- `retry`: a later off-session attempt may succeed (insufficient funds, a processing
  error, a generic issuer decline); retried within the attempts and the card's budget.
- `ask_customer`: only the customer can fix it (authenticate, correct or update the
  card); an off-session retry cannot succeed, so none is made.
- `final`: the card will never be approved (lost, stolen, fraudulent, "do not try
  again"); retrying it is noise for the customer and the networks charge for it.

Precedence, most specific advice first: Stripe's `advice_code`, then the network's
`network_advice_code`, then `decline_code`, then `code`. A code nobody lists here is
`retry` (within the budget), never `final` by default: a wrong `final` loses a sale
the customer wanted, a wrong `retry` costs one attempt the budget bounds.

Sources:
- https://docs.stripe.com/declines/codes (decline codes and their next steps)
- https://docs.stripe.com/declines/card#retrying-issuer-declines (`advice_code`:
  `do_not_try_again`, `try_again_later`, `confirm_card_data`)
- https://docs.stripe.com/error-codes (`code`: `expired_card`, `incorrect_cvc`, ...)
- https://docs.stripe.com/changelog/acacia/2024-12-18/network-advice-code-network-decline-code
  (`network_advice_code`, `network_decline_code` on the error and `last_payment_error`)
- Mastercard Merchant Advice Codes, 03 "Do not try again" and 21 "Stop recurring
  payment" (https://developer.paypal.com/braintree/docs/reference/general/merchant-responses/merchant-advice-codes):
  never retried.

Pure: no I/O. The card's budget of attempts (counted in DynamoDB where the charge is
made) may still turn a `retry` into `final` with reason `retry_budget`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

Kind = Literal["retry", "ask_customer", "final"]

RETRY: Final = "retry"
ASK_CUSTOMER: Final = "ask_customer"
FINAL: Final = "final"
# The reason of a `retry` the card's budget of attempts does not allow.
RETRY_BUDGET: Final = "retry_budget"
# The reason of a decline no field of which is known here.
UNKNOWN: Final = "unknown"

# https://docs.stripe.com/declines/card#retrying-issuer-declines
ADVICE_CODES: Final[Mapping[str, Kind]] = {
    "do_not_try_again": FINAL,
    "confirm_card_data": ASK_CUSTOMER,
    "try_again_later": RETRY,
}

# Mastercard Merchant Advice Codes as Stripe passes them in `network_advice_code`.
# 03 and 21 forbid any further attempt; 01 asks for new account data (a new card).
# The "retry after" codes (02, 24-30) fall through to the decline code.
NETWORK_ADVICE_CODES: Final[Mapping[str, Kind]] = {
    "03": FINAL,
    "21": FINAL,
    "01": ASK_CUSTOMER,
}

# https://docs.stripe.com/declines/codes: the card will not be approved, whoever tries.
# Visa's category 1 ("issuer will never approve": lost, stolen, pick up, closed or
# restricted account) is among them.
_FINAL_DECLINES: Final = frozenset(
    {
        "do_not_try_again",
        "fraudulent",
        "invalid_account",
        "lost_card",
        "merchant_blacklist",
        "pickup_card",
        "previously_declined_do_not_retry",
        "restricted_card",
        "revocation_of_all_authorizations",
        "revocation_of_authorization",
        "security_violation",
        "stolen_card",
        "stop_payment_order",
        "testmode_decline",
    }
)
# https://docs.stripe.com/declines/codes: the customer must act (authenticate, correct
# or replace the card, call the issuer) before an attempt can succeed.
_ASK_CUSTOMER_DECLINES: Final = frozenset(
    {
        "authentication_required",
        "call_issuer",
        "card_not_supported",
        "currency_not_supported",
        "expired_card",
        "incorrect_cvc",
        "incorrect_number",
        "incorrect_pin",
        "incorrect_zip",
        "invalid_cvc",
        "invalid_expiry_month",
        "invalid_expiry_year",
        "invalid_number",
        "invalid_pin",
        "new_account_information_available",
        "offline_pin_required",
        "online_or_offline_pin_required",
        "pin_try_exceeded",
        "transaction_not_allowed",
    }
)
# https://docs.stripe.com/declines/codes: worth another attempt later. `do_not_honor`
# and `generic_decline` are the issuer's unexplained declines, soft by default.
_RETRY_DECLINES: Final = frozenset(
    {
        "approve_with_id",
        "card_velocity_exceeded",
        "do_not_honor",
        "duplicate_transaction",
        "generic_decline",
        "insufficient_funds",
        "issuer_not_available",
        "no_action_taken",
        "processing_error",
        "reenter_transaction",
        "try_again_later",
        "withdrawal_count_limit_exceeded",
    }
)
DECLINE_CODES: Final[Mapping[str, Kind]] = {
    **dict.fromkeys(_RETRY_DECLINES, RETRY),
    **dict.fromkeys(_ASK_CUSTOMER_DECLINES, ASK_CUSTOMER),
    **dict.fromkeys(_FINAL_DECLINES, FINAL),
}

# https://docs.stripe.com/error-codes: the error `code` when Stripe gives no decline code
# (an expired card or a wrong CVC is refused with its own code, not `card_declined`).
ERROR_CODES: Final[Mapping[str, Kind]] = {
    "authentication_required": ASK_CUSTOMER,
    "expired_card": ASK_CUSTOMER,
    "incorrect_cvc": ASK_CUSTOMER,
    "incorrect_number": ASK_CUSTOMER,
    "incorrect_zip": ASK_CUSTOMER,
    "invalid_cvc": ASK_CUSTOMER,
    "invalid_expiry_month": ASK_CUSTOMER,
    "invalid_expiry_year": ASK_CUSTOMER,
    "invalid_number": ASK_CUSTOMER,
    "payment_intent_authentication_failure": ASK_CUSTOMER,
    "card_decline_rate_limit_exceeded": RETRY,
    "processing_error": RETRY,
    "card_declined": RETRY,
}

# The fields read, in the order they decide, each with its table.
_PRECEDENCE: Final[tuple[tuple[str, Mapping[str, Kind]], ...]] = (
    ("advice_code", ADVICE_CODES),
    ("network_advice_code", NETWORK_ADVICE_CODES),
    ("decline_code", DECLINE_CODES),
    ("code", ERROR_CODES),
)
FIELDS: Final = tuple(name for name, _ in _PRECEDENCE)


class DeclineFields(Protocol):
    """Stripe's error object (a CardError's `error`, a PaymentIntent's `last_payment_error`)."""

    @property
    def code(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do about one decline, and why.

    `reason` is `<field>:<value>` of the field that decided (`decline_code:stolen_card`),
    `unknown` when none did, or `retry_budget` when the card's budget turned a retry down.
    """

    kind: Kind
    reason: str

    @property
    def retryable(self) -> bool:
        return self.kind == RETRY


def decide(error: DeclineFields | Mapping[str, Any] | None) -> Verdict:
    """The verdict on a decline described by Stripe's error object (None: unknown, retry)."""
    for name, table in _PRECEDENCE:
        value = _field(error, name)
        if value is not None and value in table:
            return Verdict(table[value], f"{name}:{value}")
    return Verdict(RETRY, UNKNOWN)


def over_budget() -> Verdict:
    """A retry the card's budget does not allow: final."""
    return Verdict(FINAL, RETRY_BUDGET)


def _field(error: DeclineFields | Mapping[str, Any] | None, name: str) -> str | None:
    if error is None:
        return None
    # A StripeObject raises AttributeError for a key its JSON did not carry.
    value = error.get(name) if isinstance(error, Mapping) else getattr(error, name, None)
    return None if value in (None, "") else str(value)


CustomerAction = Literal["authenticate", "update_card"]
_AUTHENTICATE: Final = frozenset(
    {"authentication_required", "payment_intent_authentication_failure"}
)


def customer_action(verdict: Verdict) -> CustomerAction:
    """What an `ask_customer` verdict asks of the customer: authenticate, or fix the card."""
    _, _, value = verdict.reason.partition(":")
    return "authenticate" if value in _AUTHENTICATE else "update_card"
