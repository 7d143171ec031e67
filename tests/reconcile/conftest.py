"""Reconcile against the fast fakes, in this process: the fake Stripe and the fake Step Functions
serve on the test's loop, reconcile's clients reach them over HTTP as in production."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from paystep_local.fake_sfn import FakeStepFunctions, Quota, Store
from paystep_local.fake_stripe import FakeStripe
from paystep_local.reconcile_doubles import MemoryCheckpoints, Payments, Recorder, services
from paystep_local.stripe_rate_limits import StripeRateLimits, TokenBucket
from statemachine.seal import TokenKeys, new_key
from webhook.call_rates import CallRates
from webhook.reconcile import ReconcileSettings, Summary, reconcile_with

KEYS = TokenKeys.parse(new_key("reconcile"))
NOW = 1_800_000_000


def settings(**overrides: Any) -> ReconcileSettings:
    return ReconcileSettings.model_construct(
        **{
            "reconcile_list_executions_per_s": 50.0,
            "reconcile_describe_execution_per_s": 50.0,
            "reconcile_stripe_per_s": 50.0,
            "reconcile_stripe_search_per_s": 50.0,
            "reconcile_send_task_per_s": 200.0,
            **overrides,
        }
    )


@dataclass
class Fakes:
    stripe: FakeStripe
    store: Store
    payments: Payments = field(default_factory=lambda: Payments(KEYS))
    recorder: Recorder = field(default_factory=Recorder)
    checkpoints: MemoryCheckpoints = field(default_factory=MemoryCheckpoints)
    sfn_url: str = ""

    def load(self) -> None:
        """Hand what `payments` holds to the two fakes (once; `payments` is emptied)."""
        self.stripe.put_payment_intents(self.payments.intents)
        self.store.put(self.payments.executions)
        self.payments = Payments(KEYS)

    def send_tasks(self) -> int:
        return sum(v for k, v in self.store.answered.items() if k.startswith("SendTask"))

    async def run(
        self,
        *,
        now: int = NOW,
        heartbeat: bool = True,
        since_s: int | None = None,
        rates: CallRates | None = None,
        **overrides: Any,
    ) -> Summary:
        configured = settings(**overrides)
        rates = rates or configured.call_rates()
        async with services(self.stripe.url, self.sfn_url, KEYS, rates, self.recorder) as (
            wired,
            _,
        ):
            wired = replace(wired, checkpoints=self.checkpoints)
            return await reconcile_with(
                wired, configured, since_s, dry_run=False, heartbeat=heartbeat, clock=lambda: now
            )


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    stripe = FakeStripe(rate_limits=StripeRateLimits())
    await stripe.start()
    FakeStepFunctions.store = Store()
    FakeStepFunctions.quota = Quota(None)
    server = await asyncio.get_running_loop().create_server(FakeStepFunctions, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Fakes(stripe, FakeStepFunctions.store, sfn_url=f"http://127.0.0.1:{port}")
    finally:
        server.close()
        await server.wait_closed()
        await stripe.stop()


def quotas(store: Store, **buckets: tuple[float, float]) -> None:
    """Give the fake Step Functions these (bucket size, refill/s) quotas, by action."""
    store.buckets = {
        action: TokenBucket(refill, burst=size) for action, (size, refill) in buckets.items()
    }
