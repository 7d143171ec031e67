"""The SQS fake in-process: an aioboto3-shaped client of one queue, without HTTP.

It runs the same actions as `fake_sqs.FakeSqs` (long polling, visibility, receive
counts, batches of at most ten), called directly, and records what the consumer
did to each message, so a test can run the worker's loop in one event loop.

    sqs = MemorySqs()
    first = sqs.send(body)
    queue = TaskQueue(sqs, sqs.url, ...)
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from paystep_local.fake_sqs import FakeSqs, Queue, Stored


class MemorySqs:
    """The four SQS calls the worker makes, with every delete and visibility change recorded."""

    def __init__(self, name: str = "tasks") -> None:
        self._fake = FakeSqs()
        self._queue = Queue(name)
        self._fake.queues[name] = self._queue
        self.url = self._fake.queue_url(name)
        self.deleted: list[str] = []
        self.visibility: list[tuple[str, int]] = []
        self._changed = asyncio.Event()

    @property
    def calls(self) -> Counter[str]:
        """Requests by action (`ReceiveMessage`)."""
        return self._fake.requests

    @property
    def messages(self) -> dict[str, Stored]:
        """Messages not deleted, by id."""
        queue = self._queue
        return {
            m.message_id: m for m in (*queue.visible, *queue.by_receipt.values()) if not m.deleted
        }

    def send(self, body: str) -> str:
        return self._queue.put(body).message_id

    async def visibility_set(self, message_id: str, timeout_s: int) -> None:
        """Wait until the visibility of `message_id` was set to `timeout_s`."""
        while (message_id, timeout_s) not in self.visibility:
            self._changed.clear()
            await self._changed.wait()

    async def receive_message(self, **params: Any) -> dict[str, Any]:
        return await self._fake.call("ReceiveMessage", params)

    async def delete_message_batch(self, **params: Any) -> dict[str, Any]:
        targets = self._targets(params)
        answer = await self._fake.call("DeleteMessageBatch", params)
        self.deleted += [targets[done["Id"]].message_id for done in answer["Successful"]]
        return answer

    async def change_message_visibility_batch(self, **params: Any) -> dict[str, Any]:
        targets = self._targets(params)
        answer = await self._fake.call("ChangeMessageVisibilityBatch", params)
        timeouts = {entry["Id"]: int(entry["VisibilityTimeout"]) for entry in params["Entries"]}
        self.visibility += [
            (targets[done["Id"]].message_id, timeouts[done["Id"]]) for done in answer["Successful"]
        ]
        self._changed.set()
        return answer

    def _targets(self, params: dict[str, Any]) -> dict[str, Stored]:
        # Read before the call: a delete forgets the receipt handle.
        by_receipt = self._queue.by_receipt
        return {
            entry["Id"]: by_receipt[entry["ReceiptHandle"]]
            for entry in params["Entries"]
            if entry["ReceiptHandle"] in by_receipt
        }
