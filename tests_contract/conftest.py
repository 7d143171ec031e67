"""The Stripe test-mode account of the contract suite, or a skip saying why there is none."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
import stripe
from pydantic import SecretStr

from paystep_common.clients import stripe_client
from paystep_common.retry import STRIPE_RECONCILE
from paystep_common.settings import StripeSettings

KEY_VARIABLE = "PAYSTEP_STRIPE_TEST_KEY"


@pytest.fixture
def settings() -> StripeSettings:
    key = os.environ.get(KEY_VARIABLE, "")
    if not key:
        pytest.skip(f"{KEY_VARIABLE} is not set: no Stripe test-mode account to run against")
    if not key.startswith(("sk_test_", "rk_test_")):
        pytest.skip(f"{KEY_VARIABLE} is not a test-mode key (sk_test_/rk_test_): refusing")
    return StripeSettings(stripe_api_key=SecretStr(key))


@pytest.fixture
async def client(settings: StripeSettings) -> AsyncIterator[stripe.StripeClient]:
    async with aiohttp.ClientSession() as http:
        yield stripe_client(settings, STRIPE_RECONCILE, session=http)
