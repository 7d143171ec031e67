"""Stripe's rate limiters for the fake Stripe: one account-wide bucket and one per endpoint.

https://docs.stripe.com/rate-limits: an account may make 100 requests/s in live
mode (25 in a sandbox) and each endpoint (a named operation such as
`POST /v1/payment_intents`) about 25/s; a request over either gets
`429 Too Many Requests` with the error body
`{"error": {"type": "invalid_request_error", "code": "rate_limit", ...}}` and a
`Stripe-Rate-Limited-Reason` header naming the limiter that refused it:
`global-rate`, `endpoint-rate`, `global-concurrency`, `endpoint-concurrency` or
`resource-specific`. These are the two rate limiters, each a token bucket whose
burst is one second of its rate; with `search_per_s`, the Search API's own limit
(20 read requests/s, on the same page) is a third bucket,
for `GET /v1/payment_intents/search` alone, refused as `endpoint-rate`.

    limits = StripeRateLimits(global_per_s=100, endpoint_per_s=25)
    limits.install(app, delay=fake.answer_delay)   # middleware + control routes

Limits change at run time (`configure`, or `POST /_fake/rate_limits` with JSON
`{"global_per_s": 50, "endpoint_per_s": 12.5}`; null switches a limiter off).
`GET /_fake/rate_limits` answers the limits, the counts by reason and, with
`?since=T`, the timeline since wall-clock time T: `[time, route, status, key]`
per request, where status is 200 (admitted and answered 2xx), the answer's
status, or the reason it was refused.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

REASON_HEADER: Final = "Stripe-Rate-Limited-Reason"
GLOBAL_RATE: Final = "global-rate"
ENDPOINT_RATE: Final = "endpoint-rate"
RATE_LIMITED_BODY: Final = {
    "error": {
        "type": "invalid_request_error",
        "code": "rate_limit",
        "message": "Request rate limit exceeded. Learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
    }
}
CONTROL_PATH: Final = "/_fake/rate_limits"
SEARCH_ROUTE: Final = "GET /v1/payment_intents/search"


@dataclass
class TokenBucket:
    """`rate_per_s` tokens a second, at most one second's worth saved up."""

    rate_per_s: float
    tokens: float = field(init=False)
    at: float = field(init=False)
    clock: Callable[[], float] = time.monotonic
    burst: float | None = None
    """Tokens saved up at most (AWS quotas name a bucket size); None: one second's worth."""

    def __post_init__(self) -> None:
        self.tokens = self.capacity
        self.at = self.clock()

    @property
    def capacity(self) -> float:
        return self.rate_per_s if self.burst is None else self.burst

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate_per_s)
        self.at = now

    def has_token(self) -> bool:
        self._refill()
        return self.tokens >= 1.0

    def take(self) -> None:
        self.tokens -= 1.0

    def set_rate(self, rate_per_s: float) -> None:
        self._refill()
        self.rate_per_s = rate_per_s
        self.tokens = min(self.tokens, self.capacity)


class StripeRateLimits:
    """The account's bucket and one bucket per route; `admit(route)` says which refused."""

    def __init__(
        self,
        *,
        global_per_s: float | None = None,
        endpoint_per_s: float | None = None,
        search_per_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._search = None if search_per_s is None else TokenBucket(search_per_s, clock=clock)
        self._global: TokenBucket | None = None
        self._endpoint_per_s: float | None = None
        self._endpoints: dict[str, TokenBucket] = {}
        self.refused: Counter[str] = Counter()
        self.timeline: list[tuple[float, str, int | str, str | None]] = []
        self.configure(global_per_s=global_per_s, endpoint_per_s=endpoint_per_s)

    @property
    def enabled(self) -> bool:
        return (
            self._global is not None or self._endpoint_per_s is not None or self._search is not None
        )

    def configure(self, *, global_per_s: float | None, endpoint_per_s: float | None) -> None:
        with self._lock:
            if global_per_s is None:
                self._global = None
            elif self._global is None:
                self._global = TokenBucket(global_per_s, clock=self._clock)
            else:
                self._global.set_rate(global_per_s)
            self._endpoint_per_s = endpoint_per_s
            if endpoint_per_s is None:
                self._endpoints.clear()
            for bucket in self._endpoints.values():
                bucket.set_rate(endpoint_per_s or 0.0)

    def admit(self, route: str) -> str | None:
        """None if both buckets had a token for `route` (both are spent), else the reason."""
        with self._lock:
            endpoint = None
            if self._endpoint_per_s is not None:
                endpoint = self._endpoints.get(route)
                if endpoint is None:
                    endpoint = TokenBucket(self._endpoint_per_s, clock=self._clock)
                    self._endpoints[route] = endpoint
            search = self._search if route == SEARCH_ROUTE else None
            # A request refused by one limiter spends no token of the others.
            if self._global is not None and not self._global.has_token():
                self.refused[GLOBAL_RATE] += 1
                return GLOBAL_RATE
            for bucket in (endpoint, search):
                if bucket is not None and not bucket.has_token():
                    self.refused[ENDPOINT_RATE] += 1
                    return ENDPOINT_RATE
            for spent in (self._global, endpoint, search):
                if spent is not None:
                    spent.take()
            return None

    def record(self, route: str, status: int | str, key: str | None) -> None:
        with self._lock:
            self.timeline.append((time.time(), route, status, key))

    def state(self, since: float | None = None) -> dict[str, Any]:
        with self._lock:
            answer: dict[str, Any] = {
                "global_per_s": None if self._global is None else self._global.rate_per_s,
                "endpoint_per_s": self._endpoint_per_s,
                "refused": dict(self.refused),
            }
            if since is not None:
                answer["timeline"] = [entry for entry in self.timeline if entry[0] >= since]
            return answer

    # -- the fake's HTTP app -------------------------------------------------------------

    def install(self, app: web.Application, *, delay: Callable[[], Awaitable[None]]) -> None:
        """Refuse `/v1` requests over a limit before the app sees them; add the control routes.

        A refused request still takes `delay()` to answer, as Stripe's 429s take a round trip.
        """

        @web.middleware
        async def limit(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            if not self.enabled or not request.path.startswith("/v1/"):
                return await handler(request)
            resource = request.match_info.route.resource
            route = f"{request.method} {resource.canonical if resource else request.path}"
            key = request.headers.get("Idempotency-Key")
            reason = self.admit(route)
            if reason is not None:
                await delay()
                self.record(route, reason, key)
                return web.json_response(
                    RATE_LIMITED_BODY, status=429, headers={REASON_HEADER: reason}
                )
            response = await handler(request)
            self.record(route, response.status, key)
            return response

        async def control(request: web.Request) -> web.Response:
            if request.method == "POST":
                body = await request.json()
                self.configure(
                    global_per_s=body.get("global_per_s"), endpoint_per_s=body.get("endpoint_per_s")
                )
            since = request.query.get("since")
            return web.json_response(self.state(None if since is None else float(since)))

        app.middlewares.append(limit)
        app.router.add_get(CONTROL_PATH, control)
        app.router.add_post(CONTROL_PATH, control)

    # -- command line --------------------------------------------------------------------

    @staticmethod
    def add_arguments(options: argparse.ArgumentParser) -> None:
        options.add_argument("--global-rate-per-s", type=float, help="the account's requests/s")
        options.add_argument("--endpoint-rate-per-s", type=float, help="each endpoint's requests/s")
        options.add_argument("--search-rate-per-s", type=float, help="the Search API's requests/s")

    @classmethod
    def from_arguments(cls, settings: dict[str, Any]) -> StripeRateLimits:
        """The limits named on the command line; their keys are taken out of `settings`."""
        return cls(
            global_per_s=settings.pop("global_rate_per_s"),
            endpoint_per_s=settings.pop("endpoint_rate_per_s"),
            search_per_s=settings.pop("search_rate_per_s"),
        )
