"""The worker's and reconcile's real calls against Stripe test mode (`make test-stripe`).

GIVEN a test-mode key in PAYSTEP_STRIPE_TEST_KEY and paystep's pinned API version
WHEN the worker creates and confirms as it does (`payment_intent_params`, `StripeApi`),
cancels and refunds, searches an attempt, and reconcile lists events
THEN Stripe accepts every call, and what comes back parses into the models the
webhook and reconcile read (`PaymentIntentSnapshot`, `StripeEvent`).

Test cards and methods: https://docs.stripe.com/testing. Search lags writes by up
to a minute (https://docs.stripe.com/search#data-freshness): that test polls.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import stripe

from paystep_common.limiter import Budget
from statemachine import declines
from statemachine.card_budget import Card
from statemachine.models import CreatePaymentTask
from statemachine.seal import TokenKeys, new_key
from webhook.events import PaymentIntentSnapshot, parse_event
from webhook.listings import list_events
from webhook.reconcile import ReconcileSettings
from worker.handlers import payment_intent_params, payment_metadata
from worker.metrics import Metrics
from worker.stripe_api import StripeApi

SEARCH_DEADLINE_S = 90.0
# https://docs.stripe.com/testing#sepa-direct-debit: succeeds after `processing`.
SEPA_IBAN = "AT611904300234573201"


def _task(payment_method: str, **request: str) -> CreatePaymentTask:
    execution = f"arn:aws:states:us-east-1:000000000000:execution:paystep:{uuid.uuid4()}"
    return CreatePaymentTask(
        type="create_payment",
        task_token="contract-" + uuid.uuid4().hex,
        execution_id=execution,
        state="CreatePayment",
        attempt=1,
        request={
            "order_id": "ord_" + uuid.uuid4().hex[:12],
            "amount": 1999,
            "currency": "eur",
            "payment_method": payment_method,
            **request,
        },
    )


KEYS = TokenKeys.parse(new_key())


def _api(client: stripe.StripeClient) -> StripeApi:
    return StripeApi(client, Budget(account_per_s=25, endpoint_per_s=25), Metrics())


async def _create(api: StripeApi, task: CreatePaymentTask) -> stripe.PaymentIntent:
    request = task.payment_request()
    sealed = payment_metadata(task, request, KEYS, livemode=False)
    params = payment_intent_params(task, request, sealed)
    return await api.create_payment_intent(params, idempotency_key=task.idempotency_key)


def _snapshot(intent: stripe.PaymentIntent) -> PaymentIntentSnapshot:
    return PaymentIntentSnapshot.model_validate(intent.to_dict())


@pytest.mark.stripe_contract
async def test_a_card_confirmed_off_session_succeeds_and_replays_its_key(
    client: stripe.StripeClient,
) -> None:
    api, task = _api(client), _task("pm_card_visa")
    intent = await _create(api, task)
    again = await _create(api, task)
    snapshot = _snapshot(intent)
    assert (snapshot.status, snapshot.amount_received, again.id) == ("succeeded", 1999, intent.id)
    assert snapshot.latest_charge and snapshot.latest_charge.startswith("ch_")
    assert again.last_response is not None
    assert again.last_response.headers.get("Idempotent-Replayed") == "true"


@pytest.mark.stripe_contract
async def test_a_decline_names_its_payment_intent_and_code(client: stripe.StripeClient) -> None:
    task = _task("pm_card_chargeDeclinedInsufficientFunds")
    with pytest.raises(stripe.CardError) as declined:
        await _create(_api(client), task)
    error = declined.value.error
    assert error is not None and error.payment_intent is not None
    snapshot = _snapshot(error.payment_intent)
    assert snapshot.status == "requires_payment_method"
    assert snapshot.last_payment_error is not None
    assert snapshot.last_payment_error.decline_code == "insufficient_funds"
    # What the decline policy and the card's budget read, in the 402 and in the snapshot
    # (https://docs.stripe.com/api/errors: `charge`, and `payment_method` as an object).
    assert declines.decide(error) == declines.Verdict("retry", "decline_code:insufficient_funds")
    assert str(error.charge).startswith("ch_")
    card = Card.of(error.payment_method)
    assert card is not None and card.brand == "visa"
    assert Card.of(snapshot.last_payment_error.payment_method) == card


@pytest.mark.stripe_contract
async def test_a_sepa_debit_is_processing(client: stripe.StripeClient) -> None:
    method = await client.v1.payment_methods.create_async(
        {
            "type": "sepa_debit",
            "sepa_debit": {"iban": SEPA_IBAN},
            "billing_details": {"name": "Paystep Contract", "email": "contract@example.com"},
        }
    )
    intent = await _create(_api(client), _task(method.id))
    assert _snapshot(intent).status in ("processing", "succeeded")


@pytest.mark.stripe_contract
async def test_a_customer_present_card_takes_a_return_url(client: stripe.StripeClient) -> None:
    task = _task("pm_card_visa", return_url="https://shop.example/paid")
    assert _snapshot(await _create(_api(client), task)).status == "succeeded"


@pytest.mark.stripe_contract
async def test_cancel_then_refund(client: stripe.StripeClient) -> None:
    api = _api(client)
    waiting = await client.v1.payment_intents.create_async(
        {"amount": 1999, "currency": "eur", "automatic_payment_methods": {"enabled": True}}
    )
    canceled = await api.cancel_payment_intent(waiting.id, idempotency_key=uuid.uuid4().hex)
    assert _snapshot(canceled).status == "canceled"
    paid = await _create(api, _task("pm_card_visa"))
    refund = await api.create_refund({"payment_intent": paid.id}, idempotency_key=uuid.uuid4().hex)
    assert (refund.amount, refund.currency) == (1999, "eur")
    assert [r.id for r in await api.list_refunds(paid.id)] == [refund.id]


@pytest.mark.stripe_contract
async def test_an_attempt_is_found_by_its_metadata(client: stripe.StripeClient) -> None:
    api, task = _api(client), _task("pm_card_visa")
    intent = await _create(api, task)
    deadline = time.monotonic() + SEARCH_DEADLINE_S
    found = await api.find_attempt(task.execution_id, task.attempt)
    while not found and time.monotonic() < deadline:
        await asyncio.sleep(5)
        found = await api.find_attempt(task.execution_id, task.attempt)
    assert [pi.id for pi in found] == [intent.id]


@pytest.mark.stripe_contract
async def test_the_events_list_parses_as_reconcile_reads_it(client: stripe.StripeClient) -> None:
    since = int(time.time()) - 60
    intent = await _create(_api(client), _task("pm_card_visa"))
    rates = ReconcileSettings.model_construct().call_rates()
    events = await list_events(client, since, ["payment_intent.succeeded"], rates)
    mine = [e for e in events if e.data.object.get("id") == intent.id]
    assert mine, "payment_intent.succeeded of the new PaymentIntent is listed"
    assert mine[0].payment_intent().metadata.get("paystep_attempt") == "1"
    assert parse_event(mine[0].model_dump()).api_version == mine[0].api_version
