"""A fake Stripe API (aiohttp) that honours `Idempotency-Key`, for tests and benchmarks.

localstripe does not honour idempotency keys and cannot inject faults; this fake
speaks the part of Stripe's HTTP API the worker uses, the way Stripe does:
form-encoded bodies (`metadata[key]=value`), JSON answers, Stripe's error shape
`{"error": {"type", "code", "message", "param", "decline_code", ...}}`.

Run it in-process:

    fake = FakeStripe(latency_s=0.2)
    await fake.start()                  # on the running loop, a free loopback port
    ...; await fake.stop()
    with FakeStripe().running_in_thread() as fake:   # its own loop in a thread
        fake.url, fake.stats(), fake.add_fault(...)

or as a process (other suites, benchmarks):

    python -m paystep_local.fake_stripe --port 12111 [--latency-s 0.2] [--jitter-s 0.05]
        [--rate-limit-per-s 25] [--same-key-in-flight conflict|wait]
        [--global-rate-per-s 100] [--endpoint-rate-per-s 25]   # paystep_local.stripe_rate_limits

It prints `listening on http://127.0.0.1:PORT` once it serves.

Stripe API subset (any `Authorization: Bearer sk_...` key is accepted, none is a 401):

- `POST /v1/payment_intents`: Stripe's create parameters, checked by
  `paystep_local.stripe_rules` under the request's `Stripe-Version` (the
  `return_url` rule, `automatic_payment_methods` or listed types, metadata
  limits, unknown parameters -> 400 `parameter_unknown`). With `confirm=true` the
  payment method decides:
  Stripe's declining test cards (`stripe_rules.DECLINING_CARDS`:
  `pm_card_chargeCustomerFail` -> 402 `card_declined` / `generic_decline`,
  `pm_card_chargeDeclinedStolenCard` -> `stolen_card`, `...ExpiredCard` -> code
  `expired_card`, ...), the error naming the charge and the PaymentMethod (brand,
  fingerprint) and the PaymentIntent stored as `requires_payment_method` with the
  same `last_payment_error`; `pm_card_authenticationRequired` -> 402
  `authentication_required` off-session, `requires_action` with a `next_action`
  on-session; `pm_processing*`, `pm_sepa*`, `pm_usBankAccount*` ->
  `processing`; `pm_missing*` -> 400 `resource_missing`; any other -> `succeeded`,
  or with `capture_method=manual` -> `requires_capture` (`amount_capturable` the
  amount, event `payment_intent.amount_capturable_updated`). Without confirm:
  `requires_payment_method`. Customers `cus_missing*` -> 400 `resource_missing`
  (param `customer`); other customers exist.
- `POST /v1/payment_intents/{id}/confirm` (`payment_method`, `return_url`,
  `off_session`, ...): a declined PaymentIntent confirmed again with another method,
  the same outcomes as above.
- `GET /v1/events` (`type`, `created`): the events each change emitted, newest first
  (`payment_intent.created`, `.succeeded`, `.payment_failed`, `.processing`, ...).
- `GET /v1/payment_intents/{id}`, `GET /v1/payment_intents` (list, `created`).
  Both lists page as Stripe's do (https://docs.stripe.com/api/pagination): `limit`
  1 to 100 (default 10, anything else 400), `starting_after` / `ending_before` an id
  of the list (an unknown one 400 `resource_missing`), `has_more`; `created` an
  integer or `created[gt|gte|lt|lte]`.
- `POST /v1/payment_intents/{id}/cancel`: refused as Stripe refuses
  (`stripe_rules.check_cancel`: 400 `payment_intent_unexpected_state` once
  processing, succeeded or canceled, the PaymentIntent in the error); emits
  `payment_intent.canceled`. `expire_authorization(id)` cancels an authorisation as
  Stripe does when it expires (`cancellation_reason` `automatic`).
- `POST /v1/payment_intents/{id}/capture` (`amount_to_capture`): only from
  `requires_capture` (`stripe_rules.check_capture`), then `succeeded` with
  `payment_intent.succeeded`.
- `GET /v1/payment_intents/search?query=...&limit=N&page=...` (`paystep_local.stripe_search`):
  clauses `metadata['k']:'v'`, `status:'v'`, `amount:v`, `currency:'v'`,
  `customer:'v'` joined by `AND`; anything else 400.
- `POST /v1/refunds` (payment_intent, amount, reason, metadata): the rest of the
  amount received; 400 `charge_already_refunded` when nothing is left.
  `GET /v1/refunds?payment_intent=...`.

Idempotency as Stripe does it (`paystep_local.idempotency`): the first POST with
a key stores its status and body once the endpoint runs (card declines included);
the same key and parameters replay it with `Idempotent-Replayed: true`; other
parameters -> 400 `idempotency_error`. A request arriving while another with
the same key runs gets 409 `idempotency_key_in_use` (default, as Stripe) or,
with `same_key_in_flight="wait"`, waits and replays. Parameter validation
failures, injected errors and 429s store nothing. `forget_idempotency_keys()`
plays the 24 hours after which Stripe prunes keys.

Faults (`add_fault(...)`, or `POST /_fake/faults` with the same fields as JSON),
matched in order against `method` and a path regex (`path`), each used `times` times
(`None`: forever):

- `kind="error"`: answer `status` (500 `api_error`, 429 `rate_limit`, 409
  `lock_timeout`, others `invalid_request_error`) before running the endpoint.
- `kind="drop"`: run the endpoint (the object exists, the key is stored), then
  close the connection without an answer.
- `kind="hold"`: run the endpoint, then keep the answer for `hold_s` seconds
  (a client killed in that window never sees it).

Latency: every `/v1` request sleeps `latency_s` plus up to `jitter_s`. Stripe's
limiters (`paystep_local.stripe_rate_limits`: the account's 100/s live or 25/s test,
about 25/s per endpoint, the Search API's 20/s) answer 429 with the limiter named
in `Stripe-Rate-Limited-Reason`. The older single limiter:
`rate_limit_per_s` requests a second (token bucket, burst of one second) then
429s, counted in `stats()["rate_limited"]`.

State, in-process: `intents()`, `requests(route)`, `stats()`, `put_payment_intent(...)`,
`update_payment_intent(id, status=...)`, `put_refund(payment_intent, amount)`.

Control API (process form): `GET /_fake/stats`, `GET /_fake/requests`,
`GET /_fake/payment_intents`, `POST /_fake/payment_intents` (a JSON list of
`{"intent": {fields}, "events": [types]}`: stored as `put_payment_intent` does, each
event emitted at the PaymentIntent's `created`), `POST /_fake/config` (JSON: latency_s, jitter_s,
rate_limit_per_s, same_key_in_flight), `POST /_fake/faults`,
`POST /_fake/forget_idempotency_keys`, `POST /_fake/reset`.

`stats()` counts requests by route (`"POST /v1/payment_intents"`), statuses,
replays, 409 conflicts, the rate limited, the peak of requests in flight and
the objects held; `requests()` lists each request (method, route, key, status,
replayed, metadata).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

from aiohttp import web

from paystep_local import serve, stripe_rules, stripe_search
from paystep_local.idempotency import (
    REPLAYED_HEADER,
    IdempotencyError,
    IdempotencyStore,
    Reply,
    SameKeyInFlight,
)
from paystep_local.stripe_rate_limits import StripeRateLimits
from paystep_local.stripe_rules import StripeFailure, check_metadata, decode_form, invalid

FaultKind = Literal["error", "drop", "hold"]

PROCESSING_PREFIXES: Final = ("pm_processing", "pm_sepa", "pm_usBankAccount")


@dataclass
class Fault:
    method: str = "POST"
    path: str = r"^/v1/payment_intents$"
    kind: FaultKind = "error"
    status: int = 500
    times: int | None = 1
    hold_s: float = 3600.0

    def matches(self, method: str, path: str) -> bool:
        return (self.times is None or self.times > 0) and (
            self.method in ("*", method) and re.search(self.path, path) is not None
        )


@dataclass
class RequestRecord:
    method: str
    route: str
    idempotency_key: str | None
    status: int = 0
    replayed: bool = False
    fault: str | None = None
    object_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Answer:
    status: int
    body: dict[str, Any]
    replayed: bool = False
    after: Fault | None = None


class FakeStripe:
    """The fake's state and HTTP app; see the module docstring."""

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        jitter_s: float = 0.0,
        rate_limit_per_s: float | None = None,
        same_key_in_flight: SameKeyInFlight = "conflict",
        rate_limits: StripeRateLimits | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        # Stripe's account-wide and per-endpoint limiters, refusing before the app runs.
        self.rate_limits = rate_limits or StripeRateLimits()
        self.latency_s = latency_s
        self.jitter_s = jitter_s
        self.rate_limit_per_s = rate_limit_per_s
        self.same_key_in_flight: SameKeyInFlight = same_key_in_flight
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reset()

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> str:
        self._loop = asyncio.get_running_loop()
        # Stripe's clients hold connections open; do not cancel handlers on disconnect so a
        # killed client leaves the object behind exactly as Stripe would.
        self._runner = web.AppRunner(
            self.app(), access_log=None, handler_cancellation=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @contextlib.contextmanager
    def running_in_thread(self) -> Iterator[FakeStripe]:
        """Serve from a daemon thread with its own loop: blocking tests cannot stall it."""
        started = threading.Event()
        stopping: asyncio.Event | None = None
        failure: list[BaseException] = []

        async def serve() -> None:
            nonlocal stopping
            stopping = asyncio.Event()
            try:
                await self.start()
            except BaseException as exc:
                failure.append(exc)
                started.set()
                raise
            started.set()
            await stopping.wait()
            await self.stop()

        thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
        thread.start()
        started.wait(10)
        if failure:
            raise failure[0]
        try:
            yield self
        finally:
            if self._loop is not None and stopping is not None:
                self._loop.call_soon_threadsafe(stopping.set)
            thread.join(10)

    # -- control -------------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.payment_intents: dict[str, dict[str, Any]] = {}
            self.refunds: dict[str, dict[str, Any]] = {}
            self.events: list[dict[str, Any]] = []
            self.faults: list[Fault] = []
            self._records: list[RequestRecord] = []
            self._idempotency: IdempotencyStore[dict[str, Any]] = IdempotencyStore(
                same_key_in_flight=self.same_key_in_flight
            )
            self._statuses: Counter[int] = Counter()
            self._routes: Counter[str] = Counter()
            self._rate_limited = 0
            self._in_flight = 0
            self._peak_in_flight = 0
            self._tokens = float(self.rate_limit_per_s or 0.0)
            self._tokens_at = time.monotonic()

    def configure(
        self,
        *,
        latency_s: float | None = None,
        jitter_s: float | None = None,
        rate_limit_per_s: float | Literal["unchanged"] | None = "unchanged",
        same_key_in_flight: SameKeyInFlight | None = None,
    ) -> None:
        with self._lock:
            if latency_s is not None:
                self.latency_s = latency_s
            if jitter_s is not None:
                self.jitter_s = jitter_s
            if rate_limit_per_s != "unchanged":
                self.rate_limit_per_s = rate_limit_per_s
                self._tokens = float(rate_limit_per_s or 0.0)
                self._tokens_at = time.monotonic()
            if same_key_in_flight is not None:
                self.same_key_in_flight = same_key_in_flight
                self._idempotency.same_key_in_flight = same_key_in_flight

    def add_fault(self, fault: Fault | None = None, /, **fields: Any) -> Fault:
        fault = fault or Fault(**fields)
        with self._lock:
            self.faults.append(fault)
        return fault

    def forget_idempotency_keys(self) -> None:
        """What Stripe does to keys older than 24 hours."""
        with self._lock:
            self._idempotency.forget()

    def put_payment_intent(self, **fields: Any) -> dict[str, Any]:
        """Store a PaymentIntent directly, as if made long ago (no key, no request counted)."""
        intent = _payment_intent(fields)
        with self._lock:
            self.payment_intents[intent["id"]] = intent
        return intent

    def put_payment_intents(self, entries: list[dict[str, Any]]) -> None:
        """Store PaymentIntents with the events they emitted, as if made long ago: each entry
        is `{"intent": {fields}, "events": [types]}`, the events dated at `created`."""
        with self._lock:
            for entry in entries:
                intent = _payment_intent(dict(entry["intent"]))
                self.payment_intents[intent["id"]] = intent
                for event_type in entry.get("events", ()):
                    self._emit(event_type, intent, created=intent["created"])

    def update_payment_intent(self, intent_id: str, **fields: Any) -> dict[str, Any]:
        """Change a PaymentIntent as the customer or the bank would (a status, a charge)."""
        with self._lock:
            intent = self.payment_intents[intent_id]
            intent.update(fields)
            return dict(intent)

    def put_refund(self, payment_intent: str, amount: int, **fields: Any) -> dict[str, Any]:
        """Store a refund directly, as if made long ago."""
        refund = {
            "id": "re_" + secrets.token_hex(12),
            "object": "refund",
            "amount": amount,
            "currency": "usd",
            "payment_intent": payment_intent,
            "charge": None,
            "status": "succeeded",
            "reason": None,
            "metadata": {},
            "created": int(time.time()),
            **fields,
        }
        with self._lock:
            self.refunds[refund["id"]] = refund
        return refund

    def refunds_of(self, payment_intent: str) -> list[dict[str, Any]]:
        """The refunds of one PaymentIntent, oldest first."""
        with self._lock:
            found = [r for r in self.refunds.values() if r["payment_intent"] == payment_intent]
        return sorted((dict(r) for r in found), key=lambda r: r["created"])

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": sum(self._routes.values()),
                "routes": dict(self._routes),
                "statuses": {str(k): v for k, v in self._statuses.items()},
                "replays": self._idempotency.counts().get("replayed", 0),
                "conflicts": self._idempotency.counts().get("conflicts", 0),
                "rate_limited": self._rate_limited,
                "in_flight": self._in_flight,
                "peak_in_flight": self._peak_in_flight,
                "payment_intents": len(self.payment_intents),
                "refunds": len(self.refunds),
            }

    def requests(self, route: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self._records if route is None or r.route == route]

    def intents(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(pi)) for pi in self.payment_intents.values()]

    def event_types(self, intent_id: str | None = None) -> list[str]:
        """The types of the events emitted so far (of one PaymentIntent), oldest first."""
        with self._lock:
            return [
                e["type"]
                for e in self.events
                if intent_id is None or e["data"]["object"]["id"] == intent_id
            ]

    # -- HTTP ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**2)
        routes = [
            ("POST", "/v1/payment_intents", self._create_payment_intent),
            ("GET", "/v1/payment_intents", self._list_payment_intents),
            ("GET", "/v1/payment_intents/search", self._search_payment_intents),
            ("GET", "/v1/payment_intents/{id}", self._retrieve_payment_intent),
            ("POST", "/v1/payment_intents/{id}/cancel", self._cancel_payment_intent),
            ("POST", "/v1/payment_intents/{id}/confirm", self._confirm_payment_intent),
            ("POST", "/v1/payment_intents/{id}/capture", self._capture_payment_intent),
            ("GET", "/v1/events", self._list_events),
            ("POST", "/v1/refunds", self._create_refund),
            ("GET", "/v1/refunds", self._list_refunds),
            ("POST", "/v1/refunds/{id}", self._update_refund),
        ]
        for method, path, endpoint in routes:
            app.router.add_route(method, path, self._api(f"{method} {path}", endpoint))
        app.router.add_get("/_fake/stats", self._control_stats)
        app.router.add_get("/_fake/requests", self._control_requests)
        app.router.add_get("/_fake/payment_intents", self._control_intents)
        app.router.add_post("/_fake/payment_intents", self._control_put_intents)
        app.router.add_post("/_fake/config", self._control_config)
        app.router.add_post("/_fake/faults", self._control_faults)
        app.router.add_post("/_fake/forget_idempotency_keys", self._control_forget)
        app.router.add_post("/_fake/reset", self._control_reset)
        self.rate_limits.install(app, delay=self._latency)
        return app

    def _api(
        self, route: str, endpoint: Callable[[web.Request, dict[str, Any]], Awaitable[_Answer]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
            if request.method == "POST":
                params = decode_form(await request.text())
            else:
                params = decode_form(request.query_string)
            record = RequestRecord(request.method, route, key, params=params)
            with self._lock:
                self._records.append(record)
                self._routes[route] += 1
                self._in_flight += 1
                self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
            try:
                answer = await self._answer(request, route, key, params, endpoint, record)
            finally:
                with self._lock:
                    self._in_flight -= 1
            record.status = answer.status
            record.replayed = answer.replayed
            with self._lock:
                self._statuses[answer.status] += 1
            if answer.after is not None and answer.after.kind == "drop":
                record.fault = "drop"
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError
            if answer.after is not None and answer.after.kind == "hold":
                record.fault = "hold"
                await asyncio.sleep(answer.after.hold_s)
            headers = {"Request-Id": "req_" + secrets.token_hex(7)}
            if answer.replayed:
                headers[REPLAYED_HEADER] = "true"
            return web.json_response(answer.body, status=answer.status, headers=headers)

        return handler

    async def _answer(
        self,
        request: web.Request,
        route: str,
        key: str | None,
        params: dict[str, Any],
        endpoint: Callable[[web.Request, dict[str, Any]], Awaitable[_Answer]],
        record: RequestRecord,
    ) -> _Answer:
        if not request.headers.get("Authorization", "").startswith("Bearer sk_"):
            return _error_answer(
                StripeFailure(401, "invalid_request_error", "Invalid API Key provided.")
            )
        if not self._take_rate_token():
            record.fault = "rate_limited"
            await self._latency()
            return _error_answer(_injected(429))
        fault = self._take_fault(request.method, request.path)
        if fault is not None and fault.kind == "error":
            record.fault = f"error {fault.status}"
            await self._latency()
            return _error_answer(_injected(fault.status))
        if key is None:
            await self._latency()
            answer = await self._run(endpoint, request, params)
        else:
            answer = await self._run_idempotent(key, route, request, params, endpoint)
        answer.after = fault
        return answer

    async def _run(
        self,
        endpoint: Callable[[web.Request, dict[str, Any]], Awaitable[_Answer]],
        request: web.Request,
        params: dict[str, Any],
    ) -> _Answer:
        try:
            return await endpoint(request, params)
        except StripeFailure as failure:
            return _error_answer(failure)

    async def _run_idempotent(
        self,
        key: str,
        route: str,
        request: web.Request,
        params: dict[str, Any],
        endpoint: Callable[[web.Request, dict[str, Any]], Awaitable[_Answer]],
    ) -> _Answer:
        async def call() -> Reply[dict[str, Any]]:
            await self._latency()
            try:
                answer = await endpoint(request, params)
            except StripeFailure as failure:
                return Reply(failure.status, failure.body, ran=failure.executed)
            return Reply(answer.status, answer.body)

        fingerprint = json.dumps([route, request.path, params], sort_keys=True)
        try:
            reply = await self._idempotency.run(key, fingerprint, call)
        except IdempotencyError as refused:
            return _Answer(refused.status, refused.body)
        return _Answer(reply.status, reply.body, replayed=reply.replayed)

    async def _latency(self) -> None:
        if self.latency_s or self.jitter_s:
            await asyncio.sleep(self.latency_s + random.random() * self.jitter_s)

    def _take_rate_token(self) -> bool:
        with self._lock:
            if not self.rate_limit_per_s:
                return True
            now = time.monotonic()
            self._tokens = min(
                self.rate_limit_per_s,
                self._tokens + (now - self._tokens_at) * self.rate_limit_per_s,
            )
            self._tokens_at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            self._rate_limited += 1
            return False

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    # -- endpoints -----------------------------------------------------------------------

    async def _create_payment_intent(self, request: web.Request, params: dict[str, Any]) -> _Answer:
        version = request.headers.get("Stripe-Version")
        metadata = stripe_rules.check_create(params, version)
        amount = _integer(params, "amount")
        currency = params.get("currency")
        if not isinstance(currency, str) or not re.fullmatch(r"[a-z]{3}", currency):
            raise invalid(
                "Missing required param: currency.", param="currency", code="parameter_missing"
            )
        customer = _existing(params, "customer", "cus_missing", "customer")
        method = _existing(params, "payment_method", "pm_missing", "PaymentMethod")
        intent = _payment_intent(
            {
                "amount": amount,
                "currency": currency,
                "customer": customer,
                "payment_method": method,
                "metadata": metadata,
                "capture_method": params.get("capture_method", "automatic"),
                "automatic_payment_methods": stripe_rules.automatic_payment_methods(
                    params, version
                ),
                "payment_method_types": _types(params),
                "description": params.get("description"),
            }
        )
        with self._lock:
            self.payment_intents[intent["id"]] = intent
            self._emit("payment_intent.created", intent)
        if params.get("confirm") == "true":
            if not isinstance(method, str):
                raise StripeFailure(
                    400,
                    "invalid_request_error",
                    "You cannot confirm this PaymentIntent because it's missing a payment method.",
                    code="payment_intent_unexpected_state",
                    executed=True,
                )
            return self._confirm(intent, method, params)
        return _Answer(200, intent)

    async def _confirm_payment_intent(
        self, request: web.Request, params: dict[str, Any]
    ) -> _Answer:
        intent_id = request.match_info["id"]
        stripe_rules.check_confirm(
            self._intent(intent_id), params, request.headers.get("Stripe-Version")
        )
        with self._lock:
            intent = self.payment_intents[intent_id]
            method = params.get("payment_method") or intent["payment_method"]
            intent.update(payment_method=method, last_payment_error=None)
        _existing(params, "payment_method", "pm_missing", "PaymentMethod")
        return self._confirm(intent, method, params)

    def _confirm(self, intent: dict[str, Any], method: str, params: dict[str, Any]) -> _Answer:
        off_session = params.get("off_session") == "true"
        card = stripe_rules.DECLINING_CARDS.get(method)
        if card is not None and (off_session or not card.off_session_only):
            error = card.error("ch_" + secrets.token_hex(12), method)
            with self._lock:
                intent["status"] = "requires_payment_method"
                intent["last_payment_error"] = dict(error)
                self._emit("payment_intent.payment_failed", intent)
            return _Answer(402, {"error": {**error, "payment_intent": dict(intent)}})
        with self._lock:
            if method == "pm_card_authenticationRequired":
                intent["status"] = "requires_action"
                intent["next_action"] = _redirect(params.get("return_url"))
                self._emit("payment_intent.requires_action", intent)
            elif method.startswith(PROCESSING_PREFIXES):
                intent["status"] = "processing"
                self._emit("payment_intent.processing", intent)
            elif intent["capture_method"] == "manual":
                # https://docs.stripe.com/payments/place-a-hold-on-a-payment-method: the
                # funds are held, `amount_capturable` says how much.
                intent["status"] = "requires_capture"
                intent["amount_capturable"] = intent["amount"]
                intent["latest_charge"] = "ch_" + secrets.token_hex(12)
                self._emit("payment_intent.amount_capturable_updated", intent)
            else:
                intent["status"] = "succeeded"
                intent["amount_received"] = intent["amount"]
                intent["latest_charge"] = "ch_" + secrets.token_hex(12)
                self._emit("payment_intent.succeeded", intent)
        return _Answer(200, dict(intent))

    def _emit(self, event_type: str, intent: dict[str, Any], *, created: int | None = None) -> None:
        """Record an event as Stripe lists it (https://docs.stripe.com/api/events/object)."""
        self.events.append(
            {
                "id": "evt_" + secrets.token_hex(12),
                "object": "event",
                "type": event_type,
                "livemode": False,
                "created": int(time.time()) if created is None else created,
                "data": {"object": json.loads(json.dumps(intent))},
            }
        )

    async def _list_events(self, _: web.Request, params: dict[str, Any]) -> _Answer:
        event_type = params.get("type")
        with self._lock:
            data = [e for e in self.events if event_type in (None, e["type"])]
        return _Answer(200, _page(data, params, "/v1/events"))

    async def _retrieve_payment_intent(self, request: web.Request, _: dict[str, Any]) -> _Answer:
        return _Answer(200, self._intent(request.match_info["id"]))

    async def _list_payment_intents(self, _: web.Request, params: dict[str, Any]) -> _Answer:
        with self._lock:
            data = list(self.payment_intents.values())
        return _Answer(200, _page(data, params, "/v1/payment_intents"))

    async def _search_payment_intents(self, _: web.Request, params: dict[str, Any]) -> _Answer:
        with self._lock:
            intents = [dict(pi) for pi in self.payment_intents.values()]
        return _Answer(200, stripe_search.search(intents, params))

    async def _cancel_payment_intent(self, request: web.Request, params: dict[str, Any]) -> _Answer:
        intent = self._intent(request.match_info["id"])
        reason = stripe_rules.cancellation_reason(params)
        with self._lock:
            stored = self.payment_intents[intent["id"]]
            stripe_rules.check_cancel(stored)
            stored["status"] = "canceled"
            stored["canceled_at"] = int(time.time())
            stored["cancellation_reason"] = reason
            # https://docs.stripe.com/api/payment_intents/cancel: an authorisation's
            # amount_capturable is released.
            stored["amount_capturable"] = 0
            self._emit("payment_intent.canceled", stored)
            return _Answer(200, dict(stored))

    async def _capture_payment_intent(
        self, request: web.Request, params: dict[str, Any]
    ) -> _Answer:
        intent = self._intent(request.match_info["id"])
        with self._lock:
            stored = self.payment_intents[intent["id"]]
            amount = stripe_rules.check_capture(stored, params)
            stored["status"] = "succeeded"
            stored["amount_received"] = amount
            stored["amount_capturable"] = 0
            self._emit("payment_intent.succeeded", stored)
            return _Answer(200, dict(stored))

    def expire_authorization(self, intent_id: str) -> dict[str, Any]:
        """Cancel an uncaptured authorisation as Stripe does once it expires
        (`cancellation_reason` `automatic`,
        https://docs.stripe.com/api/payment_intents/object#payment_intent_object-cancellation_reason)."""
        with self._lock:
            stored = self.payment_intents[intent_id]
            stored.update(
                status="canceled",
                canceled_at=int(time.time()),
                cancellation_reason="automatic",
                amount_capturable=0,
            )
            self._emit("payment_intent.canceled", stored)
            return dict(stored)

    async def _create_refund(self, _: web.Request, params: dict[str, Any]) -> _Answer:
        intent_id = params.get("payment_intent")
        if not isinstance(intent_id, str):
            raise StripeFailure(
                400,
                "invalid_request_error",
                "One of `charge` or `payment_intent` is required.",
                code="parameter_missing",
            )
        intent = self._intent(intent_id, param="payment_intent")
        with self._lock:
            if intent["status"] != "succeeded":
                raise StripeFailure(
                    400,
                    "invalid_request_error",
                    f"This PaymentIntent ({intent_id}) does not have a successful charge to "
                    "refund.",
                    code="charge_not_refundable",
                    executed=True,
                )
            refunded = sum(
                r["amount"]
                for r in self.refunds.values()
                if r["payment_intent"] == intent_id and r["status"] != "failed"
            )
            left = intent["amount_received"] - refunded
            amount = _integer(params, "amount") if "amount" in params else left
            if left <= 0 or amount > left:
                raise StripeFailure(
                    400,
                    "invalid_request_error",
                    f"Charge {intent['latest_charge']} has already been refunded.",
                    code="charge_already_refunded",
                    executed=True,
                )
            refund = {
                "id": "re_" + secrets.token_hex(12),
                "object": "refund",
                "amount": amount,
                "currency": intent["currency"],
                "payment_intent": intent_id,
                "charge": intent["latest_charge"],
                "status": "succeeded",
                "reason": params.get("reason"),
                "metadata": check_metadata(params.get("metadata")),
                "created": int(time.time()),
            }
            self.refunds[refund["id"]] = refund
        return _Answer(200, dict(refund))

    async def _list_refunds(self, _: web.Request, params: dict[str, Any]) -> _Answer:
        intent_id = params.get("payment_intent")
        with self._lock:
            data = [
                dict(r)
                for r in self.refunds.values()
                if intent_id is None or r["payment_intent"] == intent_id
            ]
        return _Answer(200, _list(data, "/v1/refunds"))

    async def _update_refund(self, request: web.Request, params: dict[str, Any]) -> _Answer:
        metadata = stripe_rules.check_refund_update(params)
        with self._lock:
            refund = self.refunds.get(request.match_info["id"])
            if refund is None:
                raise _no_such("refund", request.match_info["id"], param="id")
            # Stripe merges metadata; an empty value removes a key.
            merged = {**refund["metadata"], **metadata}
            refund["metadata"] = {k: v for k, v in merged.items() if v != ""}
            return _Answer(200, dict(refund))

    def _intent(self, intent_id: str, *, param: str = "intent") -> dict[str, Any]:
        with self._lock:
            intent = self.payment_intents.get(intent_id)
            if intent is None:
                raise _no_such("payment_intent", intent_id, param=param)
            return dict(intent)

    # -- control endpoints ---------------------------------------------------------------

    async def _control_stats(self, _: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _control_requests(self, _: web.Request) -> web.Response:
        return web.json_response([asdict(r) for r in self.requests()])

    async def _control_intents(self, _: web.Request) -> web.Response:
        return web.json_response(self.intents())

    async def _control_put_intents(self, request: web.Request) -> web.Response:
        self.put_payment_intents(await request.json())
        return web.json_response({"ok": True})

    async def _control_config(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.configure(
            latency_s=body.get("latency_s"),
            jitter_s=body.get("jitter_s"),
            rate_limit_per_s=body.get("rate_limit_per_s", "unchanged"),
            same_key_in_flight=body.get("same_key_in_flight"),
        )
        return web.json_response({"ok": True})

    async def _control_faults(self, request: web.Request) -> web.Response:
        body = await request.json()
        for fields in body if isinstance(body, list) else [body]:
            self.add_fault(**fields)
        return web.json_response({"ok": True})

    async def _control_forget(self, _: web.Request) -> web.Response:
        self.forget_idempotency_keys()
        return web.json_response({"ok": True})

    async def _control_reset(self, _: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


def _payment_intent(fields: dict[str, Any]) -> dict[str, Any]:
    intent: dict[str, Any] = {
        "id": "pi_" + secrets.token_hex(12),
        "object": "payment_intent",
        "amount": 0,
        "amount_capturable": 0,
        "amount_received": 0,
        "currency": "usd",
        "customer": None,
        "payment_method": None,
        "status": "requires_payment_method",
        "capture_method": "automatic",
        "confirmation_method": "automatic",
        "metadata": {},
        "latest_charge": None,
        "last_payment_error": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "next_action": None,
        "automatic_payment_methods": None,
        "payment_method_types": ["card"],
        "livemode": False,
        "created": int(time.time()),
    }
    intent.update({k: v for k, v in fields.items() if v is not None or k not in intent})
    intent["client_secret"] = f"{intent['id']}_secret_{secrets.token_hex(8)}"
    return intent


def _types(params: dict[str, Any]) -> list[str] | None:
    listed = params.get("payment_method_types") or params.get("allowed_payment_method_types")
    return list(listed.values()) if isinstance(listed, dict) else None


def _redirect(return_url: str | None) -> dict[str, Any]:
    """The `next_action` of a payment the customer must authenticate."""
    if return_url:
        return {
            "type": "redirect_to_url",
            "redirect_to_url": {
                "url": "https://hooks.stripe.com/redirect/authenticate/" + secrets.token_hex(8),
                "return_url": return_url,
            },
        }
    return {"type": "use_stripe_sdk", "use_stripe_sdk": {"type": "three_d_secure_redirect"}}


def _list(data: list[dict[str, Any]], url: str) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": False, "url": url}


# https://docs.stripe.com/api/pagination: `limit` between 1 and 100, default 10.
MAX_PAGE_LIMIT: Final = 100
_CREATED_OPS: Final[dict[str, Callable[..., bool]]] = {
    "gt": lambda value, bound: value > bound,
    "gte": lambda value, bound: value >= bound,
    "lt": lambda value, bound: value < bound,
    "lte": lambda value, bound: value <= bound,
    "eq": lambda value, bound: value == bound,
}


def _page(objects: list[dict[str, Any]], params: dict[str, Any], url: str) -> dict[str, Any]:
    """One page of `objects` (given oldest first) as Stripe lists them: newest first, by
    `created`, then `starting_after` or `ending_before`, `limit` of them."""
    raw_limit = params.get("limit", "10")
    if not str(raw_limit).isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE_LIMIT:
        raise invalid(
            f"This value must be between 1 and {MAX_PAGE_LIMIT}.",
            param="limit",
            code="parameter_invalid_integer",
        )
    limit = int(raw_limit)
    created = params.get("created")
    bounds = created if isinstance(created, dict) else {} if created is None else {"eq": created}
    tests: list[Callable[[int], bool]] = []
    for op, bound in bounds.items():
        if op not in _CREATED_OPS or not str(bound).isdigit():
            raise invalid(f"Invalid created[{op}]: must be an integer.", param="created")
        tests.append(functools.partial(_CREATED_OPS[op], bound=int(bound)))
    # Newest first; of those created in the same second, the later one first.
    found = [o for o in reversed(objects) if all(test(int(o["created"])) for test in tests)]
    found.sort(key=lambda o: -int(o["created"]))
    start, end = 0, len(found)
    for param in ("starting_after", "ending_before"):
        cursor = params.get(param)
        if cursor:
            index = next((i for i, o in enumerate(found) if o["id"] == cursor), None)
            if index is None:
                raise invalid(f"No such object: '{cursor}'", param=param, code="resource_missing")
            if param == "starting_after":
                start = index + 1
            else:
                end, start = index, max(0, index - limit)
    data = found[start : min(end, start + limit)]
    return {"object": "list", "data": data, "has_more": start + limit < end, "url": url}


def _injected(status: int) -> StripeFailure:
    if status == 429:
        return StripeFailure(
            429,
            "invalid_request_error",
            "Request rate limit exceeded. Learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.",
            code="rate_limit",
        )
    if status == 409:
        return StripeFailure(
            409,
            "invalid_request_error",
            "This object cannot be accessed right now because another API request or Stripe "
            "process is currently accessing it.",
            code="lock_timeout",
        )
    if status >= 500:
        return StripeFailure(status, "api_error", "An unknown error occurred (injected).")
    return StripeFailure(status, "invalid_request_error", f"Injected {status}.")


def _error_answer(failure: StripeFailure) -> _Answer:
    return _Answer(failure.status, failure.body)


def _existing(params: dict[str, Any], param: str, missing_prefix: str, noun: str) -> Any:
    """The id in `params[param]`; ids starting with `missing_prefix` name nothing."""
    value = params.get(param)
    if isinstance(value, str) and value.startswith(missing_prefix):
        raise StripeFailure(
            400,
            "invalid_request_error",
            f"No such {noun}: '{value}'",
            param=param,
            code="resource_missing",
        )
    return value


def _integer(params: dict[str, Any], name: str) -> int:
    raw = params.get(name)
    if not isinstance(raw, str) or not raw.isdigit() or int(raw) <= 0:
        raise StripeFailure(
            400,
            "invalid_request_error",
            f"Invalid positive integer: {name}"
            if raw is not None
            else f"Missing required param: {name}.",
            param=name,
            code="parameter_invalid_integer" if raw is not None else "parameter_missing",
        )
    return int(raw)


def main(argv: list[str] | None = None) -> None:
    options = serve.parser("paystep_local.fake_stripe")
    options.add_argument("--latency-s", type=float, default=0.0)
    options.add_argument("--jitter-s", type=float, default=0.0)
    options.add_argument("--rate-limit-per-s", type=float)
    options.add_argument("--same-key-in-flight", choices=["conflict", "wait"], default="conflict")
    StripeRateLimits.add_arguments(options)
    # Each option is named as the constructor's keyword it sets.
    settings = vars(options.parse_args(argv))
    limits = StripeRateLimits.from_arguments(settings)
    serve.serve_forever(lambda: FakeStripe(rate_limits=limits, **settings))


if __name__ == "__main__":
    main()


def _no_such(kind: str, object_id: str, *, param: str) -> StripeFailure:
    """Stripe's 404 for an object it does not hold."""
    return StripeFailure(
        404,
        "invalid_request_error",
        f"No such {kind}: '{object_id}'",
        param=param,
        code="resource_missing",
    )
