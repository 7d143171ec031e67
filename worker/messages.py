"""Decode a task message at the edge: a typed task, or `PoisonMessage`."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from common.logging import token_hash
from statemachine.models import TASK_ADAPTER, Task, describe_validation_error
from worker.errors import PoisonMessage
from worker.queue import Message


def decode(message: Message) -> Task:
    """The task in the message body; raises `PoisonMessage` for anything else.

    A body with a token but a malformed envelope is poison too: it comes from a
    state machine this worker does not match (a deploy skew), and a fixed worker
    can still run it from the dead-letter queue, which failing the task could not undo.
    """
    try:
        return TASK_ADAPTER.validate_json(message.body)
    except ValidationError as exc:
        raw = _loads(message.body)
        if raw is None:
            raise PoisonMessage("body is not JSON") from None
        token = raw.get("task_token") if isinstance(raw, dict) else None
        raise PoisonMessage(
            f"not a paystep task: {describe_validation_error(exc)}",
            token_hash=token_hash(token) if isinstance(token, str) and token else None,
        ) from None


def _loads(body: str) -> Any | None:
    try:
        return json.loads(body)
    except ValueError:
        return None
