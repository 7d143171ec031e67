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

from paystep_local.localstack import LocalStack, ManagedProcess
from paystep_local.processes import Workers
from paystep_local.stripe_chaos_proxy import StripeChaosProxy
from tests.faults.conftest import SOAK, clients
from tests.faults.harness import (
    Payments,
    fault_seed,
    mix,
    reconcile,
    start_webhook,
    start_worker,
    summary,
)

WORKERS = 2
WORKER_KILLS = 3
WEBHOOK_KILLS = 2
# Stripe takes a moment to confirm: kills find calls in flight.
STRIPE_LATENCY_S = 0.8


@dataclass
class Crashes:
    """Kill and restart the services at the given moments (seconds from `run`)."""

    local: LocalStack
    workers: Workers
    stripe_base: str
    webhook: ManagedProcess
    webhook_port: int
    seed: int
    log: list[str] = field(default_factory=list)

    def live_workers(self) -> list[ManagedProcess]:
        return [w for w in self.workers.started if w.process.poll() is None]

    def start_worker(self) -> ManagedProcess:
        return start_worker(self.workers, self.stripe_base)

    def run(self, window_s: float) -> None:
        rng = random.Random(self.seed)
        targets = ["worker"] * WORKER_KILLS + ["webhook"] * WEBHOOK_KILLS
        rng.shuffle(targets)
        moments = sorted(rng.uniform(0.1 * window_s, 0.9 * window_s) for _ in targets)
        begun = time.monotonic()
        for at_s, target in zip(moments, targets, strict=True):
            time.sleep(max(0.0, begun + at_s - time.monotonic()))
            if target == "worker":
                victim = rng.choice(self.live_workers())
                victim.kill()
                self.start_worker()
            else:
                self.webhook.kill()
                self.webhook = start_webhook(self.local, self.webhook_port)
            self.log.append(f"{target}@{time.monotonic() - begun:.1f}s")


@pytest.mark.slow
@pytest.mark.parametrize("count", [40, pytest.param(300, marks=SOAK)])
def test_payments_survive_killed_workers_and_webhooks(
    local: LocalStack, workers: Workers, count: int
) -> None:
    assert local.stripe_base and local.deployment
    seed = fault_seed()
    window_s = max(12.0, count * 0.25)
    with StripeChaosProxy(local.stripe_base, latency_s=STRIPE_LATENCY_S) as stripe:
        webhook = start_webhook(local)
        local.register_webhook(webhook.urls["webhook"])
        crashes = Crashes(
            local, workers, stripe.url, webhook, int(webhook.urls["base"].rsplit(":", 1)[1]), seed
        )
        for _ in range(WORKERS):
            crashes.start_worker()

        async def scenario() -> None:
            async with clients(local) as stack:
                payments = Payments(stack, f"crashes x{count}")
                await asyncio.gather(
                    payments.start_all(mix(count), over_s=window_s),
                    asyncio.to_thread(crashes.run, window_s),
                )
                # Past the emulator's one-second delivery delay: what the dead webhook
                # missed is lost for good, and only reconciliation can finish it.
                await asyncio.sleep(3)
                recovered = await asyncio.to_thread(reconcile, local)
                figures = await payments.check(timeout_s=60 + count)
                figures.extra.update(
                    seed=seed,
                    kills=" ".join(crashes.log),
                    reconciled=recovered["callbacks_sent"],
                    stripe_replays=stripe.stats().get("replayed", 0),
                )
                print(figures.line())
                assert figures.errors == [], summary(figures)

        asyncio.run(scenario())
