"""Crashes: payments in flight while workers and the webhook are SIGKILLed and restarted.

GIVEN the stack with two workers (Stripe keys honoured, as Stripe does) and one webhook
WHEN payments start steadily while a worker is killed three times and the webhook
twice, at random moments, each restarted at once (the webhook on the same port)
THEN after `paystep reconcile --since 1h` replays what the dead webhook missed
(the Stripe emulator delivers once), every execution ends as its payment method
dictates, with exactly one succeeded PaymentIntent per successful order and no
PaymentIntent of an execution that did not end.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import pytest

from paystep_local.processes import ManagedProcess
from paystep_local.stripe_chaos_proxy import StripeChaosProxy, StripeFaults
from tests.faults.conftest import SOAK
from tests.faults.harness import Chaos, mix, reconcile

WORKERS = 2
WORKER_KILLS = 3
WEBHOOK_KILLS = 2
# Stripe takes a moment to confirm: kills find calls in flight.
STRIPE_LATENCY_S = 0.8


@dataclass
class Crashes:
    """Kill and restart the services at the given moments (seconds from `run`)."""

    chaos: Chaos
    stripe_base: str
    webhook: ManagedProcess
    log: list[str] = field(default_factory=list)

    def live_workers(self) -> list[ManagedProcess]:
        return [w for w in self.chaos.workers.started if w.process.poll() is None]

    def run(self, window_s: float) -> None:
        rng = random.Random(self.chaos.seed)
        targets = ["worker"] * WORKER_KILLS + ["webhook"] * WEBHOOK_KILLS
        rng.shuffle(targets)
        moments = sorted(rng.uniform(0.1 * window_s, 0.9 * window_s) for _ in targets)
        begun = time.monotonic()
        port = int(self.webhook.urls["base"].rsplit(":", 1)[1])
        for at_s, target in zip(moments, targets, strict=True):
            time.sleep(max(0.0, begun + at_s - time.monotonic()))
            if target == "worker":
                victim = rng.choice(self.live_workers())
                victim.kill()
                self.chaos.start_workers(self.stripe_base, count=1)
            else:
                self.webhook.kill()
                # On the same port: the emulator keeps delivering to the registered URL.
                self.webhook = self.chaos.start_webhook(register=False, port=port)
            self.log.append(f"{target}@{time.monotonic() - begun:.1f}s")


@pytest.mark.slow
@pytest.mark.parametrize("count", [40, pytest.param(300, marks=SOAK)])
def test_payments_survive_killed_workers_and_webhooks(chaos: Chaos, count: int) -> None:
    assert chaos.local.localstripe_base
    window_s = max(12.0, count * 0.25)
    faults = StripeFaults(latency_s=STRIPE_LATENCY_S)
    with StripeChaosProxy(chaos.local.localstripe_base, faults) as stripe:
        crashes = Crashes(chaos, stripe.url, chaos.start_webhook())
        chaos.start_workers(stripe.url, count=WORKERS)

        async def scenario() -> None:
            async with chaos.payments(f"crashes x{count}") as payments:
                await asyncio.gather(
                    payments.start_all(mix(count), over_s=window_s),
                    asyncio.to_thread(crashes.run, window_s),
                )
                # Past the emulator's one-second delivery delay: what the dead webhook
                # missed is lost for good, and only reconciliation can finish it.
                await asyncio.sleep(3)
                recovered = await asyncio.to_thread(reconcile, chaos.local)
                figures = await payments.check(timeout_s=60 + count)
            chaos.report(
                figures,
                kills=" ".join(crashes.log),
                reconciled=recovered["callbacks_sent"],
                stripe_replays=stripe.stats().get("replayed", 0),
                key_in_use=stripe.stats().get("conflicts", 0),
            )

        asyncio.run(scenario())
