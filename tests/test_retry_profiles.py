"""Client profiles: a profile's `total_attempts` is the number of requests a failing call makes.

Each client is pointed at a local server that answers every request with a 500
(retried by botocore's standard and adaptive modes, and by stripe-python) and
counts them. The SDKs' backoff sleeps are set to zero, so nothing waits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aioboto3
import pytest
import stripe
from aiohttp import web
from aiohttp.test_utils import TestServer
from botocore.exceptions import ClientError
from botocore.retries.standard import ExponentialBackoff
from stripe._http_client import HTTPClient

from paystep_common.clients import aws_config, stripe_client
from paystep_common.retry import (
    AWS_PROFILES,
    CALLBACKS_WEBHOOK,
    STRIPE_PROFILES,
    ClientProfile,
    StripeProfile,
)
from paystep_common.settings import StripeSettings
from statemachine.seal import new_key
from webhook.app import sfn_config
from webhook.settings import WebhookSettings

# What a webhook cannot start without, beside its Stripe secrets.
WEBHOOK_REQUIRED = {
    "token_keys": new_key(),
    "state_machine_arn": "arn:aws:states:us-east-1:123456789012:stateMachine:paystep",
    "queue_url": "http://sqs.local/123456789012/paystep-tasks",
    "notifications_topic_arn": "arn:aws:sns:us-east-1:123456789012:paystep-notifications",
    "card_attempts_table": "paystep-card-attempts",
}


@dataclass
class FailingServer:
    url: str
    requests: int = 0


@pytest.fixture
async def failing_server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FailingServer]:
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.0)
    monkeypatch.setattr(HTTPClient, "_sleep_time_seconds", lambda self, *args: 0.0)
    state = FailingServer("")

    async def fail(request: web.Request) -> web.Response:
        state.requests += 1
        return web.json_response(
            {"__type": "InternalFailure", "message": "down", "error": {"type": "api_error"}},
            status=500,
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fail)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url(""))
    yield state
    await server.close()


async def requests_of_a_failing_aws_call(server: FailingServer, config: object) -> int:
    async with aioboto3.Session().client(
        "stepfunctions",
        region_name="us-east-1",
        endpoint_url=server.url,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=config,
    ) as sfn:
        with pytest.raises(ClientError):
            await sfn.list_state_machines()
    return server.requests


@pytest.mark.parametrize("profile", AWS_PROFILES, ids=lambda profile: profile.name)
async def test_an_aws_profile_makes_its_total_attempts(
    profile: ClientProfile, failing_server: FailingServer
) -> None:
    assert await requests_of_a_failing_aws_call(failing_server, aws_config(profile)) == (
        profile.total_attempts
    )


@pytest.mark.parametrize("profile", AWS_PROFILES, ids=lambda profile: profile.name)
def test_an_aws_profile_sets_its_mode_timeouts_and_pool(profile: ClientProfile) -> None:
    config = aws_config(profile)
    assert config.retries == {"mode": profile.mode, "total_max_attempts": profile.total_attempts}
    assert (config.connect_timeout, config.read_timeout) == (
        profile.connect_timeout_s,
        profile.read_timeout_s,
    )
    assert config.max_pool_connections == profile.max_pool_connections


@pytest.mark.parametrize("attempts", [1, 2, 4])
async def test_the_webhook_settings_tune_its_callback_attempts(
    attempts: int, failing_server: FailingServer
) -> None:
    settings = WebhookSettings(
        webhook_secrets="whsec_test",  # type: ignore[arg-type]  # parsed like the env var
        **WEBHOOK_REQUIRED,
        webhook_sfn_attempts=attempts,
        webhook_sfn_timeout_s=1.5,
    )
    config = sfn_config(settings)
    assert await requests_of_a_failing_aws_call(failing_server, config) == attempts
    assert config.retries["mode"] == CALLBACKS_WEBHOOK.mode
    assert (config.connect_timeout, config.read_timeout) == (1.5, 1.5)


def test_the_webhook_settings_default_to_the_profile() -> None:
    settings = WebhookSettings(webhook_secrets="whsec_test", **WEBHOOK_REQUIRED)  # type: ignore[arg-type]
    assert settings.webhook_sfn_attempts == CALLBACKS_WEBHOOK.total_attempts
    assert settings.webhook_sfn_timeout_s == CALLBACKS_WEBHOOK.read_timeout_s


@pytest.mark.parametrize("profile", STRIPE_PROFILES, ids=lambda profile: profile.name)
async def test_a_stripe_profile_makes_its_total_attempts(
    profile: StripeProfile, failing_server: FailingServer
) -> None:
    settings = StripeSettings(
        stripe_api_key="sk_test_profiles",  # type: ignore[arg-type]
        stripe_api_base=failing_server.url,
    )
    client = stripe_client(settings, profile)
    with pytest.raises(stripe.APIError):
        await client.v1.balance.retrieve_async()
    assert failing_server.requests == profile.total_attempts


def test_profiles_are_named_once_and_count_at_least_one_attempt() -> None:
    names = [profile.name for profile in (*AWS_PROFILES, *STRIPE_PROFILES)]
    assert len(names) == len(set(names))
    with pytest.raises(ValueError, match="total_attempts"):
        ClientProfile("never", total_attempts=0, mode="standard")
    with pytest.raises(ValueError, match="total_attempts"):
        StripeProfile("never", total_attempts=0)
