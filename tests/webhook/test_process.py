"""The webhook as a real process: localstripe's own signed deliveries, metrics, SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from paystep_common.logging import token_hash
from paystep_local.localstack import LOCAL_STRIPE_KEY, LocalStack
from paystep_local.polling import eventually
from paystep_local.processes import free_port, wait_http
from paystep_local.prometheus import metric, scrape
from paystep_local.sfn_proxy import SfnProxy
from paystep_local.signing import signed
from tests.webhook.conftest import (
    TOKEN_KEYS,
    Waiting,
    event,
    payment_intent,
    sealed_metadata,
    start_waiting,
    wait_done,
)

pytestmark = pytest.mark.timeout(120)


def create_payment_intent(
    stripe_base: str, waiting: Waiting, payment_method: str
) -> dict[str, Any]:
    """What the worker does: a confirmed PaymentIntent carrying the sealed token in its metadata."""
    metadata = sealed_metadata(waiting)
    form = {
        "amount": "1999",
        "currency": "usd",
        "payment_method": payment_method,
        "confirm": "true",
        **{f"metadata[{key}]": value for key, value in metadata.items()},
    }
    request = urllib.request.Request(
        f"{stripe_base}/v1/payment_intents",
        data=urllib.parse.urlencode(form).encode(),
        headers={"Authorization": f"Bearer {LOCAL_STRIPE_KEY}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            created: dict[str, Any] = json.loads(response.read())
            return created
    except urllib.error.HTTPError as exc:  # a declined card answers 402, the intent exists
        return {"error": json.loads(exc.read())["error"]}


def test_localstripe_deliveries_resume_the_executions(
    stack: LocalStack, deployment: dict[str, Any], tmp_path: Path
) -> None:
    # A localstripe of its own: its webhooks reach this test's webhook and nothing else.
    assert stack.aws_endpoint
    with LocalStack(
        tmp_path, aws_endpoint=stack.aws_endpoint, deployment=deployment, token_keys=TOKEN_KEYS
    ) as local:
        stripe_base = local.start_stripe()
        webhook = local.start_webhook()
        paid, declined = start_waiting(deployment), start_waiting(deployment)

        intent = create_payment_intent(stripe_base, paid, "pm_card_visa")
        refusal = create_payment_intent(stripe_base, declined, "pm_card_chargeCustomerFail")

        done = wait_done(paid.execution_arn)
        assert done["status"] == "SUCCEEDED", done
        payment = json.loads(done["output"])["payment"]
        assert (payment["payment_intent_id"], payment["status"]) == (intent["id"], "succeeded")
        assert (payment["amount_received"], payment["currency"]) == (1999, "usd")
        assert payment["latest_charge"].startswith("ch_")
        assert payment["event_id"].startswith("evt_")
        failed = wait_done(declined.execution_arn)
        assert (failed["status"], failed["error"]) == ("FAILED", "Payment.Declined"), failed
        assert json.loads(failed["cause"])["code"] == refusal["error"]["code"]

        figures = scrape(webhook.urls["metrics"])
        assert (
            metric(
                figures,
                "paystep_webhook_events_total",
                outcome="delivered",
                type="payment_intent.succeeded",
            )
            == 1
        )
        assert _check(local, webhook.urls["webhook"]) == 0
        assert webhook.stop() == 0
        assert _check(local, webhook.urls["webhook"]) == 1
        logs = webhook.log_path.read_text()
        assert "webhook.callback_delivered" in logs
        for token in (paid.token, declined.token):
            assert token_hash(token) in logs
            assert token[:100] not in logs


def test_sigterm_stops_accepting_finishes_the_request_in_flight_and_exits_0(
    stack: LocalStack, deployment: dict[str, Any], tmp_path: Path
) -> None:
    assert stack.aws_endpoint
    with (
        SfnProxy(stack.aws_endpoint) as proxy,
        LocalStack(
            tmp_path, aws_endpoint=proxy.url, deployment=deployment, token_keys=TOKEN_KEYS
        ) as local,
    ):
        port = free_port()
        webhook = local.spawn(
            "webhook",
            [sys.executable, "-m", "webhook"],
            env={"PAYSTEP_WEBHOOK_PORT": str(port), "PAYSTEP_METRICS_PORT": str(free_port())},
        )
        wait_http(f"http://127.0.0.1:{port}/healthz", process=webhook.process)
        waiting = start_waiting(deployment)
        body, headers = signed(
            event("payment_intent.succeeded", payment_intent(waiting)), local.webhook_secret
        )
        proxy.delay("SendTaskSuccess", seconds=2.0)
        answers: list[tuple[int, dict[str, Any]]] = []

        def deliver() -> None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/webhooks/stripe", data=body, headers=headers
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                answers.append((response.status, json.loads(response.read())))

        in_flight = threading.Thread(target=deliver)
        in_flight.start()
        eventually(
            lambda: proxy.injected["SendTaskSuccess"] == 1,
            interval_s=0.02,
            what="the callback to reach Step Functions",
        )

        webhook.process.send_signal(signal.SIGTERM)

        eventually(
            lambda: not _accepts(port), interval_s=0.02, what="the webhook to stop accepting"
        )
        assert in_flight.is_alive(), "the request should still be waiting on Step Functions"
        in_flight.join(30)
        assert answers == [(200, {"outcome": "delivered", "action": "succeed"})]
        assert webhook.process.wait(30) == 0
        assert wait_done(waiting.execution_arn)["status"] == "SUCCEEDED"


def _check(local: LocalStack, webhook_url: str) -> int:
    """`python -m webhook --check`, the readiness command of a container probe."""
    port = str(urllib.parse.urlsplit(webhook_url).port)
    env = local.env(PAYSTEP_WEBHOOK_PORT=port)
    return subprocess.run(
        [sys.executable, "-m", "webhook", "--check"], env=env, timeout=30, check=False
    ).returncode


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
