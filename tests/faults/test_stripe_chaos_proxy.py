"""The chaos proxy honours idempotency keys as Stripe does, with no fault injected.

GIVEN the proxy in front of a Stripe emulator that takes a moment per request
WHEN requests with one idempotency key arrive together, again, or with other parameters
THEN the second of two together is refused 409 `idempotency_key_in_use` (or, told
to wait, replayed), a later one is replayed with `Idempotent-Replayed: true`, and
other parameters are refused 400 `idempotency_error`
(https://docs.stripe.com/api/idempotent_requests).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from paystep_local.fake_stripe import FakeStripe
from paystep_local.idempotency import SameKeyInFlight
from paystep_local.stripe_chaos_proxy import StripeChaosProxy

CREATE = {"amount": "1999", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}


@pytest.fixture
def emulator() -> Iterator[FakeStripe]:
    # Waits on its own keys: whatever is refused is refused by the proxy.
    with FakeStripe(latency_s=0.5, same_key_in_flight="wait").running_in_thread() as fake:
        yield fake


async def _post(url: str, key: str, form: dict[str, str]) -> tuple[int, dict[str, Any], bool]:
    headers = {"Authorization": "Bearer sk_test_proxy", "Idempotency-Key": key}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/payment_intents", data=form, headers=headers) as answer,
    ):
        body: dict[str, Any] = await answer.json()
        return answer.status, body, answer.headers.get("Idempotent-Replayed") == "true"


def _proxy(emulator: FakeStripe, same_key_in_flight: SameKeyInFlight) -> StripeChaosProxy:
    return StripeChaosProxy(emulator.url, same_key_in_flight=same_key_in_flight)


async def test_a_key_in_flight_is_refused_409_then_replayed_and_other_parameters_400(
    emulator: FakeStripe,
) -> None:
    key = uuid.uuid4().hex
    with _proxy(emulator, "conflict") as proxy:
        together = await asyncio.gather(*(_post(proxy.url, key, CREATE) for _ in range(2)))
        again = await _post(proxy.url, key, CREATE)
        other = await _post(proxy.url, key, {**CREATE, "amount": "2000"})
        stats = proxy.stats()

    (created, _, _), (refused, refusal, _) = sorted(together, key=lambda answer: answer[0])
    assert (created, refused) == (200, 409)
    assert refusal["error"]["code"] == "idempotency_key_in_use"
    status, body, replayed = again
    assert (status, replayed) == (200, True)
    assert body["id"] == next(answer[1]["id"] for answer in together if answer[0] == 200)
    assert (other[0], other[1]["error"]["type"]) == (400, "idempotency_error")
    assert len(emulator.intents()) == 1
    assert (stats["conflicts"], stats["replayed"], stats["mismatches"]) == (1, 1, 1)


async def test_told_to_wait_the_second_of_two_together_is_replayed(emulator: FakeStripe) -> None:
    key = uuid.uuid4().hex
    with _proxy(emulator, "wait") as proxy:
        together = await asyncio.gather(*(_post(proxy.url, key, CREATE) for _ in range(2)))

    assert [status for status, _, _ in together] == [200, 200]
    assert together[0][1]["id"] == together[1][1]["id"]
    assert sorted(replayed for _, _, replayed in together) == [False, True]
    assert len(emulator.intents()) == 1
