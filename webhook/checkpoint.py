"""Where `paystep reconcile` ended, and what it knows about the tasks it met.

One item of the orders table, key `order_id = "#reconcile"` (an order id is
`[A-Za-z0-9_-]`, so no order can take it; the reconcile role already reads and
updates that table). It holds:

- `checkpoint`: when the last successful listing began (epoch seconds); the next
  run lists from there minus an overlap, for events Stripe creates late;
- `memory` (JSON): per task (a hash of the execution, and the attempt) whether it
  is known closed (a callback was taken or refused as closed: never sent again) or
  open with the time of its last heartbeat; per PaymentIntent of the window whose
  execution has ended, that its keep-or-refund is settled (kept, or a check
  queued), so the overlap does not ask again.

A run forgets what can no longer come back: tasks of executions no longer
running, PaymentIntents created before the window. The item stays far below
DynamoDB's 400 KB (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ServiceQuotas.html#limits-items):
beyond `MAX_MEMORY_CHARS` the oldest entries are dropped, which costs at most a
call Step Functions answers "already closed", never a payment.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from botocore.exceptions import ClientError

KEY: Final = "#reconcile"
MAX_MEMORY_CHARS: Final = 300_000
CLOSED: Final = "closed"
OPEN: Final = "open"
TaskState = Literal["closed", "open"]


def execution_key(execution_arn: str) -> str:
    return hashlib.sha256(execution_arn.encode()).hexdigest()[:16]


def task_key(execution_arn: str, attempt: str) -> str:
    return f"{execution_key(execution_arn)}:{attempt}"


@dataclass
class Memory:
    """What the last runs learnt; `checkpoint` is None before the first run."""

    checkpoint: int | None = None
    tasks: dict[str, tuple[TaskState, int]] = field(default_factory=dict)
    settled: dict[str, int] = field(default_factory=dict)
    """PaymentIntent id -> its `created`: keep-or-refund settled."""

    def is_closed(self, key: str) -> bool:
        return self.tasks.get(key, (OPEN, 0))[0] == CLOSED

    def heartbeat_at(self, key: str) -> int | None:
        state, at = self.tasks.get(key, (CLOSED, 0))
        return at if state == OPEN and key in self.tasks else None

    def close(self, key: str, now: int) -> None:
        self.tasks[key] = (CLOSED, now)

    def heartbeat(self, key: str, now: int) -> None:
        self.tasks[key] = (OPEN, now)

    def forget(self, running: Iterable[str], window_start: int) -> None:
        """Drop tasks of executions not running any more and PaymentIntents before the window."""
        alive = {execution_key(arn) for arn in running}
        self.tasks = {k: v for k, v in self.tasks.items() if k.split(":", 1)[0] in alive}
        self.settled = {pi: created for pi, created in self.settled.items()
                        if created >= window_start}  # fmt: skip

    def dump(self) -> str:
        tasks = sorted(self.tasks.items(), key=lambda item: -item[1][1])
        settled = sorted(self.settled.items(), key=lambda item: -item[1])
        while True:
            text = json.dumps({"tasks": dict(tasks), "settled": dict(settled)},
                              separators=(",", ":"))  # fmt: skip
            if len(text) <= MAX_MEMORY_CHARS:
                return text
            tasks, settled = tasks[: len(tasks) * 9 // 10], settled[: len(settled) * 9 // 10]


class CheckpointStore:
    """The checkpoint item over an injected aioboto3 `dynamodb` client."""

    def __init__(self, dynamodb: Any, orders_table: str) -> None:
        self._ddb = dynamodb
        self._table = orders_table
        self._version = 0

    async def load(self) -> Memory:
        answer = await self._ddb.get_item(
            TableName=self._table, Key={"order_id": {"S": KEY}}, ConsistentRead=True
        )
        item = answer.get("Item")
        if not item:
            return Memory()
        self._version = int(item.get("version", {}).get("N", "0"))
        raw = json.loads(item.get("memory", {}).get("S", "{}"))
        return Memory(
            checkpoint=int(item["checkpoint"]["N"]) if "checkpoint" in item else None,
            tasks={k: (v[0], int(v[1])) for k, v in raw.get("tasks", {}).items()},
            settled={k: int(v) for k, v in raw.get("settled", {}).items()},
        )

    async def save(self, memory: Memory) -> None:
        """Write, unless another run wrote since `load` (then its item stands): raises
        `ClientError` for anything else."""
        values: dict[str, Any] = {
            ":memory": {"S": memory.dump()},
            ":next": {"N": str(self._version + 1)},
            ":version": {"N": str(self._version)},
        }
        update = "SET memory = :memory, version = :next"
        if memory.checkpoint is not None:
            update += ", checkpoint = :checkpoint"
            values[":checkpoint"] = {"N": str(memory.checkpoint)}
        try:
            await self._ddb.update_item(
                TableName=self._table,
                Key={"order_id": {"S": KEY}},
                UpdateExpression=update,
                ConditionExpression="attribute_not_exists(version) OR version = :version",
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            return
        self._version += 1
