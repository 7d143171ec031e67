"""Webhook settings as the process reads them from the environment."""

from __future__ import annotations

import pytest

from paystep_common.settings import SettingsError, load_settings
from statemachine.seal import new_key
from webhook.settings import WebhookSettings

A, B = "whsec_" + "e5" * 16, "whsec_" + "f6" * 16
KEY = new_key("k1")
MACHINE = "arn:aws:states:us-east-1:123456789012:stateMachine:paystep"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PAYSTEP_STRIPE_API_KEY", "PAYSTEP_WEBHOOK_LIVEMODE", "PAYSTEP_WEBHOOK_SECRETS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PAYSTEP_TOKEN_KEYS", KEY)
    monkeypatch.setenv("PAYSTEP_STATE_MACHINE_ARN", MACHINE)
    monkeypatch.setenv("PAYSTEP_QUEUE_URL", "http://sqs.local/000000000000/tasks")
    monkeypatch.setenv(
        "PAYSTEP_NOTIFICATIONS_TOPIC_ARN", "arn:aws:sns:us-east-1:000000000000:notifications"
    )
    monkeypatch.setenv("PAYSTEP_CARD_ATTEMPTS_TABLE", "paystep-card-attempts")


def test_secrets_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYSTEP_WEBHOOK_SECRETS", f"{A}, {B}")

    settings = WebhookSettings()  # type: ignore[call-arg]

    assert [s.get_secret_value() for s in settings.webhook_secrets] == [A, B]
    assert (settings.webhook_port, settings.metrics_port) == (8080, 9090)
    assert A not in repr(settings)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "Tuple should have at least 1 item after validation, not 0"),
        (" , ", "Tuple should have at least 1 item after validation, not 0"),
        ("sk_test_123", "secret 1 does not start with whsec_"),
        (f"{A},not-a-secret", "secret 2 does not start with whsec_"),
    ],
)
def test_missing_or_foreign_secrets_are_refused_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str, problem: str
) -> None:
    monkeypatch.setenv("PAYSTEP_WEBHOOK_SECRETS", value)

    with pytest.raises(SettingsError) as caught:
        load_settings(WebhookSettings, "webhook")

    assert caught.value.problems == (f"PAYSTEP_WEBHOOK_SECRETS: {problem}",)
    reported = capsys.readouterr().err
    assert reported == f"paystep webhook: PAYSTEP_WEBHOOK_SECRETS: {problem}\n"
    assert "sk_test_123" not in reported and A not in reported


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


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("PAYSTEP_TOKEN_KEYS", "", "expected at least one kid:base64key"),
        ("PAYSTEP_TOKEN_KEYS", KEY.split(":")[1], "key 1: expected kid:base64key"),
        ("PAYSTEP_TOKEN_KEYS", KEY[:-8] + "*", "not base64"),
        ("PAYSTEP_TOKEN_KEYS", KEY[:-8], "60 bytes, expected 64"),
        ("PAYSTEP_STATE_MACHINE_ARN", "arn:aws:states:us-east-1:1:execution:x:y", "expected arn"),
    ],
    ids=["empty", "no-kid", "not-base64", "short", "an-execution"],
)
def test_token_keys_and_state_machine_are_checked_and_a_key_never_echoed(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    value: str,
    problem: str,
) -> None:
    """Rule: the token key is a secret, never logged or echoed (README, deploying)."""
    monkeypatch.setenv("PAYSTEP_WEBHOOK_SECRETS", A)
    monkeypatch.setenv(name, value)

    with pytest.raises(SettingsError) as caught:
        load_settings(WebhookSettings, "webhook")

    (reported,) = caught.value.problems
    assert reported.startswith(f"{name}: ") and problem in reported
    assert KEY.split(":")[1][:20] not in capsys.readouterr().err
