"""Decode a task message at the edge: a typed task, or `PoisonMessage`."""

from __future__ import annotations

import json

from pydantic import ValidationError

from paystep_common.logging import token_hash
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
        try:
            raw = json.loads(message.body)
        except ValueError:
            raise PoisonMessage("body is not JSON") from None
        except RecursionError:
            # json.loads recurses once per level of nesting, and 256 KiB of brackets is far
            # deeper than the stack: without this the message retried as an unexpected error.
            raise PoisonMessage("body is JSON nested too deeply to be a task") from None
        token = raw.get("task_token") if isinstance(raw, dict) else None
        raise PoisonMessage(
            f"not a paystep task: {describe_validation_error(exc)}",
            token_hash=token_hash(token) if isinstance(token, str) and token else None,
        ) from None
