"""Error names an execution can end with (the `error` of a failed execution).

These strings are part of the contract: callers match on them.
"""

from typing import Final

INVALID_INPUT: Final = "Payment.InvalidInput"
"""The execution input fails validation; no Stripe call was made."""

REJECTED: Final = "Payment.Rejected"
"""Stripe refused the request (unknown customer, bad payment method, ...)."""

DECLINED: Final = "Payment.Declined"
"""The payment failed and no retry is left."""

CANCELED: Final = "Payment.Canceled"
"""The PaymentIntent was canceled."""

TIMED_OUT: Final = "Payment.TimedOut"
"""No outcome before the wait's timeout; the PaymentIntent was canceled."""

UNFULFILLABLE: Final = "Order.Unfulfillable"
"""The payment succeeded but fulfilment failed; the payment was refunded."""

REFUND_FAILED: Final = "Payment.RefundFailed"
"""Fulfilment failed and the refund could not be made: a person must act."""

CONTRACT_ERRORS: Final = frozenset(
    {INVALID_INPUT, REJECTED, DECLINED, CANCELED, TIMED_OUT, UNFULFILLABLE, REFUND_FAILED}
)
