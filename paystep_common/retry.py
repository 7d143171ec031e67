"""Retry and timeout policy of every SDK client, by name: what a call does when AWS or Stripe fail.

A profile counts TOTAL attempts, the first one included (1 = never retried).
botocore has two keys for it: the client config's `retries["max_attempts"]`
counts the retries after the first attempt, `retries["total_max_attempts"]` all
of them; `paystep_common.clients.aws_config` sets the latter, and Stripe's
`max_network_retries` (retries only) is derived the same way.
https://boto3.amazonaws.com/v1/documentation/api/latest/guide/retries.html
https://docs.stripe.com/error-low-level#idempotency

Modes: "standard" retries transient errors with jittered exponential backoff
(at most 20 s apart) within a retry quota; "adaptive" adds a client-side rate
limiter that, once AWS throttles, makes every later call wait for a send token.
Adaptive suits a process that can wait and makes many calls at once; it is wrong
where an answer is due promptly (the webhook).

A setting that tunes a profile (the webhook's attempts and timeout, the worker's
pool) stays a setting and is applied with `dataclasses.replace(PROFILE, ...)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

RetryMode = Literal["standard", "adaptive"]

# botocore's defaults, https://botocore.amazonaws.com/v1/documentation/api/latest/reference/config.html
BOTOCORE_TIMEOUT_S: Final = 60.0
BOTOCORE_POOL_CONNECTIONS: Final = 10


@dataclass(frozen=True, slots=True)
class ClientProfile:
    """An AWS SDK client's retries, timeouts and connection pool."""

    name: str
    total_attempts: int
    mode: RetryMode
    connect_timeout_s: float = BOTOCORE_TIMEOUT_S
    read_timeout_s: float = BOTOCORE_TIMEOUT_S
    max_pool_connections: int = BOTOCORE_POOL_CONNECTIONS

    def __post_init__(self) -> None:
        if self.total_attempts < 1:
            raise ValueError(f"{self.name}: total_attempts counts the first attempt, so >= 1")


@dataclass(frozen=True, slots=True)
class StripeProfile:
    """A Stripe client's network retries; its request timeout is `stripe_timeout_s`.

    stripe-python retries connection errors, 409s and 5xx answers with the same
    idempotency key, so a retried POST cannot charge twice.
    https://github.com/stripe/stripe-python#configuring-automatic-retries
    """

    name: str
    total_attempts: int

    def __post_init__(self) -> None:
        if self.total_attempts < 1:
            raise ValueError(f"{self.name}: total_attempts counts the first attempt, so >= 1")


# -- AWS ----------------------------------------------------------------------------------

# The worker's queue. A failed receive is retried by the consumer's own backoff, and a
# delete or visibility change that never goes out only means a redelivery, which the
# handlers absorb: a few quick attempts. The read timeout outlasts the 20 s long poll.
SQS_CONSUMER: Final = ClientProfile("sqs-consumer", total_attempts=4, mode="standard")

# The worker's callbacks: every task in flight may call back at once, and a task can
# wait (its message stays invisible while it does), so adaptive mode slows the client
# down when Step Functions throttles. The pool is sized to the worker's concurrency.
CALLBACKS_WORKER: Final = ClientProfile("callbacks-worker", total_attempts=6, mode="adaptive")

# The webhook's callbacks: few attempts and short timeouts, because Stripe redelivers
# what fails, with its own backoff over hours. Standard, not adaptive: adaptive mode
# makes each call wait for a send token once Step Functions throttled, with no bound
# but a rate that falls to 0.5 calls/s, so events would queue for tens of seconds,
# past Stripe's delivery timeout; a prompt 503 is the backoff signal that works here.
# Tuned by PAYSTEP_WEBHOOK_SFN_ATTEMPTS and PAYSTEP_WEBHOOK_SFN_TIMEOUT_S.
CALLBACKS_WEBHOOK: Final = ClientProfile(
    "callbacks-webhook",
    total_attempts=3,
    mode="standard",
    connect_timeout_s=5.0,
    read_timeout_s=5.0,
)

# The reconcile job replays many callbacks concurrently and nobody waits on it: adaptive
# mode lets it slow down under throttling instead of spending its attempts.
RECONCILE: Final = ClientProfile("reconcile", total_attempts=6, mode="adaptive")

# Deploy and `paystep pay`: one call at a time from a person's terminal or a pipeline;
# standard retries ride out a throttle or a 5xx.
CONTROL_PLANE: Final = ClientProfile("control-plane", total_attempts=6, mode="standard")

# The local demo: concurrent scenarios share one client per service.
DEMO: Final = ClientProfile("demo", total_attempts=6, mode="standard", max_pool_connections=100)

AWS_PROFILES: Final = (
    SQS_CONSUMER,
    CALLBACKS_WORKER,
    CALLBACKS_WEBHOOK,
    RECONCILE,
    CONTROL_PLANE,
    DEMO,
)

# -- Stripe -------------------------------------------------------------------------------

# The worker never retries in the client: a failed call goes back to `classify`, and
# the task is retried through SQS visibility with the same idempotency key, so the
# slot and the Stripe concurrency limit are not held through a client-side backoff.
STRIPE_WORKER: Final = StripeProfile("stripe-worker", total_attempts=1)

# The reconcile job only lists events: a few retries get it past a blip, and a list
# that still fails is reported and retried by the next run.
STRIPE_RECONCILE: Final = StripeProfile("stripe-reconcile", total_attempts=4)

STRIPE_PROFILES: Final = (STRIPE_WORKER, STRIPE_RECONCILE)
