"""Error names an execution can end with (the `error` of a failed execution).

These strings are part of the contract: callers match on them. `ERRORS` is the one
list of them: `deploy/aws/build.py` writes the README's table of failed-execution
errors and the CloudFormation alerts of the errors a person must act on from it.
"""

from dataclasses import dataclass
from typing import Final

INVALID_INPUT: Final = "Payment.InvalidInput"
REJECTED: Final = "Payment.Rejected"
DECLINED: Final = "Payment.Declined"
CANCELED: Final = "Payment.Canceled"
TIMED_OUT: Final = "Payment.TimedOut"
UNFULFILLABLE: Final = "Order.Unfulfillable"
ALREADY_PAID: Final = "Order.AlreadyPaid"
IN_PROGRESS: Final = "Order.InProgress"
REFUND_FAILED: Final = "Payment.RefundFailed"
MISMATCH: Final = "Payment.Mismatch"
AUTHORIZATION_EXPIRED: Final = "Payment.AuthorizationExpired"


@dataclass(frozen=True)
class ContractError:
    name: str
    when: str
    """When an execution ends with it, as the README's table says it (Markdown)."""
    alert: bool = False
    """A person must act: every such failure notifies the alarm topic."""


ERRORS: Final = (
    ContractError(
        INVALID_INPUT, "the input fails validation (the cause names the field); no Stripe call"
    ),
    ContractError(
        REJECTED, "Stripe refused the request (unknown customer, bad payment method, ...)"
    ),
    ContractError(
        DECLINED,
        "the payment failed and no retry is left, or none is allowed (a final decline, the "
        "card's retry budget spent: the cause's `verdict` and `reason` say which); each "
        "retry first canceled the attempt before it; an attempt the customer pays later is "
        "refunded",
    ),
    ContractError(CANCELED, "the PaymentIntent was canceled"),
    ContractError(
        AUTHORIZATION_EXPIRED,
        "manual capture: the authorisation was not captured before its deadline (the "
        "input's `capture_deadline_s` after it, or the card's `capture_before` if sooner; "
        "the cause names `deadline`), or Stripe canceled it as expired; nothing was "
        "charged and the stock is back; a sale was lost to a delay: a person should know",
        alert=True,
    ),
    ContractError(
        TIMED_OUT,
        "no outcome before the wait's timeout; the PaymentIntent was canceled, or is "
        "refunded if it is paid later",
    ),
    ContractError(
        UNFULFILLABLE,
        "an item is out of stock (the cause names each short `sku`, what was `asked` and "
        "what was `left`): no payment was taken. Rarely, the order could not be recorded "
        "after the payment: it was refunded (with manual capture: its authorisation was "
        "canceled, nothing charged)",
    ),
    ContractError(
        ALREADY_PAID,
        "the order is paid by another execution (`paid_by` in the cause): no payment taken",
    ),
    ContractError(
        IN_PROGRESS,
        "another execution is paying the order now (`claimed_by`): no payment taken; "
        "start again once it has failed",
    ),
    ContractError(
        MISMATCH,
        "the payment does not match the order (not captured, or another amount received or "
        "currency than the order's); it was refunded, or its authorisation canceled",
        alert=True,
    ),
    ContractError(
        REFUND_FAILED,
        "fulfilment failed and the refund could not be made: a person must act",
        alert=True,
    ),
)
"""Every contract error, in the order the README lists them."""

CONTRACT_ERRORS: Final = frozenset(error.name for error in ERRORS)
