"""Faults around a real `paystep worker`: Stripe errors, 429 storms, SIGTERM, poison.

GIVEN a fresh deployment on moto and the fake Stripe with faults injected
WHEN the worker runs into them
THEN no task is lost, none is failed that a retry could finish, and the loop goes on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from typing import Any

import pytest

from paystep_common.logging import token_hash
from paystep_local.fake_stripe import FakeStripe, Fault
from paystep_local.polling import eventually
from paystep_local.processes import Workers
from paystep_local.prometheus import metric, scrape
from tests.support.aws import start
from tests.worker.support import FAST_RETRIES, queue_counts, queue_empty, worker_env

pytestmark = pytest.mark.usefixtures("stack")

CREATE = "POST /v1/payment_intents"


def order(**extra: Any) -> dict[str, Any]:
    return {"order_id": f"ord_{uuid.uuid4().hex[:10]}", "amount": 1999, "currency": "usd", **extra}


def statuses(sfn: Any, arns: list[str]) -> set[str]:
    return {sfn.describe_execution(executionArn=arn)["status"] for arn in arns}


def test_stripe_500_then_200_makes_one_payment_intent(
    deployed: dict[str, Any], workers: Workers, fake_stripe: FakeStripe, aws: tuple[Any, Any]
) -> None:
    sfn, sqs = aws
    fake_stripe.add_fault(Fault(kind="error", status=500, times=1))
    worker = workers.start(deployed, fake_stripe.url, **FAST_RETRIES)
    arn = start(sfn, deployed["state_machine_arn"], order(payment_method="pm_card_visa"))

    eventually(lambda: fake_stripe.intents(), what="a PaymentIntent")
    eventually(lambda: queue_empty(sqs, deployed["queue_url"]), what="retried and deleted")
    first, second = fake_stripe.requests(CREATE)
    assert (first.status, second.status) == (500, 200)
    assert first.idempotency_key == second.idempotency_key
    assert len(fake_stripe.intents()) == 1
    assert sfn.describe_execution(executionArn=arn)["status"] == "RUNNING"
    figures = scrape(worker.urls["metrics"])
    assert (
        metric(figures, "paystep_worker_tasks_total", type="create_payment", outcome="retry") == 1
    )
    assert (
        metric(figures, "paystep_worker_tasks_total", type="create_payment", outcome="created") == 1
    )


def test_a_429_storm_slows_the_worker_and_every_task_gets_done(
    deployed: dict[str, Any], workers: Workers, fake_stripe: FakeStripe, aws: tuple[Any, Any]
) -> None:
    sfn, sqs = aws
    fake_stripe.configure(rate_limit_per_s=8, latency_s=0.05)
    arns = [
        start(sfn, deployed["state_machine_arn"], order(payment_method="pm_card_visa"))
        for _ in range(30)
    ]
    eventually(lambda: queue_counts(sqs, deployed["queue_url"])[0] == 30, what="30 tasks queued")
    worker = workers.start(deployed, fake_stripe.url, **FAST_RETRIES)

    eventually(lambda: queue_empty(sqs, deployed["queue_url"]), timeout_s=90, what="all tasks done")
    assert fake_stripe.stats()["rate_limited"] > 0, "the storm happened"
    intents = fake_stripe.intents()
    assert sorted(pi["metadata"]["paystep_execution"] for pi in intents) == sorted(arns)
    assert statuses(sfn, arns) == {"RUNNING"}, "none failed: all wait for the webhook"
    figures = scrape(worker.urls["metrics"])
    assert metric(figures, "paystep_worker_stripe_throttled_total") > 0
    rate = metric(figures, "paystep_worker_stripe_rate_per_s", limiter="payment_intents.create")
    assert rate < 25, "the pace was cut"
    for outcome in ("declined", "rejected", "invalid_input", "failed", "poison"):
        # Counted per outcome once one happens: none happened, so no series exists yet.
        assert metric(figures, "paystep_worker_tasks_total", outcome=outcome, default=0) == 0


def test_sigterm_finishes_the_tasks_in_flight_and_exits_0(
    deployed: dict[str, Any], workers: Workers, fake_stripe: FakeStripe, aws: tuple[Any, Any]
) -> None:
    sfn, sqs = aws
    fake_stripe.configure(latency_s=2.0)
    worker = workers.start(deployed, fake_stripe.url)
    for _ in range(8):
        start(sfn, deployed["state_machine_arn"], order(payment_method="pm_card_visa"))
    eventually(lambda: fake_stripe.stats()["in_flight"] == 8, what="8 Stripe calls in flight")

    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=30) == 0
    assert queue_counts(sqs, deployed["queue_url"]) == (0, 0), "all finished and deleted"
    assert len(fake_stripe.intents()) == 8
    assert any(e["event"] == "worker.drained" for e in worker.log_events())


def test_sigterm_hands_back_what_the_grace_cannot_finish(
    deployed: dict[str, Any], workers: Workers, fake_stripe: FakeStripe, aws: tuple[Any, Any]
) -> None:
    sfn, sqs = aws
    fake_stripe.configure(latency_s=5.0)
    first = workers.start(deployed, fake_stripe.url, PAYSTEP_WORKER_SHUTDOWN_GRACE_S="0.5")
    for _ in range(6):
        start(sfn, deployed["state_machine_arn"], order(payment_method="pm_card_visa"))
    eventually(lambda: fake_stripe.stats()["in_flight"] == 6, what="6 Stripe calls in flight")

    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=30) == 0
    # Handed back with visibility 0, not left to the 120 s visibility timeout.
    assert queue_counts(sqs, deployed["queue_url"]) == (6, 0)

    workers.start(deployed, fake_stripe.url, **FAST_RETRIES)
    eventually(lambda: queue_empty(sqs, deployed["queue_url"]), what="taken over and done")
    assert len(fake_stripe.intents()) == 6


def test_poison_messages_go_to_the_dead_letter_queue_and_the_loop_goes_on(
    deployed: dict[str, Any], workers: Workers, fake_stripe: FakeStripe, aws: tuple[Any, Any]
) -> None:
    sfn, sqs = aws
    secret = "SECRET" + uuid.uuid4().hex * 20
    for body in (
        "<xml>not json</xml>",
        json.dumps({"type": "create_payment", "task_token": secret, "attempt": "first"}),
    ):
        sqs.send_message(QueueUrl=deployed["queue_url"], MessageBody=body)
    worker = workers.start(deployed, fake_stripe.url)
    arn = start(sfn, deployed["state_machine_arn"], order(payment_method="pm_card_visa"))

    eventually(lambda: fake_stripe.intents(), what="the good task handled")
    assert fake_stripe.intents()[0]["metadata"]["paystep_execution"] == arn
    dlq = deployed["dead_letter_queue_url"]
    eventually(lambda: queue_counts(sqs, dlq)[0] == 2, timeout_s=60, what="poison in the DLQ")
    eventually(lambda: queue_empty(sqs, deployed["queue_url"]))
    assert worker.healthy()
    check = subprocess.run(
        [sys.executable, "-m", "worker", "--check"],
        env={**os.environ, **worker_env(deployed, worker)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    log_text = worker.log_path.read_text()
    assert secret not in log_text
    poison = [e for e in worker.log_events() if e["event"] == "message.poison"]
    assert {e["token"] for e in poison} == {None, token_hash(secret)}
