"""A small, fast SQS for benchmarks, speaking the AWS JSON 1.0 protocol botocore uses for SQS.

moto's SQS keeps a queue's messages in one list that every receive and delete scans
(https://github.com/getmoto/moto/blob/master/moto/sqs/models.py), so it slows down as
a queue grows past about a thousand messages, which would measure moto instead of
the worker. This one keeps each queue as a deque of visible messages plus a heap of
invisible ones, so receive, delete and visibility changes cost the same at any depth.
It counts every request by operation, which gives the SQS requests per task of a run.

    python -m paystep_local.fake_sqs --port 9324

Point clients at it with `AWS_ENDPOINT_URL_SQS=http://127.0.0.1:9324`. Supported:
CreateQueue, GetQueueUrl, GetQueueAttributes, SendMessage, SendMessageBatch,
ReceiveMessage (long polling, VisibilityTimeout, ApproximateReceiveCount and
SentTimestamp), DeleteMessage(Batch), ChangeMessageVisibility(Batch), PurgeQueue.
No signature check, no FIFO, no redrive. Control: `GET /_stats`,
`POST /_load` with `{"queue": NAME, "bodies": [...]}` (loads without counting requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import json
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from paystep_local import serve

ACCOUNT: Final = "000000000000"
MAX_BATCH: Final = 10


class SqsError(Exception):
    def __init__(self, code: str, message: str, query_code: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.query_code = query_code or code


@dataclass(slots=True)
class Stored:
    message_id: str
    body: str
    md5: str
    sent_at_ms: int
    receive_count: int = 0
    receipt: str = ""
    visible_at: float = 0.0
    deleted: bool = False


@dataclass
class Queue:
    name: str
    visibility_timeout_s: int = 30
    visible: deque[Stored] = field(default_factory=deque)
    invisible: list[tuple[float, int, Stored]] = field(default_factory=list)
    by_receipt: dict[str, Stored] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    order: itertools.count[int] = field(default_factory=itertools.count)

    def put(self, body: str) -> Stored:
        stored = Stored(
            str(uuid.uuid4()),
            body,
            hashlib.md5(body.encode()).hexdigest(),  # SQS's own checksum, not security
            int(time.time() * 1000),
        )
        self.visible.append(stored)
        self.arrived.set()
        return stored

    def _wake_due(self, now: float) -> None:
        while self.invisible and self.invisible[0][0] <= now:
            until, _, stored = heapq.heappop(self.invisible)
            # Only the latest hiding counts: an extension or a release left older entries.
            if not stored.deleted and stored.visible_at == until:
                self.visible.append(stored)

    def take(self, count: int, visibility_timeout_s: int) -> list[Stored]:
        now = time.monotonic()
        self._wake_due(now)
        taken: list[Stored] = []
        while self.visible and len(taken) < count:
            stored = self.visible.popleft()
            if stored.deleted or stored.visible_at > now:
                continue
            stored.receive_count += 1
            self.by_receipt.pop(stored.receipt, None)
            stored.receipt = f"{stored.message_id}#{stored.receive_count}"
            self.by_receipt[stored.receipt] = stored
            self._hide(stored, now + visibility_timeout_s)
            taken.append(stored)
        if not self.visible:
            self.arrived.clear()
        return taken

    async def receive(self, count: int, visibility_timeout_s: int, wait_s: float) -> list[Stored]:
        """Long polling: what is visible now, or the first to arrive or reappear within `wait_s`."""
        deadline = time.monotonic() + wait_s
        while True:
            taken = self.take(count, visibility_timeout_s)
            remaining = deadline - time.monotonic()
            if taken or remaining <= 0:
                return taken
            due = self.next_due_s()
            wait = remaining if due is None else max(0.0, min(remaining, due))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that meets the event being set, and a cancelled long poll would go on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.arrived.wait()

    def _hide(self, stored: Stored, until: float) -> None:
        stored.visible_at = until
        heapq.heappush(self.invisible, (until, next(self.order), stored))

    def next_due_s(self) -> float | None:
        return self.invisible[0][0] - time.monotonic() if self.invisible else None

    def delete(self, receipt: str) -> None:
        stored = self.by_receipt.pop(receipt, None)
        if stored is None:
            raise SqsError("ReceiptHandleIsInvalid", f'The receipt handle "{receipt}" is invalid.')
        stored.deleted = True

    def change_visibility(self, receipt: str, timeout_s: int) -> None:
        stored = self.by_receipt.get(receipt)
        if stored is None:
            raise SqsError("ReceiptHandleIsInvalid", f'The receipt handle "{receipt}" is invalid.')
        if timeout_s == 0:
            stored.visible_at = 0.0
            self.visible.append(stored)
            self.arrived.set()
        else:
            self._hide(stored, time.monotonic() + timeout_s)


class FakeSqs:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.queues: dict[str, Queue] = {}
        self.requests: Counter[str] = Counter()
        self.deleted = 0
        self.sent = 0
        self._ops: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "CreateQueue": self._create_queue,
            "GetQueueUrl": self._get_queue_url,
            "GetQueueAttributes": self._get_queue_attributes,
            "SendMessage": self._send_message,
            "SendMessageBatch": self._send_message_batch,
            "ReceiveMessage": self._receive_message,
            "DeleteMessage": self._delete_message,
            "DeleteMessageBatch": self._delete_message_batch,
            "ChangeMessageVisibility": self._change_visibility,
            "ChangeMessageVisibilityBatch": self._change_visibility_batch,
            "PurgeQueue": self._purge_queue,
        }

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024**2)
        app.router.add_post("/", self._dispatch)
        app.router.add_get("/_stats", self._stats)
        app.router.add_post("/_load", self._load)
        return app

    async def start(self) -> str:
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        return self.url

    def queue_url(self, name: str) -> str:
        return f"{self.url}/{ACCOUNT}/{name}"

    def _queue(self, params: dict[str, Any]) -> Queue:
        name = str(params.get("QueueUrl", "")).rstrip("/").rsplit("/", 1)[-1]
        queue = self.queues.get(name)
        if queue is None:
            raise SqsError(
                "QueueDoesNotExist",
                "The specified queue does not exist.",
                "AWS.SimpleQueueService.NonExistentQueue",
            )
        return queue

    async def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """One SQS action (`ReceiveMessage`), counted: from HTTP, or in-process (MemorySqs)."""
        self.requests[operation] += 1
        handler = self._ops.get(operation)
        if handler is None:
            raise SqsError("InvalidAction", f"{operation} is not supported")
        return await handler(params)

    async def _dispatch(self, request: web.Request) -> web.Response:
        operation = request.headers.get("X-Amz-Target", "").removeprefix("AmazonSQS.")
        try:
            result = await self.call(operation, json.loads(await request.read() or b"{}"))
        except SqsError as exc:
            return web.Response(
                status=400,
                text=json.dumps(
                    {"__type": f"com.amazonaws.sqs#{exc.code}", "message": exc.message}
                ),
                content_type="application/x-amz-json-1.0",
                headers={"x-amzn-query-error": f"{exc.query_code};Sender"},
            )
        return web.Response(
            text=json.dumps(result),
            content_type="application/x-amz-json-1.0",
            headers={"x-amzn-RequestId": str(uuid.uuid4())},
        )

    async def _create_queue(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["QueueName"]
        if name not in self.queues:
            timeout = int(params.get("Attributes", {}).get("VisibilityTimeout", 30))
            self.queues[name] = Queue(name, visibility_timeout_s=timeout)
        return {"QueueUrl": self.queue_url(name)}

    async def _get_queue_url(self, params: dict[str, Any]) -> dict[str, Any]:
        self._queue({"QueueUrl": params["QueueName"]})
        return {"QueueUrl": self.queue_url(params["QueueName"])}

    async def _get_queue_attributes(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(params)
        queue._wake_due(time.monotonic())
        visible = sum(1 for m in queue.visible if not m.deleted)
        return {
            "Attributes": {
                "ApproximateNumberOfMessages": str(visible),
                "ApproximateNumberOfMessagesNotVisible": str(len(queue.by_receipt)),
                "VisibilityTimeout": str(queue.visibility_timeout_s),
                "QueueArn": f"arn:aws:sqs:us-east-1:{ACCOUNT}:{queue.name}",
            }
        }

    async def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        stored = self._queue(params).put(params["MessageBody"])
        self.sent += 1
        return {"MessageId": stored.message_id, "MD5OfMessageBody": stored.md5}

    async def _send_message_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(params)
        successful = []
        for entry in params["Entries"][:MAX_BATCH]:
            stored = queue.put(entry["MessageBody"])
            successful.append(
                {"Id": entry["Id"], "MessageId": stored.message_id, "MD5OfMessageBody": stored.md5}
            )
        self.sent += len(successful)
        return {"Successful": successful, "Failed": []}

    async def _receive_message(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(params)
        count = min(int(params.get("MaxNumberOfMessages", 1)), MAX_BATCH)
        timeout = int(params.get("VisibilityTimeout", queue.visibility_timeout_s))
        taken = await queue.receive(count, timeout, int(params.get("WaitTimeSeconds", 0)))
        return {
            "Messages": [
                {
                    "MessageId": m.message_id,
                    "ReceiptHandle": m.receipt,
                    "MD5OfBody": m.md5,
                    "Body": m.body,
                    "Attributes": {
                        "ApproximateReceiveCount": str(m.receive_count),
                        "SentTimestamp": str(m.sent_at_ms),
                    },
                }
                for m in taken
            ]
        }

    async def _delete_message(self, params: dict[str, Any]) -> dict[str, Any]:
        self._queue(params).delete(params["ReceiptHandle"])
        self.deleted += 1
        return {}

    async def _delete_message_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(params)
        return self._batch(params, lambda entry: queue.delete(entry["ReceiptHandle"]), count=True)

    async def _change_visibility(self, params: dict[str, Any]) -> dict[str, Any]:
        self._queue(params).change_visibility(
            params["ReceiptHandle"], int(params["VisibilityTimeout"])
        )
        return {}

    async def _change_visibility_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(params)
        return self._batch(
            params,
            lambda entry: queue.change_visibility(
                entry["ReceiptHandle"], int(entry["VisibilityTimeout"])
            ),
        )

    def _batch(
        self,
        params: dict[str, Any],
        apply: Callable[[dict[str, Any]], None],
        *,
        count: bool = False,
    ) -> dict[str, Any]:
        successful, failed = [], []
        if len(params["Entries"]) > MAX_BATCH:
            raise SqsError(
                "TooManyEntriesInBatchRequest",
                f"Maximum number of entries per request are {MAX_BATCH}.",
                "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
            )
        for entry in params["Entries"]:
            try:
                apply(entry)
            except SqsError as exc:
                failed.append(
                    {
                        "Id": entry["Id"],
                        "SenderFault": True,
                        "Code": exc.code,
                        "Message": exc.message,
                    }
                )
                continue
            successful.append({"Id": entry["Id"]})
            if count:
                self.deleted += 1
        return {"Successful": successful, "Failed": failed}

    async def _purge_queue(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(params)
        self.queues[queue.name] = Queue(queue.name, visibility_timeout_s=queue.visibility_timeout_s)
        return {}

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response(
            {"requests": dict(self.requests), "deleted": self.deleted, "sent": self.sent}
        )

    async def _load(self, request: web.Request) -> web.Response:
        body = await request.json()
        queue = self.queues[body["queue"]]
        for text in body["bodies"]:
            queue.put(text)
        self.sent += len(body["bodies"])
        return web.json_response({"loaded": len(body["bodies"])})


def main(argv: list[str] | None = None) -> None:
    args = serve.parser("paystep_local.fake_sqs").parse_args(argv)
    serve.serve_forever(lambda: FakeSqs(args.host, args.port))


if __name__ == "__main__":
    main()
