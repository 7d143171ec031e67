"""An aiohttp server and client session running on a loop of their own thread.

The base of the test proxies and relays, so sync and async tests can both use
them: `start()` returns the URL, `stop()` (or the `with` block) cleans up.
Subclasses give the app and the session, and may tune the runner and site; they
draw their faults from `_random` (seeded, so a run can be replayed) and count
what they did with `_count`, read back by `counts()`.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from typing import Any, Final, Self

import aiohttp
from aiohttp import web

# Headers that belong to one connection, not to the request being relayed.
HOP_BY_HOP: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding"}
)


class ThreadedServer:
    stop_timeout_s: float = 10.0
    url_path: str = ""

    def __init__(self, host: str = "127.0.0.1", *, seed: int = 0, port: int = 0) -> None:
        self._host = host
        self._port = port
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    # -- what a subclass provides --------------------------------------------------------

    def _new_session(self) -> aiohttp.ClientSession | None:
        """The client session of a server that forwards; None for one that only answers."""
        return None

    def _app(self) -> web.Application:
        raise NotImplementedError

    def _runner_options(self) -> dict[str, Any]:
        return {}

    def _site_options(self) -> dict[str, Any]:
        return {}

    async def _before_stop(self) -> None:
        return None

    async def forward(
        self, upstream: str, request: web.Request, body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        """Send `request` on to `upstream` unchanged: its status, body and headers."""
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._session.request(
            request.method, upstream + request.path_qs, headers=headers, data=body
        ) as answer:
            payload = await answer.read()
            reply = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            return answer.status, payload, reply

    # -- the server ----------------------------------------------------------------------

    def start(self) -> str:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self.url

    def stop(self) -> None:
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._stop(), self._loop)
            future.result(self.stop_timeout_s)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> str:
        self._session = self._new_session()
        self._runner = web.AppRunner(self._app(), access_log=None, **self._runner_options())
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, **self._site_options())
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://{self._host}:{port}{self.url_path}"

    async def _stop(self) -> None:
        await self._before_stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
