"""Settings of `paystep worker`, read once from `PAYSTEP_*` variables in `main()`."""

from __future__ import annotations

from typing import Final

from pydantic import Field

from paystep_common.settings import (
    SNS_TOPIC_ARN,
    CardBudgetSettings,
    OrderTablesSettings,
    StripeSettings,
    TokenKeySettings,
    stripe_key_mode,
)
from worker.queue import RECEIVE_SLACK_S

# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-visibility-timeout.html
SQS_MAX_VISIBILITY_TIMEOUT_S: Final = 43_200
# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-short-and-long-polling.html
SQS_MAX_WAIT_S: Final = 20
# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html
SQS_MAX_DELAY_S: Final = 900
# https://docs.stripe.com/api/idempotent_requests: keys are pruned once at least 24 hours old;
# an hour of margin covers clock skew and the time the message spent waiting for a slot.
IDEMPOTENCY_HORIZON_S: Final = 23 * 3600
# The last step of a shutdown: the deletes and visibility changes still batched, one
# request per ten messages, sent at once.
SHUTDOWN_RELEASE_S: Final = 5


class WorkerSettings(StripeSettings, TokenKeySettings, OrderTablesSettings, CardBudgetSettings):
    """`PAYSTEP_QUEUE_URL`, `PAYSTEP_WORKER_*`, `PAYSTEP_METRICS_PORT`, Stripe, keys, tables."""

    queue_url: str
    # The stack's alarm topic: every refund, and every refund Stripe refuses, is published.
    alarm_topic_arn: str = Field(pattern=SNS_TOPIC_ARN)
    worker_concurrency: int = Field(default=64, ge=1, le=4096)
    # How long SIGTERM lets the tasks in flight finish; see `shutdown_budget_s`.
    worker_shutdown_grace_s: float = Field(default=25.0, ge=0)
    metrics_port: int = Field(default=9090, ge=1, le=65_535)
    metrics_host: str = "0.0.0.0"
    # Set on every receive, so the worker knows it without reading the queue's attributes.
    worker_visibility_timeout_s: int = Field(default=120, ge=2, le=SQS_MAX_VISIBILITY_TIMEOUT_S)
    # At least 1 s: short polling an empty queue would spin on ReceiveMessage.
    worker_poll_wait_s: int = Field(default=SQS_MAX_WAIT_S, ge=1, le=SQS_MAX_WAIT_S)
    # Retry backoff through visibility: base * 2**(receives - 1), jittered, capped.
    worker_retry_base_s: float = Field(default=2.0, gt=0)
    worker_retry_max_s: float = Field(default=900.0, gt=0, le=SQS_MAX_VISIBILITY_TIMEOUT_S)
    worker_idempotency_horizon_s: float = Field(default=IDEMPOTENCY_HORIZON_S, ge=0)
    # Deletes and visibility changes wait this long for a batch of 10 to fill up.
    worker_batch_delay_s: float = Field(default=0.2, ge=0, le=5)
    # What Stripe lets the account do (https://docs.stripe.com/rate-limits: 100 requests/s
    # in live mode, 25 in a sandbox; 25/s per endpoint) and the share of it this deployment
    # may take; every pod paces its calls within share * limit and finds its part by probing.
    worker_stripe_account_rate_per_s: float = Field(default=100.0, gt=0)
    worker_stripe_endpoint_rate_per_s: float = Field(default=25.0, gt=0)
    worker_stripe_share: float = Field(default=1.0, gt=0, le=1)
    # A payment that succeeded after its task closed, while its execution still runs, is
    # looked at again this much later, until the execution ends or adopts it.
    worker_check_again_s: int = Field(default=300, ge=0, le=SQS_MAX_DELAY_S)

    @property
    def livemode(self) -> bool:
        """Whether the Stripe key makes live payments (a key of no known prefix: test)."""
        return stripe_key_mode(self.stripe_api_key) == "live"

    @property
    def shutdown_budget_s(self) -> float:
        """The longest a worker takes from SIGTERM to its exit.

        The receive in flight is let finish (within the poll wait, plus a round trip)
        while the tasks in flight get the grace, both counted from SIGTERM; then the
        release. The pod's terminationGracePeriodSeconds must exceed this, or the
        kubelet's SIGKILL strands the messages the drain had not handed back yet.
        """
        receive_s = self.worker_poll_wait_s + RECEIVE_SLACK_S
        return max(receive_s, self.worker_shutdown_grace_s) + SHUTDOWN_RELEASE_S
