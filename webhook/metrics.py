"""The webhook's Prometheus metrics, on their own registry (served on the side port)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from paystep_common.metrics import callback_failures
from webhook.mapping import EVENT_TABLE

# Callbacks are one Step Functions call: milliseconds normally, seconds when throttled.
log = structlog.get_logger("webhook.metrics")

# `2017-08-15` or `2026-10-28.endive` (https://docs.stripe.com/api-versions); anything else is
# counted as "other", so the label set stays bounded.
API_VERSION: Final = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]{1,20})?$")

CALLBACK_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class WebhookMetrics:
    registry: CollectorRegistry
    events: Counter
    callback_seconds: Histogram
    signature_failures: Counter
    already_closed: Counter
    ignored: Counter
    mismatches: Counter
    api_versions: Counter
    payment_checks: Counter
    responses: Counter
    callback_failures: Counter
    _versions_seen: set[str] = field(default_factory=set)

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> WebhookMetrics:
        registry = registry or CollectorRegistry()
        return cls(
            registry=registry,
            events=Counter(
                "paystep_webhook_events",
                "Stripe events received with a valid signature, by type and outcome.",
                ["type", "outcome"],
                registry=registry,
            ),
            callback_seconds=Histogram(
                "paystep_webhook_callback_seconds",
                "Time Step Functions took to answer a SendTask* call (SDK retries included).",
                ["action", "result"],
                buckets=CALLBACK_BUCKETS_S,
                registry=registry,
            ),
            signature_failures=Counter(
                "paystep_webhook_signature_failures",
                "Requests refused before reading the event, by reason.",
                ["reason"],
                registry=registry,
            ),
            already_closed=Counter(
                "paystep_webhook_already_closed",
                "Callbacks on a task that was already closed (duplicate or late event).",
                ["action"],
                registry=registry,
            ),
            ignored=Counter(
                "paystep_webhook_ignored",
                "Events answered 2xx without a callback, by reason (IgnoreReason).",
                ["reason"],
                registry=registry,
            ),
            mismatches=Counter(
                "paystep_webhook_mismatches",
                "Tokens that did not open for the PaymentIntent carrying them: metadata copied "
                "onto another payment, or changed.",
                registry=registry,
            ),
            api_versions=Counter(
                "paystep_webhook_event_api_versions",
                "Events received, by the API version their object is rendered in.",
                ["api_version"],
                registry=registry,
            ),
            payment_checks=Counter(
                "paystep_webhook_payment_checks",
                "Successful payments whose task was already closed, handed to the worker to "
                "keep or refund.",
                registry=registry,
            ),
            responses=Counter(
                "paystep_webhook_responses",
                "Answers to Stripe's deliveries, by HTTP status code (Stripe retries any "
                "answer but a 2xx).",
                ["status"],
                registry=registry,
            ),
            callback_failures=callback_failures(registry),
        )

    def observe_api_version(self, api_version: str | None) -> None:
        """Count the version an event is rendered in; log each version the first time."""
        label = api_version if api_version and API_VERSION.match(api_version) else "other"
        self.api_versions.labels(label).inc()
        if label not in self._versions_seen:
            self._versions_seen.add(label)
            log.info("webhook.event_api_version", api_version=label)

    def count_event(self, event_type: str, outcome: str) -> None:
        # Only the types we act on get their own series: the label set stays bounded.
        label = event_type if event_type in EVENT_TABLE else "other"
        self.events.labels(label, outcome).inc()
