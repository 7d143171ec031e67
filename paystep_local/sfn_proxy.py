"""A fault-injecting HTTP proxy in front of the AWS endpoint (moto), for Step Functions.

Everything is forwarded unchanged, except the calls a rule matches: those get
the AWS error the rule names instead (ThrottlingException by default), or are
forwarded late, a given number of times. It runs on its own thread and loop, so sync and async tests
can both use it:

    with SfnProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        proxy.throttle("SendTaskSuccess", times=3)
        client = session.client("stepfunctions", endpoint_url=proxy.url)
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from paystep_local.threaded_server import ThreadedServer

# The Step Functions JSON protocol names the operation in this header.
TARGET_HEADER = "X-Amz-Target"
TARGET_PREFIX = "AWSStepFunctions."
SEND_TASK_OPERATIONS = ("SendTaskSuccess", "SendTaskFailure", "SendTaskHeartbeat")


@dataclass
class _Rule:
    operations: frozenset[str]
    remaining: int
    status: int | None  # None: forward after `delay_s` instead of answering an error
    code: str = ""
    message: str = ""
    delay_s: float = 0.0


class SfnProxy(ThreadedServer):
    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.upstream = upstream.rstrip("/")
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self.forwarded: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()

    # -- faults --------------------------------------------------------------------------

    def throttle(
        self, operations: str | Iterable[str] = SEND_TASK_OPERATIONS, times: int = 1
    ) -> None:
        """The next `times` matching calls answer ThrottlingException (HTTP 400)."""
        self.fail(
            operations, times, status=400, code="ThrottlingException", message="Rate exceeded"
        )

    def fail(
        self,
        operations: str | Iterable[str] = SEND_TASK_OPERATIONS,
        times: int = 1,
        *,
        status: int = 500,
        code: str = "ServiceUnavailable",
        message: str = "injected by SfnProxy",
    ) -> None:
        names = frozenset([operations] if isinstance(operations, str) else operations)
        with self._lock:
            self._rules.append(_Rule(names, times, status, code, message))

    def delay(
        self,
        operations: str | Iterable[str] = SEND_TASK_OPERATIONS,
        seconds: float = 1.0,
        times: int = 1,
    ) -> None:
        """The next `times` matching calls reach the upstream `seconds` late (a slow AWS)."""
        names = frozenset([operations] if isinstance(operations, str) else operations)
        with self._lock:
            self._rules.append(_Rule(names, times, status=None, delay_s=seconds))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def _take_fault(self, operation: str) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if operation in rule.operations and rule.remaining > 0:
                    rule.remaining -= 1
                    self.injected[operation] += 1
                    return rule
        return None

    # -- the server ----------------------------------------------------------------------

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(auto_decompress=False)

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        operation = request.headers.get(TARGET_HEADER, "").removeprefix(TARGET_PREFIX)
        body = await request.read()
        rule = self._take_fault(operation) if operation else None
        if rule is not None and rule.status is not None:
            return web.Response(
                status=rule.status,
                body=json.dumps({"__type": rule.code, "message": rule.message}).encode(),
                headers={"Content-Type": "application/x-amz-json-1.0"},
            )
        if rule is not None:
            await asyncio.sleep(rule.delay_s)
        self.forwarded[operation or request.path] += 1
        status, payload, reply = await self.forward(self.upstream, request, body)
        return web.Response(status=status, body=payload, headers=reply)
