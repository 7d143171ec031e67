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

from paystep_local.localstack import LocalStack
from paystep_local.processes import Workers
from paystep_local.webhook_relay import WebhookRelay
from tests.faults.conftest import SOAK, clients
from tests.faults.harness import Payments, fault_seed, mix, start_webhook, start_worker, summary

COPIES = 3


@pytest.mark.slow
@pytest.mark.parametrize("count", [32, pytest.param(200, marks=SOAK)])
def test_duplicated_shuffled_late_events_change_no_outcome(
    local: LocalStack, workers: Workers, count: int
) -> None:
    assert local.stripe_base and local.deployment
    seed = fault_seed()
    webhook = start_webhook(local)
    with WebhookRelay(
        webhook.urls["webhook"],
        copies=COPIES,
        max_delay_s=1.0,
        late_share=0.3,
        late_delay_s=(1.5, 4.0),
        seed=seed,
    ) as relay:
        local.register_webhook(relay.url)
        for _ in range(2):
            start_worker(workers, local.stripe_base)

        async def scenario() -> None:
            async with clients(local) as stack:
                payments = Payments(stack, f"webhook chaos x{count}")
                await payments.start_all(mix(count), over_s=count * 0.15)
                figures = await payments.check(timeout_s=90 + count)
                await asyncio.to_thread(relay.wait_idle)
                delivered, statuses = relay.stats(), relay.answers()
                figures.extra.update(
                    seed=seed,
                    events=delivered.get("events", 0),
                    deliveries=delivered.get("deliveries", 0),
                    inversions=delivered.get("inversions", 0),
                    answers=statuses,
                )
                print(figures.line())
                assert figures.errors == [], summary(figures)
                assert set(statuses) <= {200, 503}, f"answers {statuses}"
                assert delivered.get("given_up", 0) == 0, f"relay gave up: {delivered}"
                retries = delivered.get("retries", 0)
                assert retries == statuses.get(503, 0) + delivered.get("unanswered", 0)
                assert delivered.get("deliveries") == COPIES * delivered.get("events", 0) + retries
                assert delivered.get("inversions", 0) > 0, "no event overtook another"

        asyncio.run(scenario())
