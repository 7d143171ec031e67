"""Client factories: one aioboto3 session and one Stripe client per process.

Endpoints and region come from the standard AWS environment (`AWS_ENDPOINT_URL`,
`AWS_DEFAULT_REGION`); the Stripe base address only from settings. Retries,
timeouts and pool sizes come from a named profile in `paystep_common.retry`.
"""

from __future__ import annotations

import aioboto3
import aiohttp
import stripe
from aiobotocore.config import AioConfig

from paystep_common.retry import ClientProfile, StripeProfile
from paystep_common.settings import StripeSettings


def aws_session() -> aioboto3.Session:
    """The process's AWS session; clients are opened from it in an AsyncExitStack."""
    return aioboto3.Session()


def aws_config(profile: ClientProfile) -> AioConfig:
    """The SDK config of `profile`; `total_max_attempts` counts the first attempt too."""
    return AioConfig(
        retries={"mode": profile.mode, "total_max_attempts": profile.total_attempts},
        connect_timeout=profile.connect_timeout_s,
        read_timeout=profile.read_timeout_s,
        max_pool_connections=profile.max_pool_connections,
    )


def stripe_client(
    settings: StripeSettings,
    profile: StripeProfile,
    *,
    session: aiohttp.ClientSession | None = None,
) -> stripe.StripeClient:
    """An async-capable StripeClient; never the global `stripe.api_key`.

    `session` lets a caller size and own the connection pool (the worker keeps as
    many connections as tasks in flight; aiohttp's default is 100).
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
        # Pinned, so a new stripe-python or a change of the account's default cannot
        # change what a request means.
        stripe_version=settings.stripe_api_version,
        http_client=stripe.AIOHTTPClient(
            session=session, timeout=aiohttp.ClientTimeout(total=settings.stripe_timeout_s)
        ),
        # Stripe counts the retries after the first attempt.
        max_network_retries=profile.total_attempts - 1,
    )
