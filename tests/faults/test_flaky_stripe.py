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

from paystep_local.stripe_chaos_proxy import StripeChaosProxy, StripeFaults
from tests.faults.conftest import SOAK
from tests.faults.harness import WORKER_ENV, Chaos, mix

# The worker gives up on an answer after this; the proxy holds a lost one longer.
STRIPE_TIMEOUT_S = 2.0


@pytest.mark.slow
@pytest.mark.parametrize("count", [40, pytest.param(300, marks=SOAK)])
def test_payments_hold_when_stripe_fails_times_out_and_throttles(chaos: Chaos, count: int) -> None:
    assert chaos.local.localstripe_base
    faults = StripeFaults(
        error_rate=0.10,
        lost_answer_rate=0.05,
        lost_answer_hold_s=STRIPE_TIMEOUT_S + 1,
        lose_first_answers=2,
        burst_chance=0.01,
        burst_length=8,
        latency_s=0.1,
    )
    with StripeChaosProxy(chaos.local.localstripe_base, faults, seed=chaos.seed) as stripe:
        chaos.start_webhook()
        chaos.start_workers(
            stripe.url, env={**WORKER_ENV, "PAYSTEP_STRIPE_TIMEOUT_S": str(STRIPE_TIMEOUT_S)}
        )

        async def scenario() -> None:
            async with chaos.payments(f"flaky stripe x{count}") as payments:
                await payments.start_all(mix(count), over_s=count * 0.1)
                figures = await payments.check(timeout_s=90 + count)
            seen = stripe.stats()
            chaos.report(
                figures,
                stripe_requests=seen.get("requests", 0),
                injected_500=seen.get("error_500", 0),
                lost_answers=seen.get("lost_answer", 0),
                rate_limited=seen.get("rate_limited", 0),
                replays=seen.get("replayed", 0),
                key_in_use=seen.get("conflicts", 0),
            )
            assert seen.get("lost_answer", 0) >= 2, "the lost answers did not happen"

        asyncio.run(scenario())
