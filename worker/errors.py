"""What a task can raise besides the clients' own errors; `classify` decides what each means."""

from __future__ import annotations

from statemachine.causes import Failure


class PoisonMessage(Exception):
    """The message is not a task this worker can run (not JSON, no usable token).

    `token_hash` names the token when the body carried one; the token itself never
    leaves the message.
    """

    def __init__(self, reason: str, *, token_hash: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.token_hash = token_hash


class TaskFailure(Exception):
    """The task cannot succeed and retrying will not change that: fail it with `failure`."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.error}: {failure.cause}")
        self.failure = failure
