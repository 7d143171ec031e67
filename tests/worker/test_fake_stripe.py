"""The fake Stripe behaves like Stripe where the worker's tests rely on it.

Driven through stripe-python itself, the way the worker calls it.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import stripe

from paystep_local.fake_stripe import FakeStripe, Fault
from statemachine.metadata import attempt_query, payment_intent_metadata, read_token
from statemachine.seal import Binding, TokenKeys, new_key

# What the worker sends: confirmed off-session, as Stripe takes it without a return_url.
CARD = {
    "amount": 1999,
    "currency": "usd",
    "payment_method": "pm_card_visa",
    "confirm": True,
    "off_session": True,
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    server = FakeStripe()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(fake: FakeStripe) -> AsyncIterator[stripe.StripeClient]:
    async with aiohttp.ClientSession() as session:
        yield stripe.StripeClient(
            "sk_test_fake",
            base_addresses={"api": fake.url},
            http_client=stripe.AIOHTTPClient(session=session),
            max_network_retries=0,
        )


def create(client: stripe.StripeClient, key: str, **params: Any) -> Any:
    return client.v1.payment_intents.create_async({**CARD, **params}, {"idempotency_key": key})  # type: ignore[typeddict-item]


async def test_same_key_replays_the_first_answer(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    first = await create(client, "k1")
    again = await create(client, "k1")
    assert again.id == first.id
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    with pytest.raises(stripe.IdempotencyError):
        await create(client, "k1", amount=5000)
    assert len(fake.intents()) == 1


async def test_concurrent_requests_with_one_key_make_one_object(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    fake.configure(latency_s=0.2)
    answers = await asyncio.gather(*(create(client, "k") for _ in range(3)), return_exceptions=True)
    conflicts = [a for a in answers if isinstance(a, stripe.StripeError)]
    assert len(conflicts) == 2
    assert all(c.http_status == 409 and c.error.code == "idempotency_key_in_use" for c in conflicts)
    fake.configure(same_key_in_flight="wait")
    answers = await asyncio.gather(*(create(client, "w") for _ in range(3)))
    assert len({a.id for a in answers}) == 1
    assert len(fake.intents()) == 2


async def test_declines_are_stored_under_the_key_and_validation_failures_are_not(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    for _ in range(2):
        with pytest.raises(stripe.CardError) as declined:
            await create(client, "d", payment_method="pm_card_chargeCustomerFail")
    assert declined.value.error is not None
    assert declined.value.error.decline_code == "generic_decline"
    assert fake.stats()["replays"] == 1
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await create(client, "v", colour="red")
    assert refused.value.code == "parameter_unknown"
    assert (await create(client, "v")).status == "succeeded"


async def test_faults_error_drop_and_forgotten_keys(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    fake.add_fault(Fault(kind="error", status=500))
    with pytest.raises(stripe.APIError):
        await create(client, "f")
    fake.add_fault(Fault(kind="drop"))
    with pytest.raises(stripe.APIConnectionError):
        await create(client, "f")
    assert len(fake.intents()) == 1, "dropped after it ran"
    assert (await create(client, "f")).last_response.headers["Idempotent-Replayed"] == "true"
    fake.forget_idempotency_keys()
    await create(client, "f")
    assert len(fake.intents()) == 2


async def test_search_finds_by_metadata_and_tokens_round_trip(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    token = "a+b/c=" * 341
    keys = TokenKeys.parse(new_key())
    metadata = payment_intent_metadata(
        keys, token, Binding("arn:x:y", "2", 1999, "usd", False), order_id="o"
    )
    created = await create(client, "s", metadata=metadata)
    await create(client, "other", metadata={"paystep_execution": "arn:x:y", "paystep_attempt": "1"})
    found = await client.v1.payment_intents.search_async({"query": attempt_query("arn:x:y", 2)})
    assert [pi.id for pi in found.data] == [created.id]
    read = found.data[0].to_dict()
    opened = read_token(
        keys, read["metadata"], amount=read["amount"], currency=read["currency"], livemode=False
    )
    assert opened == token


async def test_refunds_once_then_refuses(fake: FakeStripe, client: stripe.StripeClient) -> None:
    paid = await create(client, "r")
    refund = await client.v1.refunds.create_async({"payment_intent": paid.id})
    assert (refund.amount, refund.status) == (1999, "succeeded")
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await client.v1.refunds.create_async({"payment_intent": paid.id})
    assert refused.value.code == "charge_already_refunded"
    listed = await client.v1.refunds.list_async({"payment_intent": paid.id})
    assert [r.id for r in listed.data] == [refund.id]


async def test_the_control_api_serves_other_processes(fake: FakeStripe) -> None:
    def call(path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            fake.url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    await asyncio.to_thread(call, "/_fake/config", {"latency_s": 0.01, "rate_limit_per_s": 5})
    await asyncio.to_thread(call, "/_fake/faults", [{"kind": "error", "status": 503}])
    assert fake.latency_s == 0.01 and fake.rate_limit_per_s == 5
    assert fake.faults[0].status == 503
    stats = await asyncio.to_thread(call, "/_fake/stats")
    assert stats["requests"] == 0
