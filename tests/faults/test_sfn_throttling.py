"""Step Functions throttles the webhook's callbacks: 503 to Stripe, the redelivery lands.

The webhook's answer to one throttled event is covered in `tests/webhook/test_faults.py`;
this is the whole stack: the webhook process calls Step Functions through a proxy
that throttles every SendTask* in storms, and the events come from the Stripe emulator
through a relay that redelivers what is not answered 2xx, as Stripe does.

GIVEN storms of ThrottlingException on every SendTask* attempt of the webhook, longer
than its attempts take together, with calm between them
WHEN payments of every kind run
THEN the throttled events are answered 503 at once (not held past the sender's
timeout), delivered again, and every payment ends as its payment method
dictates: nothing is lost.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from paystep_local.sfn_proxy import SfnProxy
from paystep_local.webhook_relay import WebhookRelay
from tests.faults.conftest import SOAK
from tests.faults.harness import Chaos, mix

# A storm outlasts the webhook's three attempts (standard retries back off up to 2 s, then
# 4 s), so an event that meets its start is answered 503; a calm as long lets the
# redeliveries (0.5, 1, 2, 4, 8 s apart) land.
STORM_S = 8.0
CALM_S = 8.0


def _storms(proxy: SfnProxy, stop: threading.Event) -> None:
    while True:
        proxy.throttle(times=1_000_000)
        stopping = stop.wait(STORM_S)
        proxy.clear()
        if stopping or stop.wait(CALM_S):
            return


@pytest.mark.parametrize("count", [24, pytest.param(150, marks=SOAK)])
def test_throttled_callbacks_are_answered_503_and_redelivered(chaos: Chaos, count: int) -> None:
    assert chaos.local.stripe_base and chaos.local.aws_endpoint
    with SfnProxy(chaos.local.aws_endpoint) as sfn:
        webhook = chaos.start_webhook(register=False, env={"AWS_ENDPOINT_URL": sfn.url})
        with WebhookRelay(webhook.urls["webhook"], seed=chaos.seed) as relay:
            chaos.local.register_webhook(relay.url)
            chaos.start_workers(chaos.local.stripe_base)
            stop = threading.Event()
            storms = threading.Thread(target=_storms, args=(sfn, stop), daemon=True)
            storms.start()

            async def scenario() -> None:
                async with chaos.payments(f"sfn throttling x{count}") as payments:
                    await payments.start_all(mix(count), over_s=count * 0.2)
                    stop.set()
                    figures = await payments.check(timeout_s=90 + count)
                await asyncio.to_thread(relay.wait_idle)
                delivered, statuses = relay.stats(), relay.answers()
                chaos.report(
                    figures,
                    throttled_calls=sum(sfn.injected.values()),
                    events=delivered.get("events", 0),
                    answers=statuses,
                    redeliveries=delivered.get("retries", 0),
                    given_up=delivered.get("given_up", 0),
                    unanswered=delivered.get("unanswered", 0),
                )
                assert statuses.get(503, 0) > 0, "no callback was throttled to the end"
                assert set(statuses) <= {200, 503}, f"answers {statuses}"
                assert delivered.get("unanswered", 0) == 0, "deliveries held past the timeout"
                assert delivered.get("given_up", 0) == 0

            try:
                asyncio.run(scenario())
            finally:
                stop.set()
                storms.join(5)
