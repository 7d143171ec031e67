"""The consumer loop: receive, handle each task on its own within a bound, settle its message.

    while not stopping:
        batch = await self._receive()        # long-poll, 10 at a time
        for message in batch:
            await self._slot()               # at most `concurrency` tasks in flight
            self._start(message)             # handle -> delete, fail + delete, or back off

Shutdown (`stop()`, on SIGTERM) in order: stop receiving; let the receive in flight
end and hand what it brought back to the queue (visibility 0) at once, with every
message still waiting for a slot; meanwhile let the tasks in flight finish within
the grace period, counted from `stop()`; cancel what is left; hand every message
still held back (visibility 0) so another worker takes it at once; send the deletes
and visibility changes still batched; return.

The receive in flight is let finish rather than cancelled. SQS has no call that
ends a long poll early, and a message it picks for a request is invisible from that
moment (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-short-and-long-polling.html):
cancelling the request only drops the answer, and the messages in it would wait out
the whole visibility timeout (120 s) before any worker saw them. Letting the poll
finish costs at most its WaitTimeSeconds, and it returns as soon as a message
arrives, which is then made visible again at once with ChangeMessageVisibility 0
(https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ChangeMessageVisibility.html).
A shorter wait, so that every poll could end inside any grace, would cost empty
receives all day for the sake of a rare shutdown; the pod's grace covers the wait
instead. The receive and the tasks end side by side: the drain takes max(poll wait,
grace) plus the release calls, which `WorkerSettings.shutdown_budget_s` states and
the pod's terminationGracePeriodSeconds must exceed. Only a receive that SQS leaves
unanswered past its wait (plus `RECEIVE_SLACK_S`) is cancelled, so the drain still
ends before the kubelet's SIGKILL.

A message handed back this way counts one receive more (ApproximateReceiveCount),
which the redrive policy's maxReceiveCount of 20 absorbs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from paystep_common.logging import token_hash
from statemachine import errors
from statemachine.callbacks import CallbackError, CallbackResult, Callbacks
from statemachine.models import RefundPaymentTask, Task, WaitingTask
from worker.classify import DeadLetter, FailTask, Retry, RetryPolicy
from worker.leases import Leases
from worker.messages import decode
from worker.metrics import Metrics
from worker.queue import SQS_MAX_BATCH, Message, TaskQueue

log = structlog.get_logger("paystep.worker")

Handler = Callable[[Task, Message], Awaitable[str]]

FAILURE_OUTCOMES: Final = {
    errors.DECLINED: "declined",
    errors.REJECTED: "rejected",
    errors.INVALID_INPUT: "invalid_input",
}
# A poison message goes back at once: nothing will fix it, so the redrive policy
# should move it to the dead-letter queue after maxReceiveCount receives, not hours.
POISON_VISIBILITY_S: Final = 0


class Consumer:
    def __init__(
        self,
        queue: TaskQueue,
        handler: Handler,
        callbacks: Callbacks,
        *,
        concurrency: int,
        shutdown_grace_s: float,
        retry: RetryPolicy,
        metrics: Metrics,
    ) -> None:
        self._queue = queue
        self._handler = handler
        self._callbacks = callbacks
        self._concurrency = concurrency
        self._shutdown_grace_s = shutdown_grace_s
        self._retry_policy = retry
        self._metrics = metrics
        self._leases = Leases(queue.visibility_timeout_s)
        self._tasks: set[asyncio.Task[None]] = set()
        # Set when a task ends or the shutdown begins: wakes an intake waiting for a slot.
        self._slot_or_stop = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stopped_at = 0.0
        self._released = 0
        self._intake: asyncio.Task[None] | None = None
        self._receive_failures = 0

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Begin the shutdown (idempotent; safe from a signal handler)."""
        if not self._stopping.is_set():
            log.info(
                "worker.stopping",
                in_flight=len(self._tasks),
                held=len(self._leases),
                grace_s=self._shutdown_grace_s,
                receive_within_s=self._queue.answer_within_s,
            )
            self._stopped_at = time.monotonic()
            self._stopping.set()
            self._slot_or_stop.set()

    async def alive(self) -> bool:
        """Liveness: the intake loop runs (the probe itself proves the event loop turns)."""
        return self._intake is not None and (not self._intake.done() or self._stopping.is_set())

    async def ready(self) -> bool:
        """Readiness: receiving, and the last receive did not fail."""
        return await self.alive() and not self._stopping.is_set() and self._receive_failures == 0

    async def run(self) -> None:
        """Consume until `stop()`, then shut down in order."""
        self._intake = asyncio.create_task(self._take_in(), name="intake")
        keeper = asyncio.create_task(self._keep_leases(), name="leases")
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({self._intake, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if self._intake.done() and not self._intake.cancelled():
                self._intake.result()  # the intake ends only after stop(): surface its error
        finally:
            stopping.cancel()
            self.stop()
            await asyncio.shield(self._shutdown(keeper))

    async def _shutdown(self, keeper: asyncio.Task[None]) -> None:
        if self._intake is not None:
            receive_deadline = self._stopped_at + self._queue.answer_within_s
            _, unanswered = await asyncio.wait({self._intake}, timeout=_left(receive_deadline))
            for intake in unanswered:
                # SQS did not answer within the wait: give up on that receive, so the drain
                # still ends before the pod is killed (its messages, if any, wait out
                # their visibility timeout).
                intake.cancel()
                log.warning("sqs.receive_abandoned", after_s=self._queue.answer_within_s)
            await asyncio.gather(self._intake, return_exceptions=True)
        if self._tasks:
            grace_deadline = self._stopped_at + self._shutdown_grace_s
            _, unfinished = await asyncio.wait(self._tasks, timeout=_left(grace_deadline))
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            if unfinished:
                log.warning("worker.tasks_cancelled", count=len(unfinished))
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await self._hand_back(self._leases.release_all())
        log.info("worker.drained", released=self._released)

    async def _hand_back(self, messages: list[Message]) -> None:
        """Make `messages` visible to other workers at once, and send that now."""
        for message in messages:
            self._leases.settle(message)
            self._queue.change_visibility(message, 0, reason="release")
        self._released += len(messages)
        await self._queue.flush()

    # -- intake --------------------------------------------------------------------------

    async def _take_in(self) -> None:
        """Receive and start tasks until `stop()`; a receive in flight ends, never dropped."""
        batch_size = min(SQS_MAX_BATCH, self._concurrency)
        while not self._stopping.is_set():
            batch = await self._receive(batch_size)
            for index, message in enumerate(batch):
                if not await self._slot():
                    await self._hand_back(batch[index:])
                    break
                self._start(message)

    async def _receive(self, batch_size: int) -> list[Message]:
        try:
            batch = await self._queue.receive(batch_size)
        except Exception as exc:
            self._receive_failures += 1
            delay_s = self._retry_policy.receive_error_delay_s(self._receive_failures)
            log.error("sqs.receive_failed", error=str(exc), retry_in_s=delay_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await self._stopping.wait()
            return []
        self._receive_failures = 0
        for message in batch:
            self._leases.hold(message)
        return batch

    async def _slot(self) -> bool:
        """Wait until fewer than `concurrency` tasks run; False once stopping."""
        while len(self._tasks) >= self._concurrency and not self._stopping.is_set():
            self._slot_or_stop.clear()
            await self._slot_or_stop.wait()
        return not self._stopping.is_set()

    def _start(self, message: Message) -> None:
        task = asyncio.create_task(self._handle(message))
        self._tasks.add(task)
        self._metrics.in_flight.set(len(self._tasks))
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_or_stop.set()
        self._metrics.in_flight.set(len(self._tasks))

    async def _keep_leases(self) -> None:
        """Extend the visibility of messages whose task runs long."""
        interval_s = max(0.5, self._leases.visibility_timeout_s / 6)
        while True:
            await asyncio.sleep(interval_s)
            for message in self._leases.due():
                self._queue.change_visibility(
                    message, self._leases.visibility_timeout_s, reason="extend"
                )

    # -- one message ---------------------------------------------------------------------

    async def _handle(self, message: Message) -> None:
        # Each asyncio task runs in its own copy of the context: these bindings stay its own.
        structlog.contextvars.bind_contextvars(message_id=message.message_id)
        task: Task | None = None
        try:
            task = decode(message)
            structlog.contextvars.bind_contextvars(
                task=task.type,
                execution=task.execution_id,
                token=token_hash(task.task_token) if isinstance(task, WaitingTask) else None,
                receive_count=message.receive_count,
            )
            outcome = await self._handler(task, message)
            self._delete(message)
        except Exception as exc:
            outcome = await self._settle_failure(message, task, exc)
        self._metrics.tasks.labels(task.type if task else "unknown", outcome).inc()

    async def _settle_failure(self, message: Message, task: Task | None, exc: Exception) -> str:
        match self._retry_policy.decide(exc, message.receive_count):
            case FailTask(error=error, cause=cause) if isinstance(task, WaitingTask):
                return await self._fail_task(message, task, error, cause)
            case Retry() as decision:
                self._retry(message, decision, exc)
                return "retry"
            case DeadLetter(reason=reason) | FailTask(cause=reason):
                # (A task failure needs a task that waits: without one the message is poison.)
                log.error(
                    "message.poison",
                    reason=reason,
                    token=getattr(exc, "token_hash", None),
                    receive_count=message.receive_count,
                )
                self._leases.settle(message)
                self._queue.change_visibility(message, POISON_VISIBILITY_S, reason="poison")
                return "poison"

    async def _fail_task(self, message: Message, task: WaitingTask, error: str, cause: str) -> str:
        try:
            result = await self._callbacks.fail(task.task_token, error, cause)
        except CallbackError as exc:
            # Step Functions did not take the failure: settled like any other error.
            return await self._settle_failure(message, task, exc)
        log.warning(
            "task.failed",
            error=error,
            cause=cause,
            already_closed=result is CallbackResult.ALREADY_CLOSED,
        )
        if isinstance(task, RefundPaymentTask):
            # Stripe refused it for good (the classifier retries what a retry can change):
            # the execution ends Payment.RefundFailed and the money stays with us.
            self._metrics.refunds_refused.labels(task.type).inc()
        self._delete(message)
        return FAILURE_OUTCOMES.get(error, "failed")

    def _retry(self, message: Message, decision: Retry, exc: Exception) -> None:
        log.warning(
            "task.retry",
            reason=decision.reason,
            retry_in_s=decision.delay_s,
            exc_info=None if decision.expected else exc,
        )
        self._leases.settle(message)
        self._queue.change_visibility(message, decision.delay_s, reason="retry")

    def _delete(self, message: Message) -> None:
        self._leases.settle(message)
        self._queue.delete(message)


def _left(deadline: float) -> float:
    """Seconds from now until `deadline` (a `time.monotonic()` value), at least 0."""
    return max(0.0, deadline - time.monotonic())
