"""Webhook chaos: every Stripe event three times, shuffled, some after the next one's.

GIVEN a relay registered at the Stripe emulator in the webhook's place, which
delivers each signed event three times, each copy after its own random delay
(a third of them late, after the copies of later events)
WHEN payments of every kind run
THEN they end exactly as in a clean run: the duplicates and stale events meet
closed tasks and are answered 200. A 503 is allowed only as Step Functions'
own "try again" (a slow callback on a loaded machine), and then the
redelivery must land: nothing is given up, nothing is lost.
"""

from __future__ import annotations

import asyncio

import pytest

from paystep_local.webhook_relay import WebhookRelay
from tests.faults.conftest import SOAK
from tests.faults.harness import Chaos, mix

COPIES = 3


@pytest.mark.slow
@pytest.mark.parametrize("count", [32, pytest.param(200, marks=SOAK)])
def test_duplicated_shuffled_late_events_change_no_outcome(chaos: Chaos, count: int) -> None:
    assert chaos.local.stripe_base
    webhook = chaos.start_webhook(register=False)
    with WebhookRelay(
        webhook.urls["webhook"],
        copies=COPIES,
        max_delay_s=1.0,
        late_share=0.3,
        late_delay_s=(1.5, 4.0),
        seed=chaos.seed,
    ) as relay:
        chaos.local.register_webhook(relay.url)
        chaos.start_workers(chaos.local.stripe_base)

        async def scenario() -> None:
            async with chaos.payments(f"webhook chaos x{count}") as payments:
                await payments.start_all(mix(count), over_s=count * 0.15)
                figures = await payments.check(timeout_s=90 + count)
            await asyncio.to_thread(relay.wait_idle)
            delivered, statuses = relay.stats(), relay.answers()
            chaos.report(
                figures,
                events=delivered.get("events", 0),
                deliveries=delivered.get("deliveries", 0),
                inversions=delivered.get("inversions", 0),
                answers=statuses,
            )
            assert set(statuses) <= {200, 503}, f"answers {statuses}"
            assert delivered.get("given_up", 0) == 0, f"relay gave up: {delivered}"
            retries = delivered.get("retries", 0)
            assert retries == statuses.get(503, 0) + delivered.get("unanswered", 0)
            assert delivered.get("deliveries") == COPIES * delivered.get("events", 0) + retries
            assert delivered.get("inversions", 0) > 0, "no event overtook another"

        asyncio.run(scenario())
