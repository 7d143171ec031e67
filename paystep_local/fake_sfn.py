"""A fast local stand-in for Step Functions: the task callbacks and the read APIs, with quotas.

For benchmarks of the services in front of it (the webhook, reconcile): it parses
just enough HTTP/1.1 (keep-alive, Content-Length bodies, as botocore sends them)
and answers each call from memory in microseconds, so the service under test is
what gets measured. moto holds executions too, but not 20,000 of them at this
speed on two cores.

What it models (awsJson 1.0, `X-Amz-Target: AWSStepFunctions.<Action>`):

- `SendTaskSuccess` / `SendTaskFailure` / `SendTaskHeartbeat`: a token given with
  its execution (`Fake.PutExecutions`) is open while that execution runs; success
  or failure closes it and ends the execution (SUCCEEDED, with the output given,
  or FAILED), as the payment's wait does once answered. A closed token, or one
  starting with `closed-`, answers `TaskTimedOut` as Step Functions does
  (https://docs.aws.amazon.com/step-functions/latest/apireference/API_SendTaskSuccess.html);
  any other token `{}` (the webhook benchmark's tokens).
- `ListExecutions` (`stateMachineArn`, `statusFilter`, `maxResults` up to 1,000,
  `nextToken`), newest first by start date
  (https://docs.aws.amazon.com/step-functions/latest/apireference/API_ListExecutions.html).
- `DescribeExecution`: status, dates, input and (SUCCEEDED) output, or
  `ExecutionDoesNotExist`.
- `GetExecutionHistory`: the `ExecutionStarted` event and, once ended, the end event
  (not the states in between), paged the same way.
- Quotas, per account as token buckets
  (https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html#service-limits-api-action-throttling-general):
  `--quotas large` (US East (N. Virginia), US West (Oregon), Europe (Ireland)) or
  `--quotas other` gives each API its bucket size and refill per second from that
  table; `--throttle-per-s R` one SendTask* bucket shared by the three callbacks
  (R a second, a second of burst). Beyond a bucket: `ThrottlingException`.

Control (fake-only targets): `Fake.PutExecutions` with
`{"executions": [{"arn", "stateMachineArn", "status", "startDate", "token", "output"}]}`,
and `Fake.Stats`: calls answered and throttled per action, and SendTask* calls on
the token of an execution that had ended. It prints the SendTask*
counts on SIGTERM.

    python paystep_local/fake_sfn.py --port 9999 [--quotas large] [--throttle-per-s 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from paystep_local.stripe_rate_limits import TokenBucket

SEND_TASK: Final = ("SendTaskSuccess", "SendTaskFailure", "SendTaskHeartbeat")
# (bucket size, refill per second), from the quotas page above.
QUOTAS: Final[dict[str, dict[str, tuple[float, float]]]] = {
    "large": {
        **dict.fromkeys(SEND_TASK, (3000.0, 500.0)),
        "ListExecutions": (200.0, 5.0),
        "DescribeExecution": (300.0, 15.0),
        "GetExecutionHistory": (400.0, 20.0),
    },
    "other": {
        **dict.fromkeys(SEND_TASK, (1500.0, 300.0)),
        "ListExecutions": (100.0, 2.0),
        "DescribeExecution": (250.0, 10.0),
        "GetExecutionHistory": (400.0, 20.0),
    },
}
PAGE_LIMIT: Final = 1000
ENDED: Final = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"})


def _response(status: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.0\r\n"
        f"x-amzn-RequestId: fake\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


OK: Final = _response("200 OK", b"{}")


def _error(code: str, message: str) -> bytes:
    return _response("400 Bad Request", json.dumps({"__type": code, "message": message}).encode())


CLOSED: Final = _error("TaskTimedOut", "Provided task does not exist anymore")
THROTTLED: Final = _error("ThrottlingException", "Rate exceeded")


class Quota:
    """The account's SendTask* bucket (one second of burst); None: no quota."""

    def __init__(self, rate_per_s: float | None) -> None:
        self.bucket = None if rate_per_s is None else TokenBucket(rate_per_s)
        self.throttled = 0

    def take(self) -> bool:
        if self.bucket is None or self.bucket.has_token():
            if self.bucket is not None:
                self.bucket.take()
            return True
        self.throttled += 1
        return False


@dataclass
class Execution:
    arn: str
    state_machine_arn: str
    status: str
    start_date: float
    token: str | None = None
    output: str | None = None
    stop_date: float | None = None

    def listed(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "executionArn": self.arn,
            "stateMachineArn": self.state_machine_arn,
            "name": self.arn.rsplit(":", 1)[-1],
            "status": self.status,
            "startDate": self.start_date,
        }
        if self.stop_date is not None:
            found["stopDate"] = self.stop_date
        return found


@dataclass
class Store:
    """The executions, their open tokens, and each API's bucket."""

    executions: dict[str, Execution] = field(default_factory=dict)
    by_token: dict[str, Execution] = field(default_factory=dict)
    newest_first: list[Execution] = field(default_factory=list)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    answered: Counter[str] = field(default_factory=Counter)
    throttled: Counter[str] = field(default_factory=Counter)
    on_ended: int = 0
    """SendTask* calls on the token of an execution that had ended."""

    def put(self, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            execution = Execution(
                arn=entry["arn"],
                state_machine_arn=entry.get("stateMachineArn", ""),
                status=entry.get("status", "RUNNING"),
                start_date=float(entry.get("startDate", time.time())),
                token=entry.get("token"),
                output=entry.get("output"),
            )
            if execution.status in ENDED:
                execution.stop_date = execution.start_date
            self.executions[execution.arn] = execution
            if execution.token:
                self.by_token[execution.token] = execution
        self.newest_first = sorted(self.executions.values(), key=lambda e: -e.start_date)

    def admit(self, action: str) -> bool:
        bucket = self.buckets.get(action)
        if bucket is None or bucket.has_token():
            if bucket is not None:
                bucket.take()
            self.answered[action] += 1
            return True
        self.throttled[action] += 1
        return False

    def answer(self, action: str, request: dict[str, Any]) -> bytes:
        if action in SEND_TASK:
            return self._callback(action, str(request.get("taskToken", "")))
        if action == "ListExecutions":
            return self._list(request)
        if action == "DescribeExecution":
            execution = self.executions.get(str(request.get("executionArn")))
            if execution is None:
                return _error("ExecutionDoesNotExist", "Execution Does Not Exist")
            described = execution.listed()
            described["input"] = "{}"
            if execution.status == "SUCCEEDED" and execution.output is not None:
                described["output"] = execution.output
            return _response("200 OK", json.dumps(described).encode())
        if action == "GetExecutionHistory":
            return self._history(request)
        if action == "Fake.PutExecutions":
            self.put(request.get("executions", []))
            return OK
        if action == "Fake.Stats":
            stats = {
                "answered": dict(self.answered),
                "throttled": dict(self.throttled),
                "on_ended": {"SendTask": self.on_ended},
            }
            return _response("200 OK", json.dumps(stats).encode())
        return OK  # ListStateMachines and the like: nothing to say

    def _callback(self, action: str, token: str) -> bytes:
        execution = self.by_token.get(token)
        if execution is not None and execution.status in ENDED:
            self.on_ended += 1
            return CLOSED
        if token.startswith("closed-"):
            return CLOSED
        if execution is not None and action != "SendTaskHeartbeat":
            execution.status = "SUCCEEDED" if action == "SendTaskSuccess" else "FAILED"
            execution.stop_date = time.time()
        return OK

    def _list(self, request: dict[str, Any]) -> bytes:
        machine = request.get("stateMachineArn")
        status = request.get("statusFilter")
        limit = min(int(request.get("maxResults") or 100), PAGE_LIMIT)
        start = int(request.get("nextToken") or 0)
        found: list[dict[str, Any]] = []
        position = start
        while position < len(self.newest_first) and len(found) < limit:
            execution = self.newest_first[position]
            if execution.state_machine_arn == machine and status in (None, execution.status):
                found.append(execution.listed())
            position += 1
        page: dict[str, Any] = {"executions": found}
        if position < len(self.newest_first):
            page["nextToken"] = str(position)
        return _response("200 OK", json.dumps(page).encode())

    def _history(self, request: dict[str, Any]) -> bytes:
        execution = self.executions.get(str(request.get("executionArn")))
        if execution is None:
            return _error("ExecutionDoesNotExist", "Execution Does Not Exist")
        events: list[dict[str, Any]] = [
            {"timestamp": execution.start_date, "type": "ExecutionStarted", "id": 1,
             "previousEventId": 0}
        ]  # fmt: skip
        if execution.status in ENDED:
            end = {"SUCCEEDED": "ExecutionSucceeded", "FAILED": "ExecutionFailed",
                   "TIMED_OUT": "ExecutionTimedOut", "ABORTED": "ExecutionAborted"}  # fmt: skip
            events.append({"timestamp": execution.stop_date, "type": end[execution.status],
                           "id": 2, "previousEventId": 1})  # fmt: skip
        return _response("200 OK", json.dumps({"events": events}).encode())


class FakeStepFunctions(asyncio.Protocol):
    calls = 0
    quota = Quota(None)
    store = Store()

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            action = ""
            for line in bytes(self._buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                lowered = name.strip().lower()
                if lowered == b"content-length":
                    length = int(value)
                elif lowered == b"x-amz-target":
                    action = value.strip().decode().removeprefix("AWSStepFunctions.")
            if len(self._buffer) < end + 4 + length:
                return
            body = bytes(self._buffer[end + 4 : end + 4 + length])
            del self._buffer[: end + 4 + length]
            assert self._transport is not None
            self._transport.write(self._answer(action, body))

    @classmethod
    def _answer(cls, action: str, body: bytes) -> bytes:
        store = cls.store
        if action in SEND_TASK and not cls.quota.take():
            return THROTTLED
        if not store.admit(action):
            return THROTTLED
        if action in SEND_TASK:
            cls.calls += 1
        return store.answer(action, json.loads(body or b"{}"))


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeStepFunctions, host, port, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()
    counts = {"answered": FakeStepFunctions.calls, "throttled": FakeStepFunctions.quota.throttled}
    print(json.dumps(counts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--throttle-per-s", type=float, help="one SendTask* quota, calls/s")
    parser.add_argument("--quotas", choices=sorted(QUOTAS), help="every API's bucket, by region")
    args = parser.parse_args()
    FakeStepFunctions.quota = Quota(args.throttle_per_s)
    if args.quotas:
        FakeStepFunctions.store.buckets = {
            action: TokenBucket(refill, burst=size)
            for action, (size, refill) in QUOTAS[args.quotas].items()
        }
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
