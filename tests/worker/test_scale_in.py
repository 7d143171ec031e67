"""Scale-in on the local stack: a worker stopped by SIGTERM strands no message.

GIVEN a real `paystep worker` sitting in a 20 s long poll, its messages hidden for 120 s
WHEN it gets SIGTERM (a KEDA scale-in, a rollout) and tasks arrive at once
THEN another worker creates every PaymentIntent within seconds, not after the
visibility timeout: the receive in flight was let finish and what it brought went
straight back to the queue (visibility 0).
"""

from __future__ import annotations

import signal
import time
import uuid
from typing import Any, Final

import pytest

from paystep_local.fake_stripe import FakeStripe
from paystep_local.polling import eventually
from paystep_local.processes import ManagedProcess, Workers
from paystep_local.prometheus import metric, scrape
from tests.support.aws import start
from tests.worker.support import queue_empty

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("stack")]

# A message stranded by a dropped receive reappears only after VISIBILITY_S: the
# deadline is far below it, so such a message misses it by minutes.
VISIBILITY_S: Final = 120
DEADLINE_S: Final = 10
LONG_POLL: Final = {
    "PAYSTEP_WORKER_POLL_WAIT_S": "20",
    "PAYSTEP_WORKER_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
}


def order() -> dict[str, Any]:
    request = {"order_id": f"ord_{uuid.uuid4().hex[:10]}", "amount": 1999, "currency": "usd"}
    return {**request, "payment_method": "pm_card_visa"}


def in_first_long_poll(worker: ManagedProcess) -> bool:
    """Its first ReceiveMessage is sent and not answered: it has 20 s still to wait."""
    figures = scrape(worker.urls["metrics"])
    sent = metric(figures, "paystep_worker_sqs_requests_total", operation="ReceiveMessage")
    return sent == 1 and metric(figures, "paystep_worker_sqs_receives_total", default=0) == 0


def intents_by_execution(fake_stripe: FakeStripe) -> dict[str, int]:
    counts: dict[str, int] = {}
    for intent in fake_stripe.intents():
        execution = intent["metadata"]["paystep_execution"]
        counts[execution] = counts.get(execution, 0) + 1
    return counts


def drained(worker: ManagedProcess) -> dict[str, Any]:
    [event] = [e for e in worker.log_events() if e["event"] == "worker.drained"]
    return event


def test_a_task_sent_at_sigterm_reaches_the_next_worker_within_seconds(
    deployed: dict[str, Any], workers: Workers, fake_stripe: FakeStripe, aws: tuple[Any, Any]
) -> None:
    sfn, sqs = aws
    first = workers.start(deployed, fake_stripe.url, **LONG_POLL)
    eventually(lambda: in_first_long_poll(first), what="the first worker in its long poll")

    first.process.send_signal(signal.SIGTERM)
    sent_at = time.monotonic()
    arn = start(sfn, deployed["state_machine_arn"], order())
    # Its long poll returns with the task, which goes back at once: it exits long before
    # the 20 s wait would have ended.
    assert first.process.wait(timeout=DEADLINE_S) == 0
    assert drained(first)["released"] == 1, "the receive in flight brought the task"

    workers.start(deployed, fake_stripe.url, **LONG_POLL)
    eventually(
        lambda: arn in intents_by_execution(fake_stripe),
        timeout_s=DEADLINE_S - (time.monotonic() - sent_at),
        interval_s=0.05,
        what="the PaymentIntent, by the next worker",
    )
    print(f"PaymentIntent {time.monotonic() - sent_at:.2f} s after SIGTERM")
    eventually(lambda: queue_empty(sqs, deployed["queue_url"]), what="the task deleted")
    assert intents_by_execution(fake_stripe) == {arn: 1}


def test_tasks_around_a_sigterm_under_load_each_get_one_payment_intent_within_seconds(
    deployed: dict[str, Any], workers: Workers, fake_stripe: FakeStripe, aws: tuple[Any, Any]
) -> None:
    sfn, sqs = aws
    fake_stripe.configure(latency_s=1.0)
    first = workers.start(deployed, fake_stripe.url, **LONG_POLL)
    machine = deployed["state_machine_arn"]
    before = [start(sfn, machine, order()) for _ in range(4)]
    eventually(lambda: fake_stripe.stats()["in_flight"] == 4, what="4 Stripe calls in flight")

    first.process.send_signal(signal.SIGTERM)
    sent_at = time.monotonic()
    after = [start(sfn, machine, order()) for _ in range(4)]
    workers.start(deployed, fake_stripe.url, **LONG_POLL)

    eventually(
        lambda: set(intents_by_execution(fake_stripe)) == {*before, *after},
        timeout_s=DEADLINE_S,
        interval_s=0.05,
        what="a PaymentIntent for each of the 8 tasks",
    )
    print(f"8 PaymentIntents {time.monotonic() - sent_at:.2f} s after SIGTERM")
    assert first.process.wait(timeout=30) == 0
    eventually(lambda: queue_empty(sqs, deployed["queue_url"]), what="all 8 deleted")
    assert intents_by_execution(fake_stripe) == {arn: 1 for arn in [*before, *after]}
