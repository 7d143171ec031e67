"""The callback client tells a process which callbacks Step Functions did not take.

A task already closed (TaskTimedOut, InvalidToken, TaskDoesNotExist) is an expected
answer, not a failure (https://docs.aws.amazon.com/step-functions/latest/apireference/API_SendTaskSuccess.html#API_SendTaskSuccess_Errors).
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from statemachine.callbacks import CONNECTION_FAILED, CallbackError, CallbackResult, Callbacks


class Refusing:
    """A `stepfunctions` client whose every SendTask* call raises `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def send_task_heartbeat(self, **_: Any) -> None:
        raise self.error

    async def send_task_failure(self, **_: Any) -> None:
        raise self.error


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "SendTaskHeartbeat")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (client_error("ThrottlingException"), "ThrottlingException"),
        (client_error("AccessDeniedException"), "AccessDeniedException"),
        (EndpointConnectionError(endpoint_url="https://states"), CONNECTION_FAILED),
    ],
)
async def test_a_callback_not_taken_is_told_with_its_action_and_code(
    error: Exception, code: str
) -> None:
    told: list[tuple[str, str]] = []
    callbacks = Callbacks(Refusing(error), on_failure=lambda *seen: told.append(seen))

    with pytest.raises(CallbackError):
        await callbacks.heartbeat("token")

    assert told == [("heartbeat", code)]


@pytest.mark.parametrize("code", ["TaskTimedOut", "InvalidToken", "TaskDoesNotExist"])
async def test_a_closed_task_is_no_failure(code: str) -> None:
    told: list[tuple[str, str]] = []
    callbacks = Callbacks(Refusing(client_error(code)), on_failure=lambda *seen: told.append(seen))

    assert await callbacks.fail("token", "Payment.Declined", "{}") is CallbackResult.ALREADY_CLOSED
    assert told == []
