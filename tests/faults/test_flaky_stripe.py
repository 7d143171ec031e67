"""A flaky Stripe: 500s, answers lost on the way back, bursts of 429, keys honoured.

GIVEN two workers whose Stripe calls go through a proxy that answers 10 % of them
with 500, lets 5 % run at Stripe and then times out on the way back, and starts
bursts of 429 (idempotency keys honoured, as Stripe does)
WHEN payments of every kind run
THEN every execution ends as its payment method dictates, with exactly one
succeeded PaymentIntent per successful order and nothing left in flight.
"""

from __future__ import annotations

import asyncio

import pytest

from paystep_local.localstack import LocalStack
from paystep_local.processes import Workers
from paystep_local.stripe_chaos_proxy import StripeChaosProxy
from tests.faults.conftest import SOAK, clients
from tests.faults.harness import (
    WORKER_ENV,
    Payments,
    fault_seed,
    mix,
    start_webhook,
    start_worker,
    summary,
)

# The worker gives up on an answer after this; the proxy holds a lost one longer.
STRIPE_TIMEOUT_S = 2.0


@pytest.mark.slow
@pytest.mark.parametrize("count", [40, pytest.param(300, marks=SOAK)])
def test_payments_hold_when_stripe_fails_times_out_and_throttles(
    local: LocalStack, workers: Workers, count: int
) -> None:
    assert local.stripe_base and local.deployment
    seed = fault_seed()
    with StripeChaosProxy(
        local.stripe_base,
        error_rate=0.10,
        lost_answer_rate=0.05,
        lost_answer_hold_s=STRIPE_TIMEOUT_S + 1,
        lose_first_answers=2,
        burst_chance=0.01,
        burst_length=8,
        latency_s=0.1,
        seed=seed,
    ) as stripe:
        webhook = start_webhook(local)
        local.register_webhook(webhook.urls["webhook"])
        for _ in range(2):
            start_worker(
                workers,
                stripe.url,
                {**WORKER_ENV, "PAYSTEP_STRIPE_TIMEOUT_S": str(STRIPE_TIMEOUT_S)},
            )

        async def scenario() -> None:
            async with clients(local) as stack:
                payments = Payments(stack, f"flaky stripe x{count}")
                await payments.start_all(mix(count), over_s=count * 0.1)
                figures = await payments.check(timeout_s=90 + count)
                faults = stripe.stats()
                figures.extra.update(
                    seed=seed,
                    stripe_requests=faults.get("requests", 0),
                    injected_500=faults.get("error_500", 0),
                    lost_answers=faults.get("lost_answer", 0),
                    rate_limited=faults.get("rate_limited", 0),
                    replays=faults.get("replayed", 0),
                )
                print(figures.line())
                assert figures.errors == [], summary(figures)
                assert faults.get("lost_answer", 0) >= 2, "the lost answers did not happen"

        asyncio.run(scenario())
