"""localstripe with Stripe's declining test cards: `python -m paystep_local.localstripe_cards`.

localstripe knows one declining PaymentMethod (`pm_card_chargeCustomerFail`) and
declines it with a bare `card_declined`. Stripe's test cards decline with their own
codes (https://docs.stripe.com/testing#declined-payments), which the decline policy
acts on. This entry point teaches localstripe the cards of
`stripe_rules.DECLINING_CARDS` before serving, in its own process, so its answers,
its PaymentIntents and the webhook events it signs all carry them as Stripe does:

- the PaymentMethod (`pm_card_chargeDeclinedStolenCard`, ...) is the card's number,
  brand `visa` and the fixed fingerprint of its kind;
- its charge fails with the card's `code` and `decline_code`: the 402 names the
  `charge` and the `payment_method`, typed `card_error`, and the PaymentIntent's
  `last_payment_error` (so `payment_intent.payment_failed`) carries the same;
- `pm_card_authenticationRequired` is declined `authentication_required` when
  confirmed off-session; on-session it asks the customer to authenticate
  (`requires_action`), as localstripe already does for that card number.

And it sends what Stripe sends for a manual capture, where localstripe is silent:
`payment_intent.amount_capturable_updated` once a card is authorised (status
`requires_capture`, `amount_capturable` the amount:
https://docs.stripe.com/api/events/types#event_types-payment_intent.amount_capturable_updated),
and `payment_intent.canceled` on every cancel, with the `cancellation_reason` given
(https://docs.stripe.com/api/payment_intents/cancel). localstripe already sends
`payment_intent.succeeded` after the capture.

Arguments are localstripe's own (`--port N --from-scratch`).
"""

from __future__ import annotations

from typing import Any

from paystep_local.stripe_rules import (
    DECLINING_CARDS,
    DECLINING_NUMBERS,
    DecliningCard,
    StripeFailure,
)
from paystep_local.stripe_rules import cancellation_reason as cancellation_reason_of


class _OffSession:
    """Whether the confirm localstripe runs now is off-session (one request at a time)."""

    active = False


def _card_of(resources: Any, payment_method_id: str | None) -> DecliningCard | None:
    if not payment_method_id:
        return None
    method = resources.PaymentMethod._api_retrieve(payment_method_id)
    return DECLINING_NUMBERS.get(getattr(method, "_card_number", ""))


def install() -> None:
    """Patch localstripe's resources in this process (before it serves)."""
    from localstripe import resources
    from localstripe.errors import UserError

    method_cls = resources.PaymentMethod
    charge_cls = resources.Charge
    intent_cls = resources.PaymentIntent
    canonical = method_cls._try_get_canonical_test_article.__func__
    declined_on_charge = method_cls._charging_is_declined
    requires_authentication = method_cls._requires_authentication
    create_intent = intent_cls._api_create.__func__
    confirm_intent = intent_cls._api_confirm.__func__
    cancel_intent = intent_cls._api_cancel.__func__
    create_charge = intent_cls._create_charge

    def test_article(cls: Any, /, id: str) -> Any:
        card = DECLINING_CARDS.get(id)
        if card is None:
            return canonical(cls, id)
        method = cls(
            type="card",
            card={"number": card.number, "exp_month": "12", "exp_year": "2034", "cvc": "123"},
        )
        method.card.update(brand=card.brand, fingerprint=card.fingerprint)
        return method

    def charging_is_declined(self: Any) -> bool:
        card = DECLINING_NUMBERS.get(getattr(self, "_card_number", ""))
        if card is None:
            return bool(declined_on_charge(self))
        return _OffSession.active or not card.off_session_only

    def needs_authentication(self: Any) -> bool:
        card = DECLINING_NUMBERS.get(getattr(self, "_card_number", ""))
        if card is not None and card.off_session_only and _OffSession.active:
            return False  # declined instead: nobody is there to authenticate
        return bool(requires_authentication(self))

    def set_auth_failure(self: Any) -> None:
        card = _card_of(resources, self.payment_method)
        self.status = "failed"
        self.failure_code = card.code if card else "card_declined"
        self.failure_message = card.message if card else "Your card was declined."
        self._decline_code = card.decline_code if card else None

    def raise_failure(self: Any) -> None:
        card = _card_of(resources, self.payment_method)
        contents: dict[str, Any] = {"code": self.failure_code, "charge": self.id}
        if card is not None:
            contents = card.error(self.id, self.payment_method)
        error = resources.UserError(402, self.failure_message, contents)
        error.body["error"]["type"] = "card_error"
        raise error

    original_last_error = intent_cls.last_payment_error.fget

    def last_payment_error(self: Any) -> Any:
        error = original_last_error(self)
        charge = self.latest_charge
        card = _card_of(resources, getattr(charge, "payment_method", None)) if charge else None
        if error is None or card is None or "charge" not in error:
            return error
        return card.error(charge.id, charge.payment_method)

    def create(cls: Any, /, confirm: Any = None, off_session: Any = None, **data: Any) -> Any:
        _OffSession.active = str(off_session).lower() == "true"
        try:
            return create_intent(cls, confirm=confirm, off_session=off_session, **data)
        finally:
            _OffSession.active = False

    def confirm(cls: Any, /, id: str, payment_method: Any = None, **kwargs: Any) -> Any:
        off_session = kwargs.pop("off_session", None)
        _OffSession.active = str(off_session).lower() == "true"
        try:
            return confirm_intent(cls, id, payment_method=payment_method, **kwargs)
        finally:
            _OffSession.active = False

    def charge_for(self: Any, on_failure_now: Any) -> None:
        create_charge(self, on_failure_now)
        if self.status == "requires_capture":
            resources.schedule_webhook(
                resources.Event("payment_intent.amount_capturable_updated", self)
            )

    def amount_capturable(self: Any) -> int:
        return int(self.amount) if self.status == "requires_capture" else 0

    def cancel(cls: Any, /, id: str, cancellation_reason: Any = None, **kwargs: Any) -> Any:
        try:
            reason = cancellation_reason_of({"cancellation_reason": cancellation_reason})
        except StripeFailure as refused:
            raise UserError(refused.status, contents=refused.body["error"]) from None
        intent = cancel_intent(cls, id, **kwargs)
        intent.cancellation_reason = reason
        resources.schedule_webhook(resources.Event("payment_intent.canceled", intent))
        return intent

    method_cls._try_get_canonical_test_article = classmethod(test_article)
    method_cls._charging_is_declined = charging_is_declined
    method_cls._requires_authentication = needs_authentication
    charge_cls._set_auth_failure = set_auth_failure
    charge_cls._raise_failure = raise_failure
    intent_cls.last_payment_error = property(last_payment_error)
    intent_cls._api_create = classmethod(create)
    intent_cls._api_confirm = classmethod(confirm)
    intent_cls._api_cancel = classmethod(cancel)
    intent_cls._create_charge = charge_for
    intent_cls.amount_capturable = property(amount_capturable)
    intent_cls.cancellation_reason = None
    # The server registers `extra_apis` when it is imported (after this): confirm and
    # cancel by the patched methods.
    patched = {
        "/v1/payment_intents/{id}/confirm": intent_cls._api_confirm,
        "/v1/payment_intents/{id}/cancel": intent_cls._api_cancel,
    }
    resources.extra_apis[:] = [
        (method, url, patched.get(url, func)) for method, url, func in resources.extra_apis
    ]


def main() -> None:
    install()
    from localstripe import server

    server.start()


if __name__ == "__main__":
    main()
