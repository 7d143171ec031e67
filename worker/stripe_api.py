"""The Stripe calls the worker makes, each paced by the budget and timed.

An injected `stripe.StripeClient` (never the global `stripe.api_key`); errors pass
through untouched for `classify` to judge, except that a 429 also slows the pace.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import stripe

from paystep_common.limiter import Budget, refusal
from statemachine.metadata import attempt_query
from worker.metrics import Metrics

T = TypeVar("T")

# https://docs.stripe.com/search#search-query-language: a page holds at most 100 results.
SEARCH_LIMIT: Final = 100


class StripeApi:
    def __init__(self, client: stripe.StripeClient, limit: Budget, metrics: Metrics) -> None:
        self._client = client
        self._limit = limit
        self._metrics = metrics

    async def create_payment_intent(
        self, params: stripe.params.PaymentIntentCreateParams, *, idempotency_key: str
    ) -> stripe.PaymentIntent:
        return await self._call(
            "payment_intents.create",
            lambda: self._client.v1.payment_intents.create_async(
                params, {"idempotency_key": idempotency_key}
            ),
        )

    async def retrieve_payment_intent(self, intent_id: str) -> stripe.PaymentIntent:
        return await self._call(
            "payment_intents.retrieve",
            lambda: self._client.v1.payment_intents.retrieve_async(intent_id),
        )

    async def retrieve_with_charge(self, intent_id: str) -> stripe.PaymentIntent:
        """The PaymentIntent with its latest charge expanded (the card's `capture_before`)."""
        return await self._call(
            "payment_intents.retrieve",
            lambda: self._client.v1.payment_intents.retrieve_async(
                intent_id, {"expand": ["latest_charge"]}
            ),
        )

    async def capture_payment_intent(
        self, intent_id: str, *, idempotency_key: str
    ) -> stripe.PaymentIntent:
        """Capture the whole `amount_capturable` (https://docs.stripe.com/api/payment_intents/capture)."""
        return await self._call(
            "payment_intents.capture",
            lambda: self._client.v1.payment_intents.capture_async(
                intent_id, options={"idempotency_key": idempotency_key}
            ),
        )

    async def find_attempt(self, execution_id: str, attempt: int) -> list[stripe.PaymentIntent]:
        """The PaymentIntents created for this attempt (Search API, eventually consistent).

        Stripe documents search as lagging writes by up to a minute, so callers use it
        only for intents made long before: after a payment wait timed out, or for a
        message older than the idempotency horizon.
        """
        result = await self._call(
            "payment_intents.search",
            lambda: self._client.v1.payment_intents.search_async(
                {"query": attempt_query(execution_id, attempt), "limit": SEARCH_LIMIT}
            ),
        )
        return list(result.data)

    async def cancel_payment_intent(
        self, intent_id: str, *, idempotency_key: str, cancellation_reason: str | None = None
    ) -> stripe.PaymentIntent:
        params: stripe.params.PaymentIntentCancelParams = {}
        if cancellation_reason is not None:
            params["cancellation_reason"] = cancellation_reason
        return await self._call(
            "payment_intents.cancel",
            lambda: self._client.v1.payment_intents.cancel_async(
                intent_id, params, {"idempotency_key": idempotency_key}
            ),
        )

    async def list_refunds(self, intent_id: str) -> list[stripe.Refund]:
        result = await self._call(
            "refunds.list",
            lambda: self._client.v1.refunds.list_async({"payment_intent": intent_id, "limit": 100}),
        )
        return list(result.data)

    async def create_refund(
        self, params: stripe.params.RefundCreateParams, *, idempotency_key: str
    ) -> stripe.Refund:
        return await self._call(
            "refunds.create",
            lambda: self._client.v1.refunds.create_async(
                params, {"idempotency_key": idempotency_key}
            ),
        )

    async def update_refund_metadata(self, refund_id: str, values: dict[str, str]) -> stripe.Refund:
        return await self._call(
            "refunds.update",
            lambda: self._client.v1.refunds.update_async(refund_id, {"metadata": values}),
        )

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        ticket = await self._limit.acquire(operation)
        started = time.perf_counter()
        result = "error"
        refused_by = None
        try:
            value = await call()
            result = "ok"
            return value
        except stripe.RateLimitError as exc:
            result = "throttled"
            refused_by = refusal(exc)
            self._metrics.stripe_throttled.inc()
            raise
        except stripe.StripeError as exc:
            result = str(exc.http_status or "connection")
            raise
        finally:
            self._limit.release(ticket, refused_by=refused_by)
            self._metrics.stripe_seconds.labels(operation, result).observe(
                time.perf_counter() - started
            )
