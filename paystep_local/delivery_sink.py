"""A webhook endpoint that records each Stripe delivery, answers 200 and acts on none.

Registered at the Stripe emulator in the webhook's place, it makes a lost
delivery something a test can see happen: the event was delivered and dropped,
rather than "some time passed, so it was probably sent". It runs on its own
thread and loop:

    with DeliverySink() as sink:
        stack.register_webhook(sink.url)
        ...
        event = sink.wait_for(lambda e: e["data"]["object"]["id"] == pi_id, what="...")
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from paystep_local.polling import eventually
from paystep_local.threaded_server import ThreadedServer

Event = dict[str, Any]


class DeliverySink(ThreadedServer):
    url_path = "/sink"

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._events: list[Event] = []

    def events(self) -> list[Event]:
        """Every event delivered so far, in the order they arrived."""
        with self._lock:
            return list(self._events)

    def wait_for(
        self, matches: Callable[[Event], bool], *, timeout_s: float = 30.0, what: str = ""
    ) -> Event:
        """The first delivered event that `matches`, once one arrived."""
        found = eventually(
            lambda: [event for event in self.events() if matches(event)],
            timeout_s=timeout_s,
            interval_s=0.05,
            what=what or "a matching delivery",
        )
        return found[0]

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self._receive)
        return app

    async def _receive(self, request: web.Request) -> web.Response:
        event = json.loads(await request.read())
        with self._lock:
            self._events.append(event)
        self._count("deliveries")
        return web.json_response({"received": True})


def about_payment_intent(intent_id: str, status: str | None = None) -> Callable[[Event], bool]:
    """Matches an event whose object is the PaymentIntent `intent_id` (in `status`)."""

    def matches(event: Event) -> bool:
        obj = event.get("data", {}).get("object", {})
        return bool(obj.get("id") == intent_id and status in (None, obj.get("status")))

    return matches
