"""Every command reports a bad setting the same way, and every setting is documented.

GIVEN a command started with a bad or missing `PAYSTEP_*` variable, WHEN it starts,
THEN it writes `paystep COMMAND: VARIABLE: problem` to stderr, one line per
variable, no traceback, and exits 2 before doing anything else.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest
import stripe
from pydantic import SecretStr

from paystep.status import StatusSettings
from paystep_common.clients import stripe_client
from paystep_common.retry import STRIPE_WORKER
from paystep_common.settings import (
    STRIPE_API_VERSION,
    PaystepSettings,
    SettingsError,
    StripeSettings,
    env_name,
    load_settings,
)
from statemachine.seal import new_key
from webhook.reconcile import ReconcileSettings
from webhook.settings import WebhookSettings
from worker.settings import WorkerSettings

SETTINGS: Final[tuple[type[PaystepSettings], ...]] = (
    PaystepSettings,
    WorkerSettings,
    WebhookSettings,
    ReconcileSettings,
    StatusSettings,
)
LOG_LEVEL_LINE: Final = (
    "PAYSTEP_LOG_LEVEL: should be 'debug', 'info', 'warning' or 'error', got 'verbose'"
)
# Set so the lines below stay about one missing and one bad variable each.
SEALING_ENV: Final = {
    "PAYSTEP_TOKEN_KEYS": new_key(),
    "PAYSTEP_STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:p",
}
ALARM_TOPIC_ARN: Final = "arn:aws:sns:us-east-1:123456789012:paystep-alarms"
TABLES_ENV: Final = {
    "PAYSTEP_ORDERS_TABLE": "paystep-orders",
    "PAYSTEP_INVENTORY_TABLE": "paystep-inventory",
}
NOTIFICATIONS_TOPIC_ARN: Final = "arn:aws:sns:us-east-1:123456789012:paystep-notifications"
WORKER_ENV: Final = {
    **SEALING_ENV,
    **TABLES_ENV,
    "PAYSTEP_ALARM_TOPIC_ARN": ALARM_TOPIC_ARN,
    "PAYSTEP_CARD_ATTEMPTS_TABLE": "paystep-card-attempts",
    "PAYSTEP_STRIPE_API_KEY": "sk_test_1",
    "PAYSTEP_WORKER_CONCURRENCY": "abc",
}
WORKER_LINES: Final = (
    "paystep worker: PAYSTEP_QUEUE_URL: field required",
    "paystep worker: PAYSTEP_WORKER_CONCURRENCY: expected an integer, got 'abc'",
)
WEBHOOK_ENV: Final = {
    **SEALING_ENV,
    "PAYSTEP_QUEUE_URL": "http://sqs.local/q",
    "PAYSTEP_NOTIFICATIONS_TOPIC_ARN": NOTIFICATIONS_TOPIC_ARN,
    "PAYSTEP_CARD_ATTEMPTS_TABLE": "paystep-card-attempts",
    "PAYSTEP_WEBHOOK_PORT": "0",
}
WEBHOOK_LINES: Final = (
    "paystep webhook: PAYSTEP_WEBHOOK_SECRETS: field required",
    "paystep webhook: PAYSTEP_WEBHOOK_PORT: should be greater than or equal to 1, got '0'",
)

COMMANDS: Final = [
    pytest.param(["-m", "paystep", "worker"], WORKER_ENV, WORKER_LINES, id="paystep worker"),
    pytest.param(["-m", "worker"], WORKER_ENV, WORKER_LINES, id="python -m worker"),
    pytest.param(["-m", "paystep", "webhook"], WEBHOOK_ENV, WEBHOOK_LINES, id="paystep webhook"),
    pytest.param(["-m", "webhook", "--check"], WEBHOOK_ENV, WEBHOOK_LINES, id="webhook --check"),
    pytest.param(
        ["-m", "paystep", "reconcile", "--since", "1h"],
        {
            **SEALING_ENV,
            **TABLES_ENV,
            "PAYSTEP_QUEUE_URL": "http://sqs.local/q",
            "PAYSTEP_NOTIFICATIONS_TOPIC_ARN": NOTIFICATIONS_TOPIC_ARN,
            "PAYSTEP_CARD_ATTEMPTS_TABLE": "paystep-card-attempts",
            "PAYSTEP_RECONCILE_CONCURRENCY": "many",
        },
        (
            "paystep reconcile: PAYSTEP_STRIPE_API_KEY: field required",
            "paystep reconcile: PAYSTEP_RECONCILE_CONCURRENCY: expected an integer, got 'many'",
        ),
        id="paystep reconcile",
    ),
    *(
        pytest.param(
            ["-m", "paystep", *argv],
            {"PAYSTEP_LOG_LEVEL": "verbose"},
            (f"paystep {argv[0]}: {LOG_LEVEL_LINE}",),
            id=f"paystep {argv[0]}",
        )
        for argv in (["deploy"], ["pay", "--order-id", "o1"], ["demo"], ["dev"])
    ),
]


@pytest.mark.parametrize(("argv", "env", "lines"), COMMANDS)
def test_a_bad_setting_is_reported_by_its_variable_and_exits_2(
    argv: list[str], env: dict[str, str], lines: tuple[str, ...]
) -> None:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("PAYSTEP_")}

    result = subprocess.run(
        [sys.executable, *argv],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (result.returncode, result.stdout) == (2, "")
    assert tuple(result.stderr.splitlines()) == lines


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("PAYSTEP_WORKER_SHUTDOWN_GRACE_S", "soon", "expected a number, got 'soon'"),
        ("PAYSTEP_LOG_FORMAT", "xml", "should be 'json' or 'console', got 'xml'"),
        ("PAYSTEP_WORKER_POLL_WAIT_S", "21", "should be less than or equal to 20, got '21'"),
    ],
)
def test_each_problem_names_the_variable_and_the_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str,
    value: str, problem: str,
) -> None:  # fmt: skip
    monkeypatch.setenv("PAYSTEP_QUEUE_URL", "http://sqs.local/q")
    monkeypatch.setenv("PAYSTEP_ALARM_TOPIC_ARN", ALARM_TOPIC_ARN)
    monkeypatch.setenv("PAYSTEP_CARD_ATTEMPTS_TABLE", "paystep-card-attempts")
    monkeypatch.setenv("PAYSTEP_STRIPE_API_KEY", "sk_test_1")
    monkeypatch.setenv("PAYSTEP_TOKEN_KEYS", SEALING_ENV["PAYSTEP_TOKEN_KEYS"])
    for name, table in TABLES_ENV.items():
        monkeypatch.setenv(name, table)
    monkeypatch.setenv(variable, value)

    with pytest.raises(SettingsError) as caught:
        load_settings(WorkerSettings, "worker")

    assert caught.value.code == 2
    assert caught.value.problems == (f"{variable}: {problem}",)
    assert capsys.readouterr().err == f"paystep worker: {variable}: {problem}\n"


def test_every_setting_is_in_the_readme(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text("utf-8")
    documented = set(re.findall(r"`(PAYSTEP_[A-Z0-9_]+)`", readme))

    variables = {env_name(cls, field) for cls in SETTINGS for field in cls.model_fields}

    assert variables - documented == set()


def test_the_pinned_stripe_version_is_the_one_stripe_python_is_generated_for() -> None:
    # Moving stripe-python in the lock without moving the pin (or back) is a decision:
    # run `make test-stripe` on the new version, then change both.
    assert stripe.api_version == STRIPE_API_VERSION


def test_every_stripe_call_carries_the_configured_version() -> None:
    settings = StripeSettings(
        stripe_api_key=SecretStr("sk_test_x"), stripe_api_version="2024-06-20"
    )
    client = stripe_client(settings, STRIPE_WORKER)
    assert client._requestor._options.stripe_version == "2024-06-20"


@pytest.mark.parametrize(("cls", "command"), [(WorkerSettings, "worker"),
                                              (ReconcileSettings, "reconcile")])  # fmt: skip
def test_the_worker_and_reconcile_need_both_tables(
    monkeypatch: pytest.MonkeyPatch, cls: type[PaystepSettings], command: str
) -> None:
    for name in [*TABLES_ENV, *(n for n in os.environ if n.startswith("PAYSTEP_"))]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PAYSTEP_INVENTORY_TABLE", "paystep-inventory")

    with pytest.raises(SettingsError) as caught:
        load_settings(cls, command)

    assert "PAYSTEP_ORDERS_TABLE: field required" in caught.value.problems
    assert "PAYSTEP_INVENTORY_TABLE: field required" not in caught.value.problems
