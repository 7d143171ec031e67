"""The decline policy: Stripe's fields on a failed payment -> retry, ask_customer or final.

Codes from https://docs.stripe.com/declines/codes, https://docs.stripe.com/error-codes,
https://docs.stripe.com/declines/card#retrying-issuer-declines (advice codes) and
Mastercard's merchant advice codes 03 / 21 (never retried).
"""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from statemachine import declines
from statemachine.declines import ASK_CUSTOMER, FINAL, RETRY


def card_declined(decline_code: str, **more: str) -> dict[str, Any]:
    return {"type": "card_error", "code": "card_declined", "decline_code": decline_code, **more}


TABLE = [
    # decline codes: the card will never be approved
    (card_declined("lost_card"), FINAL, "decline_code:lost_card"),
    (card_declined("stolen_card"), FINAL, "decline_code:stolen_card"),
    (card_declined("fraudulent"), FINAL, "decline_code:fraudulent"),
    (card_declined("pickup_card"), FINAL, "decline_code:pickup_card"),
    (card_declined("restricted_card"), FINAL, "decline_code:restricted_card"),
    (
        card_declined("previously_declined_do_not_retry"),
        FINAL,
        "decline_code:previously_declined_do_not_retry",
    ),
    # the customer must act
    (card_declined("expired_card"), ASK_CUSTOMER, "decline_code:expired_card"),
    (card_declined("incorrect_cvc"), ASK_CUSTOMER, "decline_code:incorrect_cvc"),
    (card_declined("incorrect_number"), ASK_CUSTOMER, "decline_code:incorrect_number"),
    (
        card_declined("authentication_required"),
        ASK_CUSTOMER,
        "decline_code:authentication_required",
    ),
    # soft declines: do_not_honor and generic_decline are the issuer's unexplained ones
    (card_declined("insufficient_funds"), RETRY, "decline_code:insufficient_funds"),
    (card_declined("processing_error"), RETRY, "decline_code:processing_error"),
    (card_declined("do_not_honor"), RETRY, "decline_code:do_not_honor"),
    (card_declined("generic_decline"), RETRY, "decline_code:generic_decline"),
    (card_declined("try_again_later"), RETRY, "decline_code:try_again_later"),
    # Stripe's error code alone (no decline_code for these)
    ({"code": "expired_card"}, ASK_CUSTOMER, "code:expired_card"),
    ({"code": "incorrect_cvc"}, ASK_CUSTOMER, "code:incorrect_cvc"),
    ({"code": "incorrect_number"}, ASK_CUSTOMER, "code:incorrect_number"),
    ({"code": "authentication_required"}, ASK_CUSTOMER, "code:authentication_required"),
    ({"code": "processing_error"}, RETRY, "code:processing_error"),
    # advice codes come first
    (
        card_declined("insufficient_funds", advice_code="do_not_try_again"),
        FINAL,
        "advice_code:do_not_try_again",
    ),
    (
        card_declined("generic_decline", advice_code="confirm_card_data"),
        ASK_CUSTOMER,
        "advice_code:confirm_card_data",
    ),
    (
        card_declined("do_not_honor", advice_code="try_again_later"),
        RETRY,
        "advice_code:try_again_later",
    ),
    # then the network's advice: Mastercard MAC 03 and 21 forbid any retry
    (
        card_declined("insufficient_funds", network_advice_code="03"),
        FINAL,
        "network_advice_code:03",
    ),
    (
        card_declined("do_not_honor", network_advice_code="21"),
        FINAL,
        "network_advice_code:21",
    ),
    (
        card_declined("do_not_honor", network_advice_code="01"),
        ASK_CUSTOMER,
        "network_advice_code:01",
    ),
    # a "retry after" network advice leaves it to the decline code
    (
        card_declined("stolen_card", network_advice_code="24"),
        FINAL,
        "decline_code:stolen_card",
    ),
    # unknown: retry (within the budget), never final by default
    (card_declined("something_new"), RETRY, "code:card_declined"),
    ({"code": "brand_new_code"}, RETRY, "unknown"),
    ({}, RETRY, "unknown"),
]


@pytest.mark.parametrize(("error", "kind", "reason"), TABLE, ids=[r[2] for r in TABLE])
def test_the_policy_decides_by_the_most_specific_field(
    error: dict[str, Any], kind: str, reason: str
) -> None:
    verdict = declines.decide(error)
    assert (verdict.kind, verdict.reason) == (kind, reason)
    assert verdict.retryable is (kind == RETRY)


@pytest.mark.parametrize(("error", "kind", "reason"), TABLE[:6], ids=[r[2] for r in TABLE[:6]])
def test_a_stripe_error_object_reads_as_its_json(
    error: dict[str, Any], kind: str, reason: str
) -> None:
    verdict = declines.decide(stripe.ErrorObject.construct_from(error, "sk_test"))
    assert (verdict.kind, verdict.reason) == (kind, reason)


def test_no_error_at_all_is_an_unknown_retry() -> None:
    assert declines.decide(None) == declines.Verdict(RETRY, declines.UNKNOWN)


def test_over_budget_is_final_with_its_reason() -> None:
    assert declines.over_budget() == declines.Verdict(FINAL, "retry_budget")
    assert not declines.over_budget().retryable


def test_no_code_is_in_two_verdicts() -> None:
    for table in (declines.DECLINE_CODES, declines.ERROR_CODES, declines.ADVICE_CODES):
        assert set(table.values()) <= {RETRY, ASK_CUSTOMER, FINAL}
    finals = {c for c, k in declines.DECLINE_CODES.items() if k == FINAL}
    assert {"lost_card", "stolen_card", "fraudulent", "pickup_card"} <= finals
