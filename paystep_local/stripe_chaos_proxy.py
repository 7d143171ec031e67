"""A fault-injecting proxy in front of a Stripe emulator that honours `Idempotency-Key`.

localstripe runs the payments but ignores idempotency keys; real Stripe replays
the stored answer of a key. This proxy adds what Stripe does and what a bad
network does, between the worker and the emulator:

- Idempotency as Stripe does it (`paystep_local.idempotency`): the first POST
  with a key is forwarded and its answer stored once the emulator ran it (any
  status below 500 but 409 and 429); the same key and body replay it with
  `Idempotent-Replayed: true`; the same key with another body answers 400
  `idempotency_error`; the same key while the first still runs answers 409
  `idempotency_key_in_use` (with `same_key_in_flight="wait"`: waits and replays).
- the faults of `StripeFaults`: 500s, answers lost after the emulator acted,
  bursts of 429, latency.

Faults are drawn from a seeded random generator and apply to `/v1/` only. It
runs on its own thread and loop, so sync and async tests can both use it:

    with StripeChaosProxy(stack.stripe_base, StripeFaults(error_rate=0.1), seed=7) as proxy:
        worker env PAYSTEP_STRIPE_API_BASE=proxy.url; ...; proxy.stats()
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from aiohttp import web

from paystep_local.idempotency import IdempotencyError, IdempotencyStore, Reply, SameKeyInFlight
from paystep_local.threaded_server import ThreadedServer

JSON: Final = {"Content-Type": "application/json"}


@dataclass
class StripeFaults:
    """What goes wrong between the worker and Stripe."""

    error_rate: float = 0.0
    """Answer 500 `api_error` without forwarding (nothing stored)."""
    lost_answer_rate: float = 0.0
    """Forward, let the emulator act (the key is stored), then hold the answer for
    `lost_answer_hold_s` and close the connection: the client times out on a request
    that succeeded, the case that charges twice when keys are not honoured."""
    lost_answer_hold_s: float = 3.0
    lose_first_answers: int = 0
    """Lose the answers of the first POSTs with a key for certain: a short run meets the
    case too."""
    burst_chance: float = 0.0
    """A request starts a burst of 429 `rate_limit` answers for itself and the next
    `burst_length - 1` requests."""
    burst_length: int = 10
    latency_s: float = 0.0
    """Every forwarded `/v1/` request waits this long first, as Stripe's own confirm takes
    a moment: a process killed meanwhile leaves it in flight."""


class StripeChaosProxy(ThreadedServer):
    # Calls held to lose their answer finish before the server goes.
    stop_timeout_s = 30.0

    def __init__(
        self,
        upstream: str,
        faults: StripeFaults | None = None,
        *,
        same_key_in_flight: SameKeyInFlight = "conflict",
        seed: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(host, seed=seed)
        self.upstream = upstream.rstrip("/")
        self.faults = faults or StripeFaults()
        self._lose_first = self.faults.lose_first_answers
        self._burst_left = 0
        self._keys: IdempotencyStore[bytes] = IdempotencyStore(
            same_key_in_flight=same_key_in_flight
        )

    # -- control -------------------------------------------------------------------------

    def quiet(self) -> None:
        """No more faults; idempotency goes on."""
        with self._lock:
            self.faults = StripeFaults(latency_s=self.faults.latency_s)
            self._burst_left = self._lose_first = 0

    def stats(self) -> dict[str, int]:
        """Counts: requests, forwarded, error_500, lost_answer, rate_limited, bursts, and
        the keys' replayed, conflicts, waits, mismatches."""
        return {**self.counts(), **self._keys.counts()}

    def _draw(self) -> tuple[str | None, bool]:
        """The fault before forwarding (None, "rate_limit", "error"), and whether to lose
        the answer."""
        with self._lock:
            lose = self._random.random() < self.faults.lost_answer_rate
            if self._burst_left > 0:
                self._burst_left -= 1
                return "rate_limit", lose
            if self._random.random() < self.faults.burst_chance:
                self._counts["bursts"] += 1
                self._burst_left = self.faults.burst_length - 1
                return "rate_limit", lose
            if self._random.random() < self.faults.error_rate:
                return "error", lose
            return None, lose

    def _take_first_loss(self, status: int) -> bool:
        with self._lock:
            if self._lose_first > 0 and status < 300:
                self._lose_first -= 1
                return True
            return False

    # -- the server ----------------------------------------------------------------------

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            auto_decompress=False, connector=aiohttp.TCPConnector(limit=200)
        )

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def _runner_options(self) -> dict[str, Any]:
        # A client that gave up must not cancel the emulator call it started: Stripe
        # finishes what it received.
        return {"handler_cancellation": False, "shutdown_timeout": 1.0}

    def _site_options(self) -> dict[str, Any]:
        return {"backlog": 1024}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self._count("requests")
        if not request.path.startswith("/v1/"):
            status, payload, headers = await self._forward(request, body)
            return web.Response(status=status, body=payload, headers=headers)
        fault, lose = self._draw()
        if fault == "rate_limit":
            self._count("rate_limited")
            return _stripe_error(
                429, "invalid_request_error", "Request rate limit exceeded.", "rate_limit"
            )
        if fault == "error":
            self._count("error_500")
            return _stripe_error(500, "api_error", "An unknown error occurred (injected).")
        if self.faults.latency_s:
            await asyncio.sleep(self.faults.latency_s)
        key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
        if key is None:
            status, payload, headers = await self._forward(request, body)
        else:
            status, payload, headers = await self._idempotent(key, request, body)
            lose = lose or self._take_first_loss(status)
        if lose and status < 500:
            self._count("lost_answer")
            await asyncio.sleep(self.faults.lost_answer_hold_s)
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        return web.Response(status=status, body=payload, headers=headers)

    async def _idempotent(
        self, key: str, request: web.Request, body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        async def call() -> Reply[bytes]:
            status, payload, headers = await self._forward(request, body)
            return Reply(status, payload, {**headers, "Idempotency-Key": key})

        fingerprint = hashlib.sha256(
            request.method.encode() + b" " + request.path_qs.encode() + b"\n" + body
        ).hexdigest()
        try:
            reply = await self._keys.run(key, fingerprint, call)
        except IdempotencyError as refused:
            return refused.status, json.dumps(refused.body).encode(), dict(JSON)
        return reply.status, reply.body, dict(reply.headers)

    async def _forward(
        self, request: web.Request, body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        self._count("forwarded")
        return await self.forward(self.upstream, request, body)


def _stripe_error(status: int, type_: str, message: str, code: str | None = None) -> web.Response:
    error: dict[str, str] = {"type": type_, "message": message}
    if code is not None:
        error["code"] = code
    return web.json_response({"error": error}, status=status)
