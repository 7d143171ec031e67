"""Client factories: one aioboto3 session and one Stripe client per process.

Endpoints and region come from the standard AWS environment (`AWS_ENDPOINT_URL`,
`AWS_DEFAULT_REGION`); the Stripe base address only from settings.
"""

from __future__ import annotations

from typing import Literal

import aioboto3
import stripe
from aiobotocore.config import AioConfig

from paystep_common.settings import StripeSettings

RetryMode = Literal["standard", "adaptive"]


def aws_session() -> aioboto3.Session:
    """The process's AWS session; clients are opened from it in an AsyncExitStack."""
    return aioboto3.Session()


def aws_config(
    *, retry_mode: RetryMode = "adaptive", max_attempts: int = 5, max_pool_connections: int = 50
) -> AioConfig:
    """SDK config: adaptive retries slow the client down when AWS throttles it."""
    return AioConfig(
        retries={"mode": retry_mode, "max_attempts": max_attempts},
        max_pool_connections=max_pool_connections,
    )


def stripe_client(
    settings: StripeSettings,
    *,
    max_network_retries: int = 0,
    http_client: stripe.HTTPClient | None = None,
) -> stripe.StripeClient:
    """An async-capable StripeClient; never the global `stripe.api_key`.

    Network retries default to 0: callers own their retry policy (the worker
    retries through SQS visibility, the webhook through Stripe's redelivery).
    `http_client` lets a caller size and own the connection pool (the worker keeps
    as many connections as tasks in flight; aiohttp's default is 100).
    """
    base_addresses: dict[str, str] = {}
    if settings.stripe_api_base:
        base_addresses = {
            "api": settings.stripe_api_base,
            "connect": settings.stripe_api_base,
            "files": settings.stripe_api_base,
        }
    return stripe.StripeClient(
        settings.stripe_api_key.get_secret_value(),
        base_addresses=base_addresses,  # type: ignore[arg-type]
        http_client=http_client or stripe.AIOHTTPClient(timeout=settings.stripe_timeout_s),
        max_network_retries=max_network_retries,
    )
