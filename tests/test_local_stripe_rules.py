"""The local Stripe refuses and accepts what Stripe does, in both doubles.

GIVEN the fake Stripe (its own state) or localstripe behind the local Stripe proxy
WHEN a PaymentIntent is created or confirmed with a given `Stripe-Version`
THEN it is refused or accepted as Stripe documents, each case naming its rule:

- return_url: https://docs.stripe.com/changelog/2023-08-16/automatic-payment-methods
  (a confirm needs `return_url` unless `off_session=true`, `allow_redirects=never`
  or explicit types; versions before it have no automatic payment methods)
- types: https://docs.stripe.com/changelog/endive/2026-09-30/removes-the-payment-method-types-parameter-from-payment-intents-and-setup-intents
  and https://docs.stripe.com/changelog/dahlia/2026-07-29/allowed-payment-method-types-parameter
- create: https://docs.stripe.com/api/payment_intents/create (the parameters it takes;
  `return_url` and `off_session` only with `confirm=true`)
- metadata: https://docs.stripe.com/api/metadata (50 keys, 40-character keys, 500-character values)
- idempotency: https://docs.stripe.com/api/idempotent_requests (a key with other parameters)
- confirm: https://docs.stripe.com/api/payment_intents/confirm (a declined PaymentIntent is
  confirmed again with another payment method)
- cancel: https://docs.stripe.com/api/payment_intents/cancel (only from requires_payment_method,
  requires_capture, requires_confirmation or requires_action; otherwise
  `payment_intent_unexpected_state`)
- capture: https://docs.stripe.com/api/payment_intents/capture (a manual-capture card is
  authorised as `requires_capture` with its `amount_capturable`, and
  `payment_intent.amount_capturable_updated` is sent; a capture takes the whole amount
  and sends `payment_intent.succeeded`; only `requires_capture` can be captured, a
  canceled authorisation is refused `payment_intent_unexpected_state`) and
  https://docs.stripe.com/api/payment_intents/cancel (`payment_intent.canceled` is sent)
- declines: https://docs.stripe.com/testing#declined-payments (each declining test card's
  code and decline code, in the 402 and in `last_payment_error`) and
  https://docs.stripe.com/api/errors (the error names the `charge` and the `payment_method`)
- search: https://docs.stripe.com/search (metadata clauses joined by AND, newest first, paged;
  what the query language does not hold is refused) and its data freshness (a new
  PaymentIntent is searchable only after a while: the local Stripe's `search_lag_s`)
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import stripe

from paystep_common.settings import STRIPE_API_VERSION
from paystep_local import stripe_rules
from paystep_local.fake_stripe import FakeStripe
from paystep_local.localstack import LOCAL_STRIPE_KEY, LocalStack
from paystep_local.polling import eventually
from paystep_local.stripe_chaos_proxy import StripeChaosProxy
from statemachine.metadata import attempt_query

PINNED = STRIPE_API_VERSION
BEFORE_AUTOMATIC = "2023-08-15"
WITH_TYPES = "2024-06-20"
CARD = {"amount": "1999", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}
NEVER = {
    "automatic_payment_methods[enabled]": "true",
    "automatic_payment_methods[allow_redirects]": "never",
}
RETURN_URL = {"return_url": "https://shop.example/back"}

# (rule, Stripe-Version, extra parameters, status, refused param or code)
CREATES: list[tuple[str, str, dict[str, str], int, str | None]] = [
    ("return_url", PINNED, {}, 400, "return_url"),
    ("return_url", BEFORE_AUTOMATIC, {}, 200, None),
    ("return_url", PINNED, {"off_session": "true"}, 200, None),
    ("return_url", PINNED, NEVER, 200, None),
    ("return_url", PINNED, RETURN_URL, 200, None),
    ("return_url", PINNED, {"automatic_payment_methods[enabled]": "true"}, 400, "return_url"),
    ("return_url", WITH_TYPES, {"payment_method_types[0]": "card"}, 200, None),
    ("types", WITH_TYPES, {**NEVER, "payment_method_types[0]": "card"}, 400, "payment_method_types"),
    ("types", PINNED, {"payment_method_types[0]": "card"}, 400, "payment_method_types_no_longer_supported"),
    ("types", PINNED, {"allowed_payment_method_types[0]": "card"}, 200, None),
    ("types", PINNED, {**NEVER, "allowed_payment_method_types[0]": "card"}, 400, "automatic_payment_methods"),
    ("create", PINNED, {**NEVER, "description": "order 1", "statement_descriptor_suffix": "ORDER"}, 200, None),
    ("create", PINNED, {**NEVER, "colour": "red"}, 400, "parameter_unknown"),
    ("create", PINNED, {"confirm": "false", **RETURN_URL}, 400, "return_url"),
    ("metadata", PINNED, {**NEVER, **{f"metadata[k{i}]": "v" for i in range(51)}}, 400, "metadata"),
    ("metadata", PINNED, {**NEVER, f"metadata[{'k' * 41}]": "v"}, 400, f"metadata[{'k' * 41}]"),
    ("metadata", PINNED, {**NEVER, "metadata[note]": "v" * 501}, 400, "metadata[note]"),
    ("metadata", PINNED, {**NEVER, **{f"metadata[k{i}]": "v" * 500 for i in range(50)}}, 200, None),
]  # fmt: skip


@pytest.fixture(scope="module")
def local_stripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """localstripe behind the local Stripe, as `LocalStack` starts them."""
    with LocalStack(tmp_path_factory.mktemp("local-stripe")) as stack:
        stack.start_stripe()
        yield stack


@pytest.fixture(scope="module", params=["fake", "localstripe"])
def stripe_base(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "fake":
        with FakeStripe().running_in_thread() as fake:
            yield fake.url
    else:
        stack: LocalStack = request.getfixturevalue("local_stripe")
        assert stack.stripe_base
        yield stack.stripe_base


def _client(base: str) -> stripe.StripeClient:
    return stripe.StripeClient(
        LOCAL_STRIPE_KEY, base_addresses={"api": base}, max_network_retries=0
    )


def _call(
    base: str,
    path: str,
    form: dict[str, str] | None = None,
    *,
    version: str = PINNED,
    key: str | None = None,
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {LOCAL_STRIPE_KEY}", "Stripe-Version": version}
    if key:
        headers["Idempotency-Key"] = key
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(base + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


@pytest.mark.parametrize(("rule", "version", "extra", "status", "named"), CREATES)
def test_a_create_is_refused_or_accepted_as_stripe_does(
    stripe_base: str, rule: str, version: str, extra: dict[str, str], status: int, named: str | None
) -> None:
    got, body = _call(stripe_base, "/v1/payment_intents", {**CARD, **extra}, version=version)
    assert got == status, (rule, body)
    if named is not None:
        assert named in (body["error"].get("param"), body["error"].get("code")), body
    else:
        assert body["object"] == "payment_intent"


def test_automatic_payment_methods_are_answered_as_sent(stripe_base: str) -> None:
    _, body = _call(stripe_base, "/v1/payment_intents", {**CARD, **NEVER})
    assert body["automatic_payment_methods"] == {"enabled": True, "allow_redirects": "never"}
    _, fetched = _call(stripe_base, f"/v1/payment_intents/{body['id']}", version=PINNED)
    assert fetched["automatic_payment_methods"] == body["automatic_payment_methods"]


def test_a_key_reused_with_other_parameters_is_an_idempotency_error(stripe_base: str) -> None:
    key = uuid.uuid4().hex
    first, _ = _call(stripe_base, "/v1/payment_intents", {**CARD, **NEVER}, key=key)
    other, body = _call(
        stripe_base, "/v1/payment_intents", {**CARD, **NEVER, "amount": "2000"}, key=key
    )
    assert (first, other, body["error"]["type"]) == (200, 400, "idempotency_error")


def test_a_declined_payment_intent_is_confirmed_again_with_another_method(stripe_base: str) -> None:
    declined, body = _call(
        stripe_base,
        "/v1/payment_intents",
        {**CARD, **NEVER, "payment_method": "pm_card_chargeCustomerFail", "off_session": "true"},
    )
    assert declined == 402, body
    intent_id = _declined_intent(stripe_base)
    missing, refusal = _call(stripe_base, f"/v1/payment_intents/{intent_id}/confirm", {})
    assert (missing, refusal["error"]["param"]) == (400, "payment_method")
    status, confirmed = _call(
        stripe_base,
        f"/v1/payment_intents/{intent_id}/confirm",
        {"payment_method": "pm_card_visa", "off_session": "true"},
    )
    assert (status, confirmed["status"]) == (200, "succeeded"), confirmed
    _, events = _call(
        stripe_base, "/v1/events?type=payment_intent.succeeded&limit=100", version=PINNED
    )
    assert intent_id in [e["data"]["object"]["id"] for e in events["data"]]
    again, refused = _call(
        stripe_base, f"/v1/payment_intents/{intent_id}/confirm", {"payment_method": "pm_card_visa"}
    )
    assert (again, refused["error"]["code"]) == (400, "payment_intent_unexpected_state")


DECLINES = [
    ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
    ("pm_card_chargeDeclinedLostCard", "card_declined", "lost_card"),
    ("pm_card_chargeDeclinedStolenCard", "card_declined", "stolen_card"),
    ("pm_card_chargeDeclinedFraudulent", "card_declined", "fraudulent"),
    ("pm_card_chargeDeclinedExpiredCard", "expired_card", None),
    ("pm_card_chargeDeclinedIncorrectCvc", "incorrect_cvc", None),
    ("pm_card_chargeDeclinedProcessingError", "processing_error", None),
    ("pm_card_authenticationRequired", "authentication_required", "authentication_required"),
]


@pytest.mark.parametrize(("method", "code", "decline_code"), DECLINES, ids=[d[0] for d in DECLINES])
def test_a_declining_test_card_is_declined_with_stripes_codes_everywhere(
    stripe_base: str, method: str, code: str, decline_code: str | None
) -> None:
    form = {**CARD, **NEVER, "payment_method": method, "off_session": "true"}
    status, body = _call(stripe_base, "/v1/payment_intents", form)
    assert status == 402, body
    error = body["error"]
    assert (error["type"], error["code"], error.get("decline_code")) == (
        "card_error",
        code,
        decline_code,
    )
    assert error["charge"].startswith("ch_")
    card = error["payment_method"]["card"]
    assert (card["brand"], card["fingerprint"]) == (
        "visa",
        stripe_rules.DECLINING_CARDS[method].fingerprint,
    )
    intent = error["payment_intent"]
    assert intent["status"] == "requires_payment_method"
    last = intent["last_payment_error"]
    assert (last["code"], last.get("decline_code"), last["charge"]) == (
        code,
        decline_code,
        error["charge"],
    )
    assert last["payment_method"]["card"]["fingerprint"] == card["fingerprint"]
    _, events = _call(
        stripe_base, "/v1/events?type=payment_intent.payment_failed&limit=100", version=PINNED
    )
    failed = [
        e["data"]["object"] for e in events["data"] if e["data"]["object"]["id"] == intent["id"]
    ]
    assert failed and failed[0]["last_payment_error"]["code"] == code


def test_authentication_required_on_session_asks_the_customer(stripe_base: str) -> None:
    form = {**CARD, **RETURN_URL, "payment_method": "pm_card_authenticationRequired"}
    status, body = _call(stripe_base, "/v1/payment_intents", form)
    assert (status, body["status"]) == (200, "requires_action"), body


def _declined_intent(base: str) -> str:
    _, listed = _call(base, "/v1/payment_intents?limit=100", version=PINNED)
    declined = [
        pi
        for pi in listed["data"]
        if pi["status"] == "requires_payment_method"
        and pi["payment_method"] in (None, "pm_card_chargeCustomerFail")
    ]
    fresh = [pi for pi in declined if pi.get("last_payment_error")]
    assert fresh, listed
    return str(fresh[-1]["id"])


def test_a_payment_intent_is_canceled_once_then_refused_with_its_status(stripe_base: str) -> None:
    _, open_ = _call(stripe_base, "/v1/payment_intents", {"amount": "1999", "currency": "usd"})
    client = _client(stripe_base)
    canceled = client.v1.payment_intents.cancel(open_["id"])
    assert canceled.status == "canceled"
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.payment_intents.cancel(open_["id"])
    assert refused.value.code == "payment_intent_unexpected_state"
    assert "status of canceled" in str(refused.value.user_message)


def test_a_cancel_records_the_reason_given_and_refuses_one_only_stripe_sets(
    stripe_base: str,
) -> None:
    """https://docs.stripe.com/api/payment_intents/cancel#cancel_payment_intent-cancellation_reason:
    a caller gives duplicate, fraudulent, requested_by_customer or abandoned; `expired` and
    `automatic` are Stripe's own."""
    client = _client(stripe_base)
    _, open_ = _call(stripe_base, "/v1/payment_intents", {"amount": "1999", "currency": "usd"})
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.payment_intents.cancel(open_["id"], {"cancellation_reason": "expired"})
    assert (refused.value.http_status, refused.value.param) == (400, "cancellation_reason")
    _, still = _call(stripe_base, f"/v1/payment_intents/{open_['id']}")
    assert still["status"] != "canceled"

    canceled = client.v1.payment_intents.cancel(open_["id"], {"cancellation_reason": "abandoned"})
    assert (canceled.status, canceled.cancellation_reason) == ("canceled", "abandoned")
    _, other = _call(stripe_base, "/v1/payment_intents", {"amount": "1999", "currency": "usd"})
    assert client.v1.payment_intents.cancel(other["id"]).cancellation_reason is None


def test_a_succeeded_payment_intent_cannot_be_canceled(stripe_base: str) -> None:
    _, paid = _call(stripe_base, "/v1/payment_intents", {**CARD, **NEVER})
    assert paid["status"] == "succeeded", paid
    with pytest.raises(stripe.InvalidRequestError) as refused:
        _client(stripe_base).v1.payment_intents.cancel(paid["id"])
    assert (refused.value.http_status, refused.value.code) == (
        400,
        "payment_intent_unexpected_state",
    )
    assert "status of succeeded" in str(refused.value.user_message)
    error = refused.value.error
    assert error is not None and error.payment_intent is not None
    assert (error.payment_intent.id, error.payment_intent.status) == (paid["id"], "succeeded")
    _, fetched = _call(stripe_base, f"/v1/payment_intents/{paid['id']}", version=PINNED)
    assert fetched["status"] == "succeeded"


def _events_of(base: str, intent_id: str) -> dict[str, str]:
    """Each event type about `intent_id` and the status its PaymentIntent had then."""
    _, listed = _call(base, "/v1/events?limit=100")
    return {
        e["type"]: e["data"]["object"]["status"]
        for e in listed["data"]
        if e["data"]["object"].get("id") == intent_id
    }


MANUAL = {**CARD, **NEVER, "capture_method": "manual", "off_session": "true"}


def test_a_manual_capture_is_authorised_then_captured_once(stripe_base: str) -> None:
    status, authorised = _call(stripe_base, "/v1/payment_intents", MANUAL)
    assert status == 200, authorised
    assert (authorised["status"], authorised["amount_capturable"]) == ("requires_capture", 1999)
    assert authorised["amount_received"] == 0
    client = _client(stripe_base)

    captured = client.v1.payment_intents.capture(authorised["id"])

    assert (captured.status, captured.amount_received) == ("succeeded", 1999)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.payment_intents.capture(authorised["id"])
    assert refused.value.code == "payment_intent_unexpected_state"
    events = eventually(
        lambda: _events_of(stripe_base, authorised["id"]),
        until=lambda types: "payment_intent.succeeded" in types,
        what="the capture's event",
    )
    assert events["payment_intent.amount_capturable_updated"] == "requires_capture"
    assert events["payment_intent.succeeded"] == "succeeded"


def test_a_canceled_authorisation_cannot_be_captured(stripe_base: str) -> None:
    _, authorised = _call(stripe_base, "/v1/payment_intents", MANUAL)
    client = _client(stripe_base)
    canceled = client.v1.payment_intents.cancel(authorised["id"])
    assert canceled.status == "canceled"

    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.payment_intents.capture(authorised["id"])

    assert (refused.value.http_status, refused.value.code) == (
        400,
        "payment_intent_unexpected_state",
    )
    assert client.v1.payment_intents.retrieve(authorised["id"]).status == "canceled"
    eventually(
        lambda: _events_of(stripe_base, authorised["id"]),
        until=lambda types: "payment_intent.canceled" in types,
        what="the cancel's event",
    )


def test_search_finds_an_attempt_by_metadata_newest_first_and_pages(stripe_base: str) -> None:
    execution = "arn:aws:states:us-east-1:0:execution:m:" + uuid.uuid4().hex
    made = []
    for attempt in ("1", "2", "2"):
        tagged = {"metadata[paystep_execution]": execution, "metadata[paystep_attempt]": attempt}
        _, body = _call(stripe_base, "/v1/payment_intents", {**CARD, **NEVER, **tagged})
        made.append(body["id"])
    client = _client(stripe_base)

    found = client.v1.payment_intents.search({"query": attempt_query(execution, 2)})
    assert [pi.id for pi in found.data] == [made[2], made[1]]
    assert (found.object, found.has_more, found.next_page) == ("search_result", False, None)
    assert found.url == "/v1/payment_intents/search"

    first = client.v1.payment_intents.search({"query": attempt_query(execution, 2), "limit": 1})
    assert ([pi.id for pi in first.data], first.has_more) == ([made[2]], True)
    assert first.next_page
    rest = client.v1.payment_intents.search(
        {"query": attempt_query(execution, 2), "limit": 1, "page": first.next_page}
    )
    assert ([pi.id for pi in rest.data], rest.has_more) == ([made[1]], False)


@pytest.mark.parametrize(
    "query",
    ["status:'succeeded' OR status:'canceled'", "colour:'red'", "-status:'canceled'", "amount>5"],
)
def test_search_refuses_what_the_query_language_does_not_hold(stripe_base: str, query: str) -> None:
    status, body = _call(
        stripe_base,
        "/v1/payment_intents/search?" + urllib.parse.urlencode({"query": query}),
        version=PINNED,
    )
    assert (status, body["error"]["type"], body["error"]["param"]) == (
        400,
        "invalid_request_error",
        "query",
    )


def test_search_finds_a_new_payment_intent_only_after_the_lag(local_stripe: LocalStack) -> None:
    assert local_stripe.localstripe_base
    now = [0.0]
    lag_s = 60.0
    with StripeChaosProxy(
        local_stripe.localstripe_base, search_lag_s=lag_s, clock=lambda: now[0]
    ) as proxy:
        now[0] = 1_000_000.0
        run = uuid.uuid4().hex
        _, body = _call(proxy.url, "/v1/payment_intents", {**CARD, **NEVER, "metadata[run]": run})
        query = "/v1/payment_intents/search?" + urllib.parse.urlencode(
            {"query": f"metadata['run']:'{run}'"}
        )

        now[0] += lag_s - 1
        _, early = _call(proxy.url, query, version=PINNED)
        now[0] += 1
        _, due = _call(proxy.url, query, version=PINNED)
        _, fetched = _call(proxy.url, f"/v1/payment_intents/{body['id']}", version=PINNED)

    assert early["data"] == []
    assert [pi["id"] for pi in due["data"]] == [body["id"]]
    assert fetched["id"] == body["id"], "retrieve is read-after-write"


def test_a_refund_update_changes_only_metadata() -> None:
    # https://docs.stripe.com/api/refunds/update: metadata is the one updatable field.
    assert stripe_rules.check_refund_update({"metadata": {"paystep_alert": "sent"}}) == {
        "paystep_alert": "sent"
    }
    with pytest.raises(stripe_rules.StripeFailure) as refused:
        stripe_rules.check_refund_update({"amount": "500"})
    assert refused.value.body["error"]["code"] == "parameter_unknown"
