"""The uncaptured authorisation of an ended execution: canceled when reconcile releases its holds.

An execution that ends without its own cleanup (stopped, timed out) never cancels the
authorisation it recorded, and the customer's funds stay held at their bank until it
expires, up to 7 days for cards
(https://docs.stripe.com/payments/place-a-hold-on-a-payment-method). Only a
PaymentIntent still `requires_capture` is canceled
(https://docs.stripe.com/api/payment_intents/cancel); one captured meanwhile is a
succeeded payment of an ended execution, which the orphan check keeps or refunds.
"""

from __future__ import annotations

from typing import Final

import stripe

from statemachine.models import ABANDONED, abandoned_authorization_key
from webhook.call_rates import Call, CallRates
from webhook.mapping import AUTHORIZED

UNEXPECTED_STATE: Final = "payment_intent_unexpected_state"


async def cancel_abandoned(
    client: stripe.StripeClient,
    payment_intent_id: str,
    rates: CallRates | None,
    *,
    dry_run: bool,
) -> bool:
    """Cancel the authorisation if it is still held (in a dry run, only say so).

    True when it was canceled (or would be); False when it no longer holds funds
    (captured, canceled or expired). Raises `stripe.StripeError` for any other failure.
    """
    # Retrieve and cancel share the account's request rate with every other Stripe call.
    await _turn(rates)
    intent = await client.v1.payment_intents.retrieve_async(payment_intent_id)
    if intent.status != AUTHORIZED:
        return False
    if dry_run:
        return True
    await _turn(rates)
    try:
        await client.v1.payment_intents.cancel_async(
            payment_intent_id,
            {"cancellation_reason": ABANDONED},
            {"idempotency_key": abandoned_authorization_key(payment_intent_id)},
        )
    except stripe.InvalidRequestError as exc:
        if exc.code != UNEXPECTED_STATE:
            raise
        # Captured (or canceled) between the read and the cancel: not ours to undo.
        return False
    return True


async def _turn(rates: CallRates | None) -> None:
    if rates is not None:
        await rates.take(Call.STRIPE_LIST)
