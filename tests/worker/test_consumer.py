"""The consumer loop in-process, over an in-memory SQS client: bound, settle, shut down.

The integration tests run the same loop as a process on moto; these pin down the
loop's own rules quickly and deterministically.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import stripe

from statemachine import errors
from statemachine.callbacks import CallbackError, CallbackResult
from statemachine.models import Task
from worker.classify import Backoff, RetryPolicy
from worker.consumer import Consumer
from worker.errors import TaskFailure
from worker.metrics import Metrics
from worker.queue import Message, TaskQueue


@dataclass
class Stored:
    message_id: str
    body: str
    visible_at: float = 0.0
    receive_count: int = 0
    handle: str = ""


@dataclass
class MemorySqs:
    """The four SQS calls the worker makes, on a list, with visibility."""

    messages: dict[str, Stored] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    deleted: list[str] = field(default_factory=list)
    visibility: list[tuple[str, int]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def send(self, body: str) -> str:
        message_id = f"m{next(self._ids)}"
        self.messages[message_id] = Stored(message_id, body)
        return message_id

    def _by_handle(self, handle: str) -> Stored | None:
        return next((m for m in self.messages.values() if m.handle == handle), None)

    async def receive_message(self, **params: Any) -> dict[str, Any]:
        self.calls["ReceiveMessage"] += 1
        deadline = time.monotonic() + params["WaitTimeSeconds"]
        while True:
            now = time.monotonic()
            ready = [m for m in self.messages.values() if m.visible_at <= now]
            ready = ready[: params["MaxNumberOfMessages"]]
            if ready or now >= deadline:
                break
            await asyncio.sleep(0.01)
        answer = []
        for stored in ready:
            stored.receive_count += 1
            stored.handle = f"{stored.message_id}-{stored.receive_count}"
            stored.visible_at = now + params["VisibilityTimeout"]
            answer.append(
                {
                    "MessageId": stored.message_id,
                    "ReceiptHandle": stored.handle,
                    "Body": stored.body,
                    "Attributes": {
                        "ApproximateReceiveCount": str(stored.receive_count),
                        "SentTimestamp": str(int(time.time() * 1000)),
                    },
                }
            )
        return {"Messages": answer} if answer else {}

    async def delete_message_batch(self, **params: Any) -> dict[str, Any]:
        self.calls["DeleteMessageBatch"] += 1
        assert len(params["Entries"]) <= 10
        for entry in params["Entries"]:
            stored = self._by_handle(entry["ReceiptHandle"])
            if stored is not None:
                del self.messages[stored.message_id]
                self.deleted.append(stored.message_id)
        return {"Successful": [{"Id": e["Id"]} for e in params["Entries"]], "Failed": []}

    async def change_message_visibility_batch(self, **params: Any) -> dict[str, Any]:
        self.calls["ChangeMessageVisibilityBatch"] += 1
        assert len(params["Entries"]) <= 10
        for entry in params["Entries"]:
            stored = self._by_handle(entry["ReceiptHandle"])
            if stored is not None:
                stored.visible_at = time.monotonic() + entry["VisibilityTimeout"]
                self.visibility.append((stored.message_id, entry["VisibilityTimeout"]))
        return {"Successful": [{"Id": e["Id"]} for e in params["Entries"]], "Failed": []}


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


def consumer(
    sqs: MemorySqs,
    handler: Any,
    *,
    callbacks: RecordingCallbacks | None = None,
    concurrency: int = 8,
    grace_s: float = 5.0,
    visibility_timeout_s: int = 30,
) -> Consumer:
    metrics = Metrics()
    queue = TaskQueue(
        sqs,
        "memory://tasks",
        visibility_timeout_s=visibility_timeout_s,
        wait_s=1,
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


async def until(check: Any, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_tasks_in_flight_stay_within_the_bound_and_deletes_go_in_batches() -> None:
    sqs = MemorySqs()
    for order in range(30):
        sqs.send(create_body(order))
    running, peak = 0, 0

    async def handler(task: Task, message: Message) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return "created"

    worker = consumer(sqs, handler, concurrency=5)
    loop = asyncio.create_task(worker.run())
    await until(lambda: len(sqs.deleted) == 30)
    worker.stop()
    await loop
    assert peak == 5
    assert sqs.calls["DeleteMessageBatch"] <= 30 // 5
    assert not sqs.messages


async def test_sigterm_finishes_tasks_in_flight_within_the_grace() -> None:
    sqs = MemorySqs()
    for order in range(4):
        sqs.send(create_body(order))
    started = asyncio.Event()

    async def handler(task: Task, message: Message) -> str:
        started.set()
        await asyncio.sleep(0.2)
        return "created"

    worker = consumer(sqs, handler)
    loop = asyncio.create_task(worker.run())
    await started.wait()
    worker.stop()
    await loop
    assert len(sqs.deleted) == 4
    assert sqs.visibility == []


async def test_what_cannot_finish_within_the_grace_is_handed_back_at_once() -> None:
    sqs = MemorySqs()
    for order in range(12):
        sqs.send(create_body(order))
    started = asyncio.Event()

    async def handler(task: Task, message: Message) -> str:
        started.set()
        await asyncio.sleep(3600)
        return "created"

    # 2 running and 2 more received, waiting for a slot: all 4 must go back.
    worker = consumer(sqs, handler, concurrency=2, grace_s=0.1)
    loop = asyncio.create_task(worker.run())
    await started.wait()
    await until(lambda: sqs.calls["ReceiveMessage"] >= 2)
    worker.stop()
    await asyncio.wait_for(loop, 5)
    assert sqs.deleted == []
    assert sorted(sqs.visibility) == [("m0", 0), ("m1", 0), ("m2", 0), ("m3", 0)]
    now = time.monotonic()
    assert all(stored.visible_at <= now for stored in sqs.messages.values())


async def test_transient_failure_backs_off_through_visibility() -> None:
    sqs = MemorySqs()
    sqs.send(create_body(1))

    async def handler(task: Task, message: Message) -> str:
        raise stripe.APIError("boom", http_status=500)

    worker = consumer(sqs, handler)
    loop = asyncio.create_task(worker.run())
    await until(lambda: sqs.visibility)
    worker.stop()
    await loop
    assert sqs.visibility == [("m0", 5)]
    assert sqs.deleted == []


async def test_task_failure_is_reported_then_deleted() -> None:
    sqs = MemorySqs()
    sqs.send(create_body(1))
    callbacks = RecordingCallbacks()

    async def handler(task: Task, message: Message) -> str:
        raise TaskFailure(errors.INVALID_INPUT, "amount: Input should be greater than 0")

    worker = consumer(sqs, handler, callbacks=callbacks)
    loop = asyncio.create_task(worker.run())
    await until(lambda: sqs.deleted)
    worker.stop()
    await loop
    assert callbacks.failures == [(errors.INVALID_INPUT, "amount: Input should be greater than 0")]


async def test_a_failure_step_functions_did_not_take_is_retried() -> None:
    sqs = MemorySqs()
    sqs.send(create_body(1))
    callbacks = RecordingCallbacks(fail_error=CallbackError("throttled", code="Throttling"))

    async def handler(task: Task, message: Message) -> str:
        raise TaskFailure(errors.DECLINED, "{}")

    worker = consumer(sqs, handler, callbacks=callbacks)
    loop = asyncio.create_task(worker.run())
    await until(lambda: sqs.visibility)
    worker.stop()
    await loop
    assert sqs.deleted == []
    assert sqs.visibility == [("m0", 5)]


async def test_poison_goes_back_for_the_dead_letter_queue_and_the_loop_goes_on() -> None:
    sqs = MemorySqs()
    sqs.send("this is not JSON")
    good = sqs.send(create_body(2))
    handled: list[str] = []

    async def handler(task: Task, message: Message) -> str:
        handled.append(message.message_id)
        return "created"

    worker = consumer(sqs, handler)
    loop = asyncio.create_task(worker.run())
    await until(lambda: good in sqs.deleted and sqs.visibility)
    worker.stop()
    await loop
    assert handled == [good]
    assert ("m0", 0) in sqs.visibility
    assert "m0" in sqs.messages


async def test_a_long_task_keeps_its_message_invisible() -> None:
    sqs = MemorySqs()
    sqs.send(create_body(1))
    calls = 0

    async def handler(task: Task, message: Message) -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(3.5)
        return "created"

    worker = consumer(sqs, handler, visibility_timeout_s=2)
    loop = asyncio.create_task(worker.run())
    await until(lambda: sqs.deleted, timeout_s=10)
    worker.stop()
    await loop
    assert calls == 1
    assert sqs.deleted == ["m0"]
    assert ("m0", 2) in sqs.visibility
    assert sqs.messages == {}
