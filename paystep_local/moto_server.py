"""moto in server mode, closer to AWS where paystep depends on it.

- Task tokens: AWS's run to 2048 characters while moto's are 36-character UUIDs;
  a local stack with short tokens would hide every bug of the metadata codec, so
  moto's Step Functions issues tokens of 1,000-2,048 base64 characters.
- SendTaskFailure: moto's HTTP layer drops the `cause` parameter, so every
  failed execution would lose the reason (decline code, invalid field) that
  callers read; the cause is passed through as AWS does.
- A task that already has its outcome: moto keeps accepting callbacks on its
  token while the execution runs on; AWS answers `TaskTimedOut` ("Provided task
  does not exist anymore"), which is what duplicate Stripe events must meet.
  The same for a task that timed out, where moto answers as if the call had worked.
- An outcome that comes before the wait began: moto sends the SQS message, then
  arms the task's heartbeat, then waits on the heartbeat alone. A worker that
  answers within that moment (invalid input needs no Stripe call) set the outcome
  on an endpoint without a heartbeat yet, so the wait slept until the heartbeat
  timed out (four days by default) and then reported a heartbeat timeout. The
  new heartbeat is woken at once when the outcome is already there.

- DynamoDB writes: moto serves requests on threads and checks a condition, then
  writes, unlocked, so two concurrent transactions on one item can both pass their
  conditions (two executions both claiming an order) or lose an update. DynamoDB
  isolates transactions from every other write (serializable:
  https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html#transaction-isolation);
  moto's writes take one lock here.

Then it runs the ordinary moto server.

    python -m paystep_local.moto_server --port 5000 [--short-tokens]
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets


def aws_length_token() -> str:
    length = 1000 + secrets.randbelow(1049)
    raw = base64.b64encode(secrets.token_bytes(length)).decode()
    return raw[:length]


def _keep_failure_cause() -> None:
    from moto.core.responses import EmptyResult
    from moto.stepfunctions.responses import StepFunctionResponse

    def send_task_failure(self: StepFunctionResponse) -> EmptyResult:
        # With execution on, the backend is moto's ASL parser backend, which takes `cause`.
        self.stepfunction_backend.send_task_failure(  # type: ignore[call-arg]
            self._get_param("taskToken"),
            error=self._get_param("error"),
            cause=self._get_param("cause"),
        )
        return EmptyResult()

    StepFunctionResponse.send_task_failure = send_task_failure  # type: ignore[method-assign]


def _close_answered_tasks() -> None:
    import threading

    from moto.core.exceptions import AWSError
    from moto.stepfunctions.parser.asl.eval.callback.callback import (
        CallbackOutcome,
        CallbackPoolManager,
    )

    notify, heartbeat = CallbackPoolManager.notify, CallbackPoolManager.heartbeat
    lock = threading.Lock()  # moto serves requests on threads: check and notify as one step

    def refuse_if_closed(pool: CallbackPoolManager, callback_id: str) -> None:
        endpoint = pool.get(callback_id)
        # The task sets this event when it takes an outcome or stops waiting (timeout,
        # heartbeat timeout); moto keeps the endpoint in the pool after either.
        if endpoint is not None and endpoint._notify_event.is_set():
            raise AWSError(
                "Task Timed Out: 'Provided task does not exist anymore'", "TaskTimedOut", 400
            )

    def notify_once(self: CallbackPoolManager, callback_id: str, outcome: CallbackOutcome) -> bool:
        with lock:
            refuse_if_closed(self, callback_id)
            answered: bool = notify(self, callback_id, outcome)
            return answered

    def heartbeat_while_open(self: CallbackPoolManager, callback_id: str) -> bool:
        with lock:
            refuse_if_closed(self, callback_id)
            alive: bool = heartbeat(self, callback_id)
            return alive

    CallbackPoolManager.notify = notify_once  # type: ignore[method-assign]
    CallbackPoolManager.heartbeat = heartbeat_while_open  # type: ignore[method-assign]


def _keep_early_outcomes() -> None:
    from moto.stepfunctions.parser.asl.eval.callback.callback import (
        CallbackEndpoint,
        HeartbeatEndpoint,
    )

    setup = CallbackEndpoint.setup_heartbeat_endpoint

    def setup_after_outcome(self: CallbackEndpoint, heartbeat_seconds: int) -> HeartbeatEndpoint:
        heartbeat: HeartbeatEndpoint = setup(self, heartbeat_seconds)
        # notify() sets the event and then wakes the heartbeat it finds; this sets the
        # heartbeat and then looks at the event: whichever runs second wakes the wait.
        if self._notify_event.is_set():
            heartbeat.notify()  # type: ignore[no-untyped-call]
        return heartbeat

    CallbackEndpoint.setup_heartbeat_endpoint = setup_after_outcome  # type: ignore[method-assign]


def _serialize_dynamodb_writes() -> None:
    import functools
    import threading
    from collections.abc import Callable
    from typing import Any

    from moto.dynamodb.models import DynamoDBBackend

    lock = threading.RLock()

    def locked(write: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(write)
        def one_at_a_time(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return write(*args, **kwargs)

        return one_at_a_time

    for name in ("transact_write_items", "update_item", "put_item", "delete_item",
                 "batch_write_item"):  # fmt: skip
        setattr(DynamoDBBackend, name, locked(getattr(DynamoDBBackend, name)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m paystep_local.moto_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--short-tokens", action="store_true", help="keep moto's UUID tokens")
    args = parser.parse_args(argv)
    # The running state machine calls SQS, DynamoDB and SNS at localhost:$MOTO_PORT.
    os.environ["MOTO_PORT"] = str(args.port)
    if not args.short_tokens:
        from moto.stepfunctions.parser.asl.eval import states

        states.long_uid = aws_length_token  # type: ignore[attr-defined]
    _keep_failure_cause()
    _close_answered_tasks()
    _keep_early_outcomes()
    _serialize_dynamodb_writes()
    from moto.server import main as moto_main

    moto_main(["-H", args.host, "-p", str(args.port)])


if __name__ == "__main__":
    main()
