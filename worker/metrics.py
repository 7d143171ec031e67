"""Prometheus metrics of one worker process, on its own registry (served on the metrics port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from paystep_common.metrics import callback_failures

STRIPE_LATENCY_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.tasks = Counter(
            "paystep_worker_tasks",
            "Task messages handled, by task type and outcome.",
            ["type", "outcome"],
            registry=r,
        )
        self.in_flight = Gauge(
            "paystep_worker_tasks_in_flight", "Tasks being handled now.", registry=r
        )
        self.stripe_seconds = Histogram(
            "paystep_worker_stripe_request_seconds",
            "Stripe API calls, by operation and result.",
            ["operation", "result"],
            buckets=STRIPE_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.stripe_rate = Gauge(
            "paystep_worker_stripe_rate_per_s",
            "Paced rate of Stripe calls, by limiter (the account, or an operation).",
            ["limiter"],
            registry=r,
        )
        self.orphans = Counter(
            "paystep_orphan_payments",
            "Successful payments no execution keeps, by what became of them "
            "(refunded, already_refunded, refund_failed).",
            ["outcome"],
            registry=r,
        )
        self.refunds_refused = Counter(
            "paystep_worker_refunds_refused",
            "Refunds Stripe refused (a dispute, a balance too low), by task: money kept for "
            "an order that does not keep it, until a person acts.",
            ["task"],
            registry=r,
        )
        self.callback_failures = callback_failures(r)
        self.stripe_throttled = Counter(
            "paystep_worker_stripe_throttled", "Stripe calls answered 429.", registry=r
        )
        self.receives = Counter(
            "paystep_worker_sqs_receives", "ReceiveMessage calls.", ["result"], registry=r
        )
        self.received = Counter(
            "paystep_worker_messages_received", "Messages received.", registry=r
        )
        self.deletes = Counter(
            "paystep_worker_messages_deleted",
            "Messages deleted (in DeleteMessageBatch calls), by result.",
            ["result"],
            registry=r,
        )
        self.visibility_changes = Counter(
            "paystep_worker_visibility_changes",
            "Visibility changes, by reason (extend, retry, release, poison) and result.",
            ["reason", "result"],
            registry=r,
        )
        self.sqs_requests = Counter(
            "paystep_worker_sqs_requests", "SQS API calls, by operation.", ["operation"], registry=r
        )
