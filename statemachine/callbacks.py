"""Resume a waiting execution: SendTaskSuccess / SendTaskFailure / SendTaskHeartbeat.

A callback on a task that is already closed (duplicate delivery, an event that
arrives after the execution moved on) is an expected outcome, not an error: it
answers `CallbackResult.ALREADY_CLOSED`. Throttling is retried by the SDK client
as its profile in `paystep_common.retry` says (adaptive in the worker, which can
wait; standard in the webhook, which answers Stripe promptly); anything still
failing after that raises `CallbackError`, and is told to `on_failure` (a process
counts them: a person looks once they keep coming).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

from statemachine.models import dump_json

# https://docs.aws.amazon.com/step-functions/latest/apireference/API_SendTaskFailure.html
MAX_ERROR_CHARS: Final = 256
MAX_CAUSE_CHARS: Final = 32_768
CLOSED_TASK_ERRORS: Final = frozenset({"TaskTimedOut", "InvalidToken", "TaskDoesNotExist"})
THROTTLING_ERRORS: Final = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
)
ACTIONS: Final = {
    "send_task_success": "succeed",
    "send_task_failure": "fail",
    "send_task_heartbeat": "heartbeat",
}
CONNECTION_FAILED: Final = "connection"
"""The code of a call that got no answer from Step Functions (a `BotoCoreError`)."""

FailureObserver = Callable[[str, str], None]
"""Told `(action, code)` of each callback Step Functions did not take."""


class CallbackResult(enum.Enum):
    DELIVERED = "delivered"
    ALREADY_CLOSED = "already_closed"


class CallbackError(Exception):
    """Step Functions could not take the callback; retrying later may help."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def throttled(self) -> bool:
        return self.code in THROTTLING_ERRORS


class Callbacks:
    """SendTask* over an injected aioboto3 `stepfunctions` client."""

    def __init__(self, sfn_client: Any, *, on_failure: FailureObserver | None = None) -> None:
        self._sfn = sfn_client
        self._on_failure = on_failure

    async def succeed(self, token: str, output: BaseModel) -> CallbackResult:
        return await self._send("send_task_success", taskToken=token, output=dump_json(output))

    async def fail(self, token: str, error: str, cause: str) -> CallbackResult:
        return await self._send(
            "send_task_failure",
            taskToken=token,
            error=error[:MAX_ERROR_CHARS],
            cause=cause[:MAX_CAUSE_CHARS],
        )

    async def heartbeat(self, token: str) -> CallbackResult:
        return await self._send("send_task_heartbeat", taskToken=token)

    async def _send(self, operation: str, **params: str) -> CallbackResult:
        try:
            await getattr(self._sfn, operation)(**params)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in CLOSED_TASK_ERRORS:
                return CallbackResult.ALREADY_CLOSED
            self._failed(operation, code or "unknown")
            raise CallbackError(f"{operation} failed: {code or exc}", code=code) from exc
        except BotoCoreError as exc:
            self._failed(operation, CONNECTION_FAILED)
            raise CallbackError(f"{operation} failed: {exc}") from exc
        return CallbackResult.DELIVERED

    def _failed(self, operation: str, code: str) -> None:
        if self._on_failure is not None:
            self._on_failure(ACTIONS[operation], code)
