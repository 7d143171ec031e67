"""A fast local stand-in for Step Functions: answers SendTask* (and ListStateMachines) at once.

Only for benchmarks of the services in front of it: it parses just enough
HTTP/1.1 (keep-alive, Content-Length bodies, as botocore sends them) to answer
each request with `{}` and costs a few microseconds per call, so the service
under test is what gets measured. Tokens starting with `closed-` answer
`TaskTimedOut`, as a duplicate event would meet.

With `--throttle-per-s R` it plays the account's SendTask* quota, shared by every
caller: a token bucket of R a second (burst of one second) and, beyond it,
`ThrottlingException` as Step Functions answers
(https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html:
SendTaskSuccess/Failure/Heartbeat refill 500/s in the large regions, 300/s in
others). It prints the calls it answered and throttled on SIGTERM.

    python paystep_local/fake_sfn.py --port 9999 [--throttle-per-s 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Final

from paystep_local.stripe_rate_limits import TokenBucket

OK: Final = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\n"
    b"x-amzn-RequestId: fake\r\nContent-Length: 2\r\n\r\n{}"
)
_CLOSED_BODY: Final = b'{"__type":"TaskTimedOut","message":"Provided task does not exist anymore"}'
CLOSED: Final = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.0\r\n"
    b"x-amzn-RequestId: fake\r\nContent-Length: " + str(len(_CLOSED_BODY)).encode() + b"\r\n\r\n"
    + _CLOSED_BODY
)  # fmt: skip
_THROTTLED_BODY: Final = b'{"__type":"ThrottlingException","message":"Rate exceeded"}'
THROTTLED: Final = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.0\r\n"
    b"x-amzn-RequestId: fake\r\nContent-Length: " + str(len(_THROTTLED_BODY)).encode()
    + b"\r\n\r\n" + _THROTTLED_BODY
)  # fmt: skip


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


class FakeStepFunctions(asyncio.Protocol):
    calls = 0
    quota = Quota(None)

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
            for line in bytes(self._buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self._buffer) < end + 4 + length:
                return
            body = bytes(self._buffer[end + 4 : end + 4 + length])
            del self._buffer[: end + 4 + length]
            assert self._transport is not None
            if not FakeStepFunctions.quota.take():
                self._transport.write(THROTTLED)
                continue
            FakeStepFunctions.calls += 1
            self._transport.write(CLOSED if b'"taskToken": "closed-' in body else OK)


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
    parser.add_argument("--throttle-per-s", type=float, help="the SendTask* quota, calls/s")
    args = parser.parse_args()
    FakeStepFunctions.quota = Quota(args.throttle_per_s)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
