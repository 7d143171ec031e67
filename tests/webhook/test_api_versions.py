"""Events rendered in another API version are read, counted and logged once per version.

GIVEN events whose objects Stripe rendered in the endpoint's or the account's version
WHEN the webhook reads them
THEN each parses, is counted by its version, and each version is logged the first time
(https://docs.stripe.com/webhooks/versioning).
"""

from __future__ import annotations

from typing import Any

import structlog

from webhook.events import parse_event
from webhook.metrics import WebhookMetrics


def _event(api_version: str | None) -> dict[str, Any]:
    return {
        "id": "evt_1",
        "object": "event",
        "type": "payment_intent.succeeded",
        "livemode": False,
        "created": 1,
        "api_version": api_version,
        "data": {
            "object": {
                "id": "pi_1",
                "object": "payment_intent",
                "status": "succeeded",
                "amount": 1999,
                "currency": "usd",
            }
        },
    }


def test_each_version_is_counted_and_logged_once() -> None:
    metrics = WebhookMetrics.create()
    versions = ["2017-08-15", "2026-10-28.endive", "2017-08-15", None, "not a version"]
    with structlog.testing.capture_logs() as logs:
        for version in versions:
            event = parse_event(_event(version))
            assert event.payment_intent().id == "pi_1"
            metrics.observe_api_version(event.api_version)

    def count(label: str) -> float | None:
        return metrics.registry.get_sample_value(
            "paystep_webhook_event_api_versions_total", {"api_version": label}
        )

    assert (count("2017-08-15"), count("2026-10-28.endive"), count("other")) == (2.0, 1.0, 2.0)
    logged = [e["api_version"] for e in logs if e["event"] == "webhook.event_api_version"]
    assert logged == ["2017-08-15", "2026-10-28.endive", "other"]
