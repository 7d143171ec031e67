"""A fast local stand-in for Step Functions: answers SendTask* (and ListStateMachines) at once.

Only for benchmarks of the services in front of it: it parses just enough
HTTP/1.1 (keep-alive, Content-Length bodies, as botocore sends them) to answer
each request with `{}` and costs a few microseconds per call, so the service
under test is what gets measured. Tokens starting with `closed-` answer
`TaskTimedOut`, as a duplicate event would meet.

    python paystep_local/fake_sfn.py --port 9999
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Final

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


class FakeStepFunctions(asyncio.Protocol):
    calls = 0

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
            FakeStepFunctions.calls += 1
            assert self._transport is not None
            self._transport.write(CLOSED if b'"taskToken": "closed-' in body else OK)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeStepFunctions, host, port, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
