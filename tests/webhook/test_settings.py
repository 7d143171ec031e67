"""Webhook settings as the process reads them from the environment."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from webhook.settings import WebhookSettings

A, B = "whsec_" + "e5" * 16, "whsec_" + "f6" * 16


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PAYSTEP_STRIPE_API_KEY", "PAYSTEP_WEBHOOK_LIVEMODE", "PAYSTEP_WEBHOOK_SECRETS"):
        monkeypatch.delenv(name, raising=False)


def test_secrets_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYSTEP_WEBHOOK_SECRETS", f"{A}, {B}")

    settings = WebhookSettings()  # type: ignore[call-arg]

    assert [s.get_secret_value() for s in settings.webhook_secrets] == [A, B]
    assert (settings.webhook_port, settings.metrics_port) == (8080, 9090)
    assert A not in repr(settings)


@pytest.mark.parametrize("value", ["", " , ", "sk_test_123", f"{A},not-a-secret"])
def test_missing_or_foreign_secrets_are_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("PAYSTEP_WEBHOOK_SECRETS", value)

    with pytest.raises(ValidationError):
        WebhookSettings()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        ({}, None),
        ({"PAYSTEP_STRIPE_API_KEY": "sk_live_1"}, "live"),
        ({"PAYSTEP_STRIPE_API_KEY": "rk_test_1"}, "test"),
        ({"PAYSTEP_STRIPE_API_KEY": "sk_live_1", "PAYSTEP_WEBHOOK_LIVEMODE": "false"}, "test"),
    ],
)
def test_the_expected_mode_follows_the_key_unless_set(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], mode: str | None
) -> None:
    monkeypatch.setenv("PAYSTEP_WEBHOOK_SECRETS", A)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    assert WebhookSettings().expected_mode == mode  # type: ignore[call-arg]
