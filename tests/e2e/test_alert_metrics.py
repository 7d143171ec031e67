"""Breaking a payment on purpose on the local stack moves the metric its alert reads.

GIVEN moto, the local Stripe, `paystep deploy`, one webhook and one worker, all as
processes; the worker talks to Stripe through a proxy that can refuse refunds
WHEN a declined attempt is paid after its execution failed (a late orphan payment),
the same with Stripe refusing the refund, or Stripe signs deliveries with another
secret than the webhook's
THEN the counters the alerts of deploy/k8s/components/monitoring read move, as the
processes serve them on /metrics: `paystep_orphan_payments_total`,
`paystep_worker_refunds_refused_total`, `paystep_webhook_signature_failures_total`
and `paystep_webhook_responses_total{status="400"}`.

Stripe's rules they stand for: a PaymentIntent whose payment failed can be confirmed
again (https://docs.stripe.com/payments/paymentintents/lifecycle); a refund can be
refused, e.g. 400 `charge_disputed` for a disputed charge
(https://docs.stripe.com/error-codes#charge-disputed); an event is signed with the
endpoint's own secret and a signature made with another one does not verify
(https://docs.stripe.com/webhooks#verify-events).
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web

from paystep_local import processes
from paystep_local.localstack import LocalStack, ManagedProcess, http_post
from paystep_local.polling import eventually
from paystep_local.prometheus import metric, scrape
from paystep_local.scenarios import Stack
from paystep_local.threaded_server import ThreadedServer
from statemachine import errors
from tests.e2e.test_money_rule import DECLINING_CARD, DEPLOY_ARGS, _intents, _order, _pay
from tests.support.stacks import deployed_stack, run_scenario

pytestmark = pytest.mark.slow

WRONG_SECRET = "whsec_" + "0" * 32


class RefundRefusing(ThreadedServer):
    """Stripe as the stack runs it, but `POST /v1/refunds` refused while `refusing` is set,
    in Stripe's error shape."""

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream
        self.refusing = threading.Event()

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._relay)
        return app

    async def _relay(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.refusing.is_set() and (request.method, request.path) == ("POST", "/v1/refunds"):
            self._count("refused")
            error = {
                "type": "invalid_request_error",
                "code": "charge_disputed",
                "message": "The charge has been disputed and cannot be refunded.",
            }
            return web.json_response({"error": error}, status=400)
        status, payload, headers = await self.forward(self.upstream, request, body)
        return web.Response(status=status, body=payload, headers=headers)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    folder = tmp_path_factory.mktemp("alerts")
    with deployed_stack(folder, DEPLOY_ARGS, workers=0) as started:
        yield started


@pytest.fixture(scope="module")
def stripe_for_worker(stack: LocalStack) -> Iterator[RefundRefusing]:
    assert stack.stripe_base
    with RefundRefusing(stack.stripe_base) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def worker(stack: LocalStack, stripe_for_worker: RefundRefusing) -> ManagedProcess:
    return processes.start_worker(
        stack,
        {"PAYSTEP_STRIPE_API_BASE": stripe_for_worker.url, "PAYSTEP_WORKER_CHECK_AGAIN_S": "1"},
        ready_path="/healthz",
    )


def _metric(process: ManagedProcess, name: str, **labels: str) -> float:
    return metric(scrape(process.urls["metrics"]), name, default=0, **labels)


def _counted_once_more(process: ManagedProcess, before: float, name: str, **labels: str) -> None:
    """Wait until the breakage is counted: `name{labels}` reaches `before + 1`."""
    eventually(
        lambda: _metric(process, name, **labels),
        until=lambda now: now == before + 1,
        timeout_s=60,
        what=f"{name}{labels} counted once more",
    )


def _webhook(stack: LocalStack) -> ManagedProcess:
    [webhook] = stack.services("webhook")
    return webhook


def _pay_after_the_execution_failed(stack: LocalStack) -> None:
    """A declined order whose last attempt the customer pays once the execution failed."""

    async def scenario(clients: Stack) -> None:
        request = _order(payment_method=DECLINING_CARD)
        done = await clients.wait_done(await clients.start(request), timeout_s=90)
        assert (done["status"], done.get("error")) == ("FAILED", errors.DECLINED)
        *_, last = await _intents(clients, request["order_id"], 2)
        await _pay(clients, last["id"])

    run_scenario(stack, scenario)


def test_a_late_payment_moves_the_orphan_count(stack: LocalStack, worker: ManagedProcess) -> None:
    before = _metric(worker, "paystep_orphan_payments_total", outcome="refunded")

    _pay_after_the_execution_failed(stack)

    _counted_once_more(worker, before, "paystep_orphan_payments_total", outcome="refunded")
    assert _metric(worker, "paystep_worker_refunds_refused_total") == 0


def test_a_refund_stripe_refuses_moves_the_refused_count(
    stack: LocalStack, worker: ManagedProcess, stripe_for_worker: RefundRefusing
) -> None:
    before = _metric(worker, "paystep_worker_refunds_refused_total", task="check_payment")
    stripe_for_worker.refusing.set()
    try:
        _pay_after_the_execution_failed(stack)

        _counted_once_more(
            worker, before, "paystep_worker_refunds_refused_total", task="check_payment"
        )
    finally:
        stripe_for_worker.refusing.clear()
    assert stripe_for_worker.counts()["refused"] >= 1
    assert _metric(worker, "paystep_orphan_payments_total", outcome="refund_failed") >= 1


def _register(stack: LocalStack, url: str, secret: str) -> None:
    """Point localstripe's delivery at `url`, signed with `secret` (as Stripe's endpoint)."""
    assert stack.stripe_base
    http_post(
        f"{stack.stripe_base}/_config/webhooks/paystep",
        urllib.parse.urlencode({"url": url, "secret": secret}).encode(),
        "application/x-www-form-urlencoded",
    )


def test_a_wrong_webhook_secret_moves_signature_failures_and_4xx(stack: LocalStack) -> None:
    webhook = _webhook(stack)
    failures_before = _metric(
        webhook, "paystep_webhook_signature_failures_total", reason="mismatch"
    )
    refused_before = _metric(webhook, "paystep_webhook_responses_total", status="400")
    _register(stack, webhook.urls["webhook"], WRONG_SECRET)
    try:

        async def scenario(clients: Stack) -> None:
            # A payment no execution waits for: its success is delivered all the same.
            await clients.stripe(
                "POST",
                "/v1/payment_intents",
                amount="500",
                currency="usd",
                payment_method="pm_card_visa",
                confirm="true",
            )

        run_scenario(stack, scenario)
        eventually(
            lambda: (
                _metric(webhook, "paystep_webhook_signature_failures_total", reason="mismatch"),
                _metric(webhook, "paystep_webhook_responses_total", status="400"),
            ),
            until=lambda moved: moved[0] > failures_before and moved[1] > refused_before,
            timeout_s=30,
            what="the refused deliveries counted",
        )
    finally:
        _register(stack, webhook.urls["webhook"], stack.webhook_secret)
