"""The task queue: long-poll receives, and deletes / visibility changes sent in batches.

Deletes and visibility changes are queued and sent ten at a time (or after a short
delay): under load that is one request per ten tasks. A delete that never goes out
(the process died) only means a redelivery, which the handlers absorb.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from worker.metrics import Metrics

log = structlog.get_logger("paystep.worker")

# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/quotas-messages.html
SQS_MAX_BATCH: Final = 10
RECEIVE_ATTRIBUTES: Final = ["ApproximateReceiveCount", "SentTimestamp"]
# A long poll answers within its WaitTimeSeconds
# (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-short-and-long-polling.html);
# this much more covers the round trip before a receive counts as unanswered.
RECEIVE_SLACK_S: Final = 2

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Message:
    """One received SQS message; the receipt handle is this receive's, not the message's."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    sent_at_s: float

    @classmethod
    def from_sqs(cls, raw: dict[str, Any]) -> Message:
        attributes = raw.get("Attributes", {})
        return cls(
            message_id=raw["MessageId"],
            receipt_handle=raw["ReceiptHandle"],
            body=raw.get("Body", ""),
            receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
            sent_at_s=int(attributes.get("SentTimestamp", 0)) / 1000,
        )


class Batcher(Generic[T]):
    """Collects entries and hands them to `send` in batches of `size`, or after `delay_s`."""

    def __init__(
        self, send: Callable[[list[T]], Coroutine[Any, Any, None]], *, delay_s: float, size: int
    ) -> None:
        self._send = send
        self._delay_s = delay_s
        self._size = size
        self._pending: list[T] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def add(self, entry: T) -> None:
        self._pending.append(entry)
        if len(self._pending) >= self._size or self._delay_s == 0:
            self._send_pending()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay_s, self._send_pending)

    async def flush(self) -> None:
        """Send what is pending now and wait for every batch still on its way."""
        self._send_pending()
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    def _send_pending(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            batch, self._pending = self._pending[: self._size], self._pending[self._size :]
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)


class TaskQueue:
    """One SQS queue, over an injected aioboto3 `sqs` client."""

    def __init__(
        self,
        sqs: Any,
        url: str,
        *,
        visibility_timeout_s: int,
        wait_s: int,
        batch_delay_s: float,
        metrics: Metrics,
    ) -> None:
        self._sqs = sqs
        self.url = url
        self.visibility_timeout_s = visibility_timeout_s
        self.wait_s = wait_s
        self._metrics = metrics
        self._deletes: Batcher[Message] = Batcher(
            self._delete_batch, delay_s=batch_delay_s, size=SQS_MAX_BATCH
        )
        self._changes: Batcher[tuple[Message, int, str]] = Batcher(
            self._change_visibility_batch, delay_s=batch_delay_s, size=SQS_MAX_BATCH
        )

    @property
    def answer_within_s(self) -> int:
        """How long a receive may take before it counts as unanswered."""
        return self.wait_s + RECEIVE_SLACK_S

    async def receive(self, max_messages: int) -> list[Message]:
        """Long-poll up to `max_messages`; raises on SQS errors (the caller backs off)."""
        self._metrics.sqs_requests.labels("ReceiveMessage").inc()
        try:
            response = await self._sqs.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=min(max_messages, SQS_MAX_BATCH),
                WaitTimeSeconds=self.wait_s,
                VisibilityTimeout=self.visibility_timeout_s,
                MessageSystemAttributeNames=RECEIVE_ATTRIBUTES,
            )
        except (BotoCoreError, ClientError):
            self._metrics.receives.labels("error").inc()
            raise
        messages = [Message.from_sqs(raw) for raw in response.get("Messages", [])]
        self._metrics.receives.labels("messages" if messages else "empty").inc()
        self._metrics.received.inc(len(messages))
        return messages

    async def send(self, body: str, *, delay_s: int = 0) -> None:
        """One new message, visible after `delay_s` (SQS allows at most 900 s)."""
        self._metrics.sqs_requests.labels("SendMessage").inc()
        await self._sqs.send_message(QueueUrl=self.url, MessageBody=body, DelaySeconds=delay_s)

    def delete(self, message: Message) -> None:
        self._deletes.add(message)

    def change_visibility(self, message: Message, timeout_s: int, *, reason: str) -> None:
        self._changes.add((message, timeout_s, reason))

    async def flush(self) -> None:
        await asyncio.gather(self._deletes.flush(), self._changes.flush())

    async def _delete_batch(self, messages: list[Message]) -> None:
        entries = [
            {"Id": str(index), "ReceiptHandle": message.receipt_handle}
            for index, message in enumerate(messages)
        ]
        failed = await self._send_batch("DeleteMessageBatch", entries, messages)
        self._metrics.deletes.labels("ok").inc(len(messages) - len(failed))
        self._metrics.deletes.labels("failed").inc(len(failed))

    async def _change_visibility_batch(self, changes: list[tuple[Message, int, str]]) -> None:
        entries = [
            {
                "Id": str(index),
                "ReceiptHandle": message.receipt_handle,
                "VisibilityTimeout": timeout,
            }
            for index, (message, timeout, _) in enumerate(changes)
        ]
        failed = await self._send_batch(
            "ChangeMessageVisibilityBatch", entries, [message for message, _, _ in changes]
        )
        for index, (_, _, reason) in enumerate(changes):
            result = "failed" if str(index) in failed else "ok"
            self._metrics.visibility_changes.labels(reason, result).inc()

    async def _send_batch(
        self, operation: str, entries: list[dict[str, Any]], messages: Sequence[Message]
    ) -> set[str]:
        """Ids of the entries that failed; logs them (a failed entry means a redelivery)."""
        self._metrics.sqs_requests.labels(operation).inc()
        method = (
            "delete_message_batch"
            if operation == "DeleteMessageBatch"
            else ("change_message_visibility_batch")
        )
        try:
            response = await getattr(self._sqs, method)(QueueUrl=self.url, Entries=entries)
        except (BotoCoreError, ClientError) as exc:
            log.error(
                "sqs.batch_failed", operation=operation, messages=len(entries), error=str(exc)
            )
            return {entry["Id"] for entry in entries}
        failed: set[str] = set()
        for failure in response.get("Failed", []):
            failed.add(failure["Id"])
            log.warning(
                "sqs.entry_failed",
                operation=operation,
                message_id=messages[int(failure["Id"])].message_id,
                code=failure.get("Code"),
            )
        return failed
