"""A webhook endpoint that relays each signed Stripe delivery to the real webhook, badly.

Registered at the Stripe emulator in place of the webhook, it answers the
emulator 200 at once and delivers the same bytes with the same
`Stripe-Signature` (the body is unchanged, so the signature stays valid) to
`target`:

- `copies` times, each after its own random delay: up to `max_delay_s`, or for
  a `late_share` of the copies between `late_delay_s[0]` and `late_delay_s[1]`,
  so copies of one event overtake each other and later events overtake earlier ones;
- a copy answered with anything but 2xx, or not answered within
  `answer_timeout_s` (counted as unanswered), is delivered again after
  `retry_delays_s[0]`, `[1]`, ... as Stripe redelivers, and counted as given up
  when they run out.

`stats()` counts events received, deliveries made, retries, copies unanswered
and given up, and inversions (a copy delivered after a copy of an event that
arrived later); `answers()` counts deliveries by the status they got. It runs
on its own thread and loop:

    with WebhookRelay(webhook_url, copies=3, max_delay_s=1.0, late_share=0.3) as relay:
        stack.register_webhook(relay.url); ...; relay.wait_idle(); relay.answers()
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

import aiohttp
from aiohttp import web

from paystep_local.polling import eventually
from paystep_local.threaded_server import ThreadedServer

FORWARDED_HEADERS = ("Content-Type", "Stripe-Signature")


class WebhookRelay(ThreadedServer):
    stop_timeout_s = 30.0
    url_path = "/relay"

    def __init__(
        self,
        target: str,
        *,
        copies: int = 1,
        max_delay_s: float = 0.0,
        late_share: float = 0.0,
        late_delay_s: tuple[float, float] = (2.0, 4.0),
        retry_delays_s: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0),
        answer_timeout_s: float = 15.0,
        seed: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(host, seed=seed)
        self.target = target
        self.copies = copies
        self.max_delay_s = max_delay_s
        self.late_share = late_share
        self.late_delay_s = late_delay_s
        self.retry_delays_s = tuple(retry_delays_s)
        self.answer_timeout_s = answer_timeout_s
        self._statuses: Counter[int] = Counter()
        self._received = 0
        self._latest_delivered = -1
        self._pending = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # -- figures -------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """events, deliveries, retries, unanswered, given_up, inversions, pending."""
        with self._lock:
            return {**self._counts, "pending": self._pending}

    def answers(self) -> dict[int, int]:
        """Deliveries by the status they were answered with."""
        with self._lock:
            return dict(sorted(self._statuses.items()))

    def wait_idle(self, timeout_s: float = 120.0) -> None:
        """Until every copy received so far is delivered or given up."""
        eventually(
            lambda: self.stats()["pending"] == 0,
            timeout_s=timeout_s,
            interval_s=0.1,
            what="the relay to deliver or give up every copy",
        )

    # -- the server ----------------------------------------------------------------------

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.answer_timeout_s))

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self._receive)
        return app

    async def _before_stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {
            name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers
        }
        with self._lock:
            sequence = self._received
            self._received += 1
            self._counts["events"] += 1
            self._pending += self.copies
        for _ in range(self.copies):
            task = asyncio.create_task(self._deliver(sequence, body, headers, self._delay_s()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response({"relayed": self.copies})

    def _delay_s(self) -> float:
        with self._lock:
            if self._random.random() < self.late_share:
                return self._random.uniform(*self.late_delay_s)
            return self._random.uniform(0.0, self.max_delay_s)

    async def _deliver(
        self, sequence: int, body: bytes, headers: dict[str, str], delay_s: float
    ) -> None:
        try:
            await asyncio.sleep(delay_s)
            with self._lock:
                if sequence < self._latest_delivered:
                    self._counts["inversions"] += 1
                self._latest_delivered = max(self._latest_delivered, sequence)
            for retry_in_s in (*self.retry_delays_s, None):
                if await self._post(body, headers):
                    return
                if retry_in_s is None:
                    self._count("given_up")
                    return
                self._count("retries")
                await asyncio.sleep(retry_in_s)
        finally:
            with self._lock:
                self._pending -= 1

    async def _post(self, body: bytes, headers: dict[str, str]) -> bool:
        assert self._session is not None
        self._count("deliveries")
        try:
            async with self._session.post(self.target, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            self._count("unanswered")
            return False
        with self._lock:
            self._statuses[status] += 1
        return 200 <= status < 300
