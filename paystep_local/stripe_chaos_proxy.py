"""The local Stripe: localstripe behind Stripe's rules, idempotency keys and chosen faults.

localstripe runs the payments, signs and delivers webhooks, settles SEPA debits
and lists events, but it is looser than Stripe where money is lost: it ignores
idempotency keys, refuses parameters Stripe takes (`automatic_payment_methods`,
`return_url`, ...) and cannot confirm a declined PaymentIntent with another
payment method. This proxy, between paystep and localstripe, adds what Stripe
does; `LocalStack` starts it as a process, so `paystep dev`, the demo and the
tests talk to it, and the fault suite puts one with faults in front of
localstripe instead:

- Stripe's rules for a PaymentIntent create and confirm (`stripe_rules`), chosen
  by the request's `Stripe-Version`: refused as Stripe refuses, before anything
  is forwarded. What localstripe does not know is kept here and added to every
  PaymentIntent it answers with (`automatic_payment_methods`, the listed types).
- A confirm with another `payment_method` (a declined PaymentIntent tried
  again) is played on localstripe as an update that sets the method and clears
  the failed charge, then a confirm: localstripe charges it and sends
  `payment_intent.succeeded` or `payment_intent.payment_failed` itself.
- Stripe's rule for a cancel (`stripe_rules.check_cancel`): a PaymentIntent
  already succeeded or canceled is refused 400 `payment_intent_unexpected_state`
  with the PaymentIntent in the error, where localstripe answers a bare 400. And
  for a capture (`stripe_rules.check_capture`): only from `requires_capture`, where
  localstripe captures a canceled authorisation too.
- The Search API localstripe lacks (`GET /v1/payment_intents/search`, through
  `paystep_local.stripe_search`): every PaymentIntent listed from localstripe,
  filtered by the query. Stripe documents search as not read-after-write
  (https://docs.stripe.com/search#data-freshness: "under normal operating
  conditions, data is searchable in under 1 minute", later during an outage); with
  `search_lag_s` a PaymentIntent is found only that long after this proxy saw
  its create answered (localstripe's `created` has whole seconds only; one
  created elsewhere counts from its `created`).
- Idempotency as Stripe does it (`paystep_local.idempotency`): the first POST
  with a key runs and its answer is stored once it ran (any status below 500
  but 409 and 429; a request refused by the rules stores nothing); the same key
  and body replay it with `Idempotent-Replayed: true`; the same key with another
  body answers 400 `idempotency_error`; the same key while the first still runs
  answers 409 `idempotency_key_in_use` (with `same_key_in_flight="wait"`: waits
  and replays).
- the faults of `StripeFaults`: 500s, answers lost after the emulator acted,
  bursts of 429, latency.

Faults are drawn from a seeded random generator and apply to `/v1/` only. It
runs on its own thread and loop, so sync and async tests can both use it:

    with StripeChaosProxy(stack.localstripe_base, StripeFaults(error_rate=0.1), seed=7) as proxy:
        worker env PAYSTEP_STRIPE_API_BASE=proxy.url; ...; proxy.stats()

or as a process: `python -m paystep_local.stripe_chaos_proxy --upstream URL [--port N]
[--search-lag-s S]`
prints `listening on URL` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from aiohttp import web

from paystep_local import stripe_rules, stripe_search
from paystep_local.idempotency import IdempotencyError, IdempotencyStore, Reply, SameKeyInFlight
from paystep_local.stripe_rules import StripeFailure
from paystep_local.threaded_server import HOP_BY_HOP, ThreadedServer

JSON: Final = {"Content-Type": "application/json"}
CREATE: Final = re.compile(r"^/v1/payment_intents$")
CONFIRM: Final = re.compile(r"^/v1/payment_intents/(?P<id>pi_\w+)/confirm$")
CANCEL: Final = re.compile(r"^/v1/payment_intents/(?P<id>pi_\w+)/cancel$")
CAPTURE: Final = re.compile(r"^/v1/payment_intents/(?P<id>pi_\w+)/capture$")
# https://docs.stripe.com/api/pagination: a list page holds at most 100 objects.
LIST_PAGE: Final = 100
# The create parameters localstripe takes; the others Stripe takes are kept here.
LOCALSTRIPE_CREATE_PARAMS: Final = frozenset(
    {
        "amount",
        "currency",
        "customer",
        "payment_method",
        "metadata",
        "payment_method_types",
        "capture_method",
        "payment_method_options",
        "confirm",
        "off_session",
    }
)


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
        search_lag_s: float = 0.0,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, seed=seed, port=port)
        self.search_lag_s = search_lag_s
        self._clock = clock
        self.upstream = upstream.rstrip("/")
        self.faults = faults or StripeFaults()
        self._lose_first = self.faults.lose_first_answers
        self._burst_left = 0
        self._keys: IdempotencyStore[bytes] = IdempotencyStore(
            same_key_in_flight=same_key_in_flight
        )
        # What localstripe does not hold of each PaymentIntent, added to its answers.
        self._kept: dict[str, dict[str, Any]] = {}
        # When each PaymentIntent's create was answered (`clock` time): the start of its lag.
        self._created_at: dict[str, float] = {}

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
            reply = await self._serve(request, body)
            status, payload, headers = reply.status, reply.body, dict(reply.headers)
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
            reply = await self._serve(request, body)
            return Reply(
                reply.status, reply.body, {**reply.headers, "Idempotency-Key": key}, ran=reply.ran
            )

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

    # -- Stripe's rules ------------------------------------------------------------------

    async def _serve(self, request: web.Request, body: bytes) -> Reply[bytes]:
        """One `/v1/` request as Stripe answers it; `ran=False` when the rules refused it."""
        version = request.headers.get("Stripe-Version")
        try:
            if request.method == "POST" and CREATE.match(request.path):
                params = stripe_rules.decode_form(body.decode())
                stripe_rules.check_create(params, version)
                reply = await self._create(request, body, params, version)
            elif request.method == "POST" and (confirm := CONFIRM.match(request.path)):
                params = stripe_rules.decode_form(body.decode())
                reply = await self._confirm(request, confirm["id"], params, version)
            elif request.method == "POST" and (cancel := CANCEL.match(request.path)):
                reply = await self._cancel(request, cancel["id"], body)
            elif request.method == "POST" and (capture := CAPTURE.match(request.path)):
                reply = await self._capture(request, capture["id"], body)
            elif request.method == "GET" and request.path == stripe_search.SEARCH_URL:
                reply = await self._search(request)
            else:
                reply = Reply(*await self._forward(request, body))
        except StripeFailure as refused:
            self._count("refused")
            # Stored for its key only when the endpoint ran (a refusal on state, not input).
            return Reply(
                refused.status, json.dumps(refused.body).encode(), JSON, ran=refused.executed
            )
        return self._with_kept(reply)

    async def _create(
        self, request: web.Request, body: bytes, params: Mapping[str, Any], version: str | None
    ) -> Reply[bytes]:
        kept: dict[str, Any] = {
            "automatic_payment_methods": stripe_rules.automatic_payment_methods(params, version)
        }
        listed = params.get("allowed_payment_method_types") or params.get("payment_method_types")
        if isinstance(listed, Mapping):
            kept["payment_method_types"] = list(listed.values())
        if isinstance(params.get("description"), str):
            kept["description"] = params["description"]
        forwarded = urllib.parse.urlencode(
            [
                (name, value)
                for name, value in urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
                if name.partition("[")[0] in LOCALSTRIPE_CREATE_PARAMS
            ]
        ).encode()
        reply = await self._with_declined_intent(
            Reply(*await self._forward(request, forwarded)), _passed_headers(request)
        )
        intent = _payment_intent_of(reply.body)
        if intent is not None:
            with self._lock:
                self._kept[intent["id"]] = kept
                self._created_at.setdefault(intent["id"], self._clock())
        return reply

    async def _confirm(
        self, request: web.Request, intent_id: str, params: Mapping[str, Any], version: str | None
    ) -> Reply[bytes]:
        headers = _passed_headers(request)
        intent = await self._current(intent_id, headers)
        if isinstance(intent, Reply):
            return intent
        stripe_rules.check_confirm(intent, params, version)
        method = params.get("payment_method")
        if isinstance(method, str):
            # localstripe confirms only from requires_confirmation: set the new method and
            # drop the failed charge (its update takes JSON), then confirm as it is.
            update = json.dumps(
                {"payment_method": method, "latest_charge": None, "next_action": None}
            )
            status, payload, _ = await self._upstream(
                "POST",
                f"/v1/payment_intents/{intent_id}",
                {**headers, "Content-Type": "application/json"},
                update.encode(),
            )
            if status != 200:
                return Reply(status, payload, JSON)
        status, payload, reply_headers = await self._upstream(
            "POST", request.path, {**headers, "Content-Type": "application/x-www-form-urlencoded"}
        )
        return await self._with_declined_intent(Reply(status, payload, reply_headers), headers)

    async def _with_declined_intent(
        self, reply: Reply[bytes], headers: Mapping[str, str]
    ) -> Reply[bytes]:
        """A decline names its PaymentIntent, as Stripe's error object does.

        https://docs.stripe.com/api/errors: `payment_intent` is "the PaymentIntent object
        for errors returned on a request involving a PaymentIntent". localstripe names
        the failed charge only; its PaymentIntent is read back and added.
        """
        if reply.status != 402:
            return reply
        answer = json.loads(reply.body)
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, dict) or "payment_intent" in error or not error.get("charge"):
            return reply
        status, payload, _ = await self._upstream("GET", f"/v1/charges/{error['charge']}", headers)
        intent_id = json.loads(payload).get("payment_intent") if status == 200 else None
        if not isinstance(intent_id, str):
            return reply
        intent = await self._current(intent_id, headers)
        if isinstance(intent, Reply):
            return reply
        error["payment_intent"] = intent
        return Reply(reply.status, json.dumps(answer).encode(), reply.headers)

    async def _cancel(self, request: web.Request, intent_id: str, body: bytes) -> Reply[bytes]:
        intent = await self._current(intent_id, _passed_headers(request))
        if isinstance(intent, Reply):
            return intent
        stripe_rules.check_cancel(intent)
        return Reply(*await self._forward(request, body))

    async def _capture(self, request: web.Request, intent_id: str, body: bytes) -> Reply[bytes]:
        intent = await self._current(intent_id, _passed_headers(request))
        if isinstance(intent, Reply):
            return intent
        # localstripe captures a canceled authorisation's charge all the same.
        stripe_rules.check_capture(intent, stripe_rules.decode_form(body.decode()))
        return Reply(*await self._forward(request, body))

    async def _search(self, request: web.Request) -> Reply[bytes]:
        """Search as Stripe answers it, over the PaymentIntents searchable by now."""
        params = stripe_rules.decode_form(request.query_string)
        stripe_search.parse(params.get("query"))  # a bad query is refused before listing
        headers = _passed_headers(request)
        listed: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            path = f"/v1/payment_intents?limit={LIST_PAGE}"
            if after is not None:
                path += f"&starting_after={urllib.parse.quote(after)}"
            status, payload, _ = await self._upstream("GET", path, headers)
            if status != 200:
                return Reply(status, payload, JSON)
            page = json.loads(payload)
            listed.extend(page["data"])
            if not page["has_more"] or not page["data"]:
                break
            after = page["data"][-1]["id"]
        now = self._clock()
        with self._lock:
            searchable = [
                intent
                for intent in listed
                if self._created_at.get(intent["id"], float(intent["created"])) + self.search_lag_s
                <= now
            ]
        # localstripe lists in creation order, as the matcher takes them.
        answer = stripe_search.search(searchable, params)
        return Reply(200, json.dumps(answer).encode(), JSON)

    async def _current(
        self, intent_id: str, headers: Mapping[str, str]
    ) -> dict[str, Any] | Reply[bytes]:
        """The PaymentIntent as Stripe holds it (localstripe's, with what is kept here), or
        localstripe's answer when it has none."""
        status, payload, _ = await self._upstream(
            "GET", f"/v1/payment_intents/{intent_id}", headers
        )
        if status != 200:
            return Reply(status, payload, JSON)
        with self._lock:
            kept = self._kept.get(intent_id, {})
        return {**json.loads(payload), **kept}

    async def _upstream(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes = b""
    ) -> tuple[int, bytes, dict[str, str]]:
        assert self._session is not None
        self._count("forwarded")
        async with self._session.request(
            method, self.upstream + path, headers=dict(headers), data=body or None
        ) as answer:
            payload = await answer.read()
            reply = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            return answer.status, payload, reply

    def _with_kept(self, reply: Reply[bytes]) -> Reply[bytes]:
        """The answer with what this proxy keeps of each PaymentIntent in it."""
        if not reply.body.startswith(b"{"):
            return reply
        try:
            answer = json.loads(reply.body)
        except ValueError:
            return reply
        with self._lock:
            changed = _add_kept(answer, self._kept)
        if not changed:
            return reply
        return Reply(reply.status, json.dumps(answer).encode(), reply.headers, ran=reply.ran)


def _passed_headers(request: web.Request) -> dict[str, str]:
    return {
        k: v
        for k, v in request.headers.items()
        if k.lower() in ("authorization", "stripe-version", "user-agent")
    }


def _payment_intent_of(body: bytes) -> dict[str, Any] | None:
    """The PaymentIntent of an answer: the object itself, or the one a decline names."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    error = answer.get("error")
    found = error.get("payment_intent") if isinstance(error, dict) else answer
    return found if isinstance(found, dict) and found.get("object") == "payment_intent" else None


def _add_kept(answer: Any, kept: Mapping[str, dict[str, Any]]) -> bool:
    """Add `kept` to every PaymentIntent in `answer` (an object, a list, an error).

    And `amount_received`, which Stripe renders on every PaymentIntent and localstripe
    leaves out: the amount once succeeded, else 0 (no partial capture here)
    (https://docs.stripe.com/api/payment_intents/object#payment_intent_object-amount_received).
    """
    if not isinstance(answer, dict):
        return False
    changed = False
    if answer.get("object") == "payment_intent" and answer.get("id") in kept:
        answer.update(kept[answer["id"]])
        changed = True
    if answer.get("object") == "payment_intent" and "amount_received" not in answer:
        paid = answer.get("status") == "succeeded"
        answer["amount_received"] = answer.get("amount", 0) if paid else 0
        changed = True
    for nested in (answer.get("error"), *(answer.get("data") or [])):
        if isinstance(nested, dict):
            changed = _add_kept(nested.get("payment_intent", nested), kept) or changed
    return changed


def _stripe_error(status: int, type_: str, message: str, code: str | None = None) -> web.Response:
    error: dict[str, str] = {"type": type_, "message": message}
    if code is not None:
        error["code"] = code
    return web.json_response({"error": error}, status=status)


def main(argv: list[str] | None = None) -> None:
    """Serve as a process until interrupted: the local Stripe of `LocalStack`."""
    options = argparse.ArgumentParser(prog="python -m paystep_local.stripe_chaos_proxy")
    options.add_argument("--upstream", required=True, help="localstripe's base URL")
    options.add_argument("--port", type=int, default=0)
    options.add_argument(
        "--search-lag-s",
        type=float,
        default=0.0,
        help="seconds after its create before a PaymentIntent is found by search",
    )
    args = options.parse_args(argv)
    with StripeChaosProxy(args.upstream, search_lag_s=args.search_lag_s, port=args.port) as proxy:
        print(f"listening on {proxy.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
