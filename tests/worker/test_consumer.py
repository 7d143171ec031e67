"""The consumer loop in-process, over the in-memory SQS client: bound, settle, shut down.

The integration tests run the same loop as a process on moto; these pin down the
loop's own rules quickly and deterministically.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import stripe
from prometheus_client import generate_latest

from paystep_local.memory_sqs import MemorySqs
from paystep_local.prometheus import metric
from statemachine import causes, errors
from statemachine.callbacks import CallbackError, CallbackResult
from statemachine.models import Task
from worker.classify import Backoff, RetryPolicy
from worker.consumer import Consumer
from worker.errors import TaskFailure
from worker.metrics import Metrics
from worker.queue import Message, TaskQueue


@dataclass
class RecordingCallbacks:
    failures: list[tuple[str, str]] = field(default_factory=list)
    fail_error: Exception | None = None

    async def fail(self, token: str, error: str, cause: str) -> CallbackResult:
        if self.fail_error is not None:
            raise self.fail_error
        self.failures.append((error, cause))
        return CallbackResult.DELIVERED


def create_body(order: int) -> str:
    return json.dumps(
        {
            "type": "create_payment",
            "task_token": f"token-{order}",
            "execution_id": f"arn:aws:states:us-east-1:1:execution:m:e{order}",
            "state": "CreatePayment",
            "attempt": 1,
            "request": {"order_id": f"o{order}", "amount": 1000, "currency": "usd"},
        }
    )


def loaded(tasks: int) -> tuple[MemorySqs, list[str]]:
    """A queue holding `tasks` create tasks, and their message ids in the order sent."""
    sqs = MemorySqs()
    return sqs, [sqs.send(create_body(order)) for order in range(tasks)]


def consumer(
    sqs: MemorySqs,
    handler: Any,
    *,
    callbacks: RecordingCallbacks | None = None,
    concurrency: int = 8,
    grace_s: float = 5.0,
    visibility_timeout_s: int = 30,
    wait_s: int = 1,
    metrics: Metrics | None = None,
) -> Consumer:
    metrics = metrics or Metrics()
    queue = TaskQueue(
        sqs,
        sqs.url,
        visibility_timeout_s=visibility_timeout_s,
        wait_s=wait_s,
        batch_delay_s=0.02,
        metrics=metrics,
    )
    return Consumer(
        queue,
        handler,
        callbacks or RecordingCallbacks(),  # type: ignore[arg-type]
        concurrency=concurrency,
        shutdown_grace_s=grace_s,
        retry=RetryPolicy(Backoff(base_s=10, max_s=60, random=lambda: 0.0)),
        metrics=metrics,
    )


async def until(check: Callable[[], object], timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def run_until(worker: Consumer, check: Callable[[], object]) -> None:
    """Run the loop until `check()` holds, then shut it down (as on SIGTERM)."""
    loop = asyncio.create_task(worker.run())
    await until(check)
    worker.stop()
    await asyncio.wait_for(loop, 5)


def failing(exc: Exception) -> Any:
    async def handler(task: Task, message: Message) -> str:
        raise exc

    return handler


async def test_tasks_in_flight_stay_within_the_bound_and_deletes_go_in_batches() -> None:
    sqs, _ = loaded(30)
    running, peak = 0, 0

    async def handler(task: Task, message: Message) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return "created"

    await run_until(consumer(sqs, handler, concurrency=5), lambda: len(sqs.deleted) == 30)
    assert peak == 5
    assert sqs.calls["DeleteMessageBatch"] <= 30 // 5
    assert not sqs.messages


async def test_sigterm_finishes_tasks_in_flight_within_the_grace() -> None:
    sqs, _ = loaded(4)
    started = asyncio.Event()

    async def handler(task: Task, message: Message) -> str:
        started.set()
        await asyncio.sleep(0.2)
        return "created"

    await run_until(consumer(sqs, handler), started.is_set)
    assert len(sqs.deleted) == 4
    assert sqs.visibility == []


async def test_what_cannot_finish_within_the_grace_is_handed_back_at_once() -> None:
    sqs, sent = loaded(12)

    async def handler(task: Task, message: Message) -> str:
        await asyncio.Event().wait()  # never finishes
        return "created"

    # 2 running and 2 more received, waiting for a slot: all 4 must go back.
    worker = consumer(sqs, handler, concurrency=2, grace_s=0.1)
    await run_until(worker, lambda: sqs.calls["ReceiveMessage"] >= 2)
    assert sqs.deleted == []
    assert sorted(sqs.visibility) == sorted((message_id, 0) for message_id in sent[:4])
    now = time.monotonic()
    assert all(stored.visible_at <= now for stored in sqs.messages.values())


async def test_a_receive_in_flight_at_sigterm_ends_and_hands_its_message_back_at_once() -> None:
    # GIVEN a consumer sitting in a 20 s long poll on an empty queue
    sqs = MemorySqs()
    handled: list[str] = []

    async def handler(task: Task, message: Message) -> str:
        handled.append(message.message_id)
        return "created"

    worker = consumer(sqs, handler, wait_s=20, visibility_timeout_s=120)
    loop = asyncio.create_task(worker.run())
    await until(lambda: sqs.calls["ReceiveMessage"] == 1)
    # WHEN it is stopped, and a task arrives at once
    worker.stop()
    sent = sqs.send(create_body(1))
    # THEN that receive returns it, and it is handed back (visibility 0) long before
    # the poll's wait or the visibility timeout would end, with no receive after it
    await asyncio.wait_for(sqs.visibility_set(sent, 0), timeout=2)
    await asyncio.wait_for(loop, timeout=2)
    assert handled == []
    assert sqs.calls["ReceiveMessage"] == 1
    assert sqs.messages[sent].visible_at <= time.monotonic()
    again = await sqs.receive_message(QueueUrl=sqs.url, MaxNumberOfMessages=1, WaitTimeSeconds=0)
    assert [message["MessageId"] for message in again["Messages"]] == [sent]


async def test_messages_waiting_for_a_slot_go_back_at_sigterm_not_after_the_grace() -> None:
    sqs, sent = loaded(4)
    started: list[str] = []
    finish = asyncio.Event()

    async def handler(task: Task, message: Message) -> str:
        started.append(message.message_id)
        await finish.wait()  # holds its slot until the test lets it go, within the grace
        return "created"

    # GIVEN 2 tasks running and 2 more received, waiting for a slot
    worker = consumer(sqs, handler, concurrency=2, grace_s=30)
    loop = asyncio.create_task(worker.run())
    await until(lambda: len(started) == 2 and sqs.calls["ReceiveMessage"] >= 2)
    # WHEN the worker is stopped
    worker.stop()
    # THEN the 2 waiting go back at once, while the 2 running keep their grace
    waiting = [message_id for message_id in sent if message_id not in started]
    await asyncio.wait_for(
        asyncio.gather(*(sqs.visibility_set(message_id, 0) for message_id in waiting)), timeout=2
    )
    assert not loop.done()
    finish.set()
    await asyncio.wait_for(loop, timeout=2)
    assert sorted(sqs.deleted) == sorted(started)
    assert sorted(sqs.visibility) == sorted((message_id, 0) for message_id in waiting)


async def test_transient_failure_backs_off_through_visibility() -> None:
    sqs, [first] = loaded(1)
    handler = failing(stripe.APIError("boom", http_status=500))
    await run_until(consumer(sqs, handler), lambda: sqs.visibility)
    assert sqs.visibility == [(first, 5)]
    assert sqs.deleted == []


async def test_task_failure_is_reported_then_deleted() -> None:
    sqs, _ = loaded(1)
    callbacks = RecordingCallbacks()
    handler = failing(TaskFailure(causes.invalid_input("amount: Input should be greater than 0")))
    await run_until(consumer(sqs, handler, callbacks=callbacks), lambda: sqs.deleted)
    assert callbacks.failures == [(errors.INVALID_INPUT, "amount: Input should be greater than 0")]


def refund_body() -> str:
    return json.dumps(
        {
            "type": "refund_payment",
            "task_token": "token-refund",
            "execution_id": "arn:aws:states:us-east-1:1:execution:m:refund",
            "order_id": "o-refund",
            "payment_intent_id": "pi_refused",
        }
    )


def refused(metrics: Metrics, task: str) -> float:
    text = generate_latest(metrics.registry).decode()
    return metric(text, "paystep_worker_refunds_refused_total", default=0, task=task)


async def test_a_refund_stripe_refuses_for_good_is_counted_for_a_person() -> None:
    sqs = MemorySqs()
    sqs.send(refund_body())
    refusal = stripe.InvalidRequestError("charge disputed", None, code="charge_disputed")
    refusal.http_status = 400
    callbacks, metrics = RecordingCallbacks(), Metrics()
    worker = consumer(sqs, failing(refusal), callbacks=callbacks, metrics=metrics)

    await run_until(worker, lambda: sqs.deleted)

    assert [error for error, _ in callbacks.failures] == [errors.REJECTED]
    assert refused(metrics, "refund_payment") == 1


async def test_a_refund_stripe_may_take_later_is_retried_not_counted() -> None:
    sqs = MemorySqs()
    sqs.send(refund_body())
    metrics = Metrics()
    limited = failing(stripe.RateLimitError("slow down", http_status=429))

    await run_until(consumer(sqs, limited, metrics=metrics), lambda: sqs.visibility)

    assert refused(metrics, "refund_payment") == 0


async def test_a_failure_step_functions_did_not_take_is_retried() -> None:
    sqs, [first] = loaded(1)
    callbacks = RecordingCallbacks(fail_error=CallbackError("throttled", code="Throttling"))
    handler = failing(TaskFailure(causes.declined(None, None)))
    await run_until(consumer(sqs, handler, callbacks=callbacks), lambda: sqs.visibility)
    assert sqs.deleted == []
    assert sqs.visibility == [(first, 5)]


async def test_poison_goes_back_for_the_dead_letter_queue_and_the_loop_goes_on() -> None:
    sqs = MemorySqs()
    poison = sqs.send("this is not JSON")
    good = sqs.send(create_body(2))
    handled: list[str] = []

    async def handler(task: Task, message: Message) -> str:
        handled.append(message.message_id)
        return "created"

    await run_until(consumer(sqs, handler), lambda: good in sqs.deleted and sqs.visibility)
    assert handled == [good]
    assert (poison, 0) in sqs.visibility
    assert poison in sqs.messages


async def test_a_long_task_keeps_its_message_invisible() -> None:
    visibility_timeout_s = 2
    sqs, [first] = loaded(1)
    calls = 0

    async def handler(task: Task, message: Message) -> str:
        nonlocal calls
        calls += 1
        # Runs until the consumer extends the lease, which it must do before the
        # visibility runs out; the message is then hidden for a whole timeout again.
        await sqs.visibility_set(first, visibility_timeout_s)
        hidden_for_s = sqs.messages[first].visible_at - time.monotonic()
        assert hidden_for_s > visibility_timeout_s - 0.5
        return "created"

    worker = consumer(sqs, handler, visibility_timeout_s=visibility_timeout_s)
    await run_until(worker, lambda: sqs.deleted)
    assert calls == 1
    assert sqs.deleted == [first]
    assert sqs.messages == {}
