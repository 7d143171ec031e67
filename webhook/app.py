"""The public aiohttp app: `POST /webhooks/stripe`, `GET /healthz`, `GET /readyz`.

Every request is hostile until its signature checks out: the raw body is read
(size-limited) and verified before anything parses it. Answers follow what
Stripe does with them: 2xx stops redelivery, so it is sent once an event is
handled or deliberately ignored (whatever its metadata holds: a token damaged,
sealed for another PaymentIntent or under an unknown key, an execution of another
state machine); 4xx for what no retry can fix; 503 only when Step Functions did
not take the callback and a redelivery can. That includes `AccessDenied` on our
own state machine: a wrong IAM policy must not acknowledge events and drop them;
and a payment to check (its task closed) that could not be queued.
https://docs.stripe.com/webhooks#handle-events
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, Final

import structlog
from aiobotocore.config import AioConfig
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from paystep_common.clients import aws_config, aws_session
from paystep_common.retry import CALLBACKS_WEBHOOK
from statemachine.callbacks import CallbackError, Callbacks
from statemachine.card_budget import CardBudget
from webhook import signature
from webhook.checks import CheckError, QueueChecks
from webhook.events import MalformedEvent, StripeEvent, parse_event
from webhook.mapping import IgnoreReason, Result, TokenReader, handle_event
from webhook.metrics import WebhookMetrics
from webhook.notices import NoticeError, TopicNotices
from webhook.readiness import Readiness
from webhook.settings import WebhookSettings

WEBHOOK_PATH: Final = "/webhooks/stripe"

SETTINGS: Final = web.AppKey("settings", WebhookSettings)
METRICS: Final = web.AppKey("metrics", WebhookMetrics)
CALLBACKS: Final = web.AppKey("callbacks", Callbacks)
READINESS: Final = web.AppKey("readiness", Readiness)
READER: Final = web.AppKey("reader", TokenReader)
CHECKS: Final = web.AppKey("checks", QueueChecks)
NOTICES: Final = web.AppKey("notices", TopicNotices)
BUDGET: Final = web.AppKey("budget", CardBudget)

log = structlog.get_logger("webhook.app")


def create_app(
    settings: WebhookSettings,
    *,
    sfn_client: Any | None = None,
    sqs_client: Any | None = None,
    sns_client: Any | None = None,
    dynamodb_client: Any | None = None,
    metrics: WebhookMetrics | None = None,
) -> web.Application:
    """The webhook app; the aioboto3 `stepfunctions`, `sqs`, `sns` and `dynamodb` clients
    are opened if None."""
    metrics = metrics or WebhookMetrics.create()
    app = web.Application(
        client_max_size=settings.webhook_max_body_bytes, middlewares=[_count_responses(metrics)]
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[READER] = TokenReader.from_settings(settings)
    app.cleanup_ctx.append(_aws_clients(sfn_client, sqs_client, sns_client, dynamodb_client))
    app.router.add_post(WEBHOOK_PATH, receive_event)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def _count_responses(metrics: WebhookMetrics) -> Middleware:
    """Count each answer to a delivery by its status, raised ones (413, 405) included:
    Stripe redelivers on anything but a 2xx, so the mix says what Stripe sees."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != WEBHOOK_PATH:
            return await handler(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            metrics.responses.labels(str(exc.status)).inc()
            raise
        except Exception:
            # aiohttp answers 500 for an exception that escapes the handler.
            metrics.responses.labels("500").inc()
            raise
        metrics.responses.labels(str(response.status)).inc()
        return response

    return middleware


def sfn_config(settings: WebhookSettings) -> AioConfig:
    """The CALLBACKS_WEBHOOK profile (standard retries; it says why), tuned by the settings."""
    return aws_config(
        replace(
            CALLBACKS_WEBHOOK,
            total_attempts=settings.webhook_sfn_attempts,
            connect_timeout_s=settings.webhook_sfn_timeout_s,
            read_timeout_s=settings.webhook_sfn_timeout_s,
        )
    )


def _aws_clients(
    sfn_client: Any | None,
    sqs_client: Any | None,
    sns_client: Any | None,
    dynamodb_client: Any | None,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def context(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        async with contextlib.AsyncExitStack() as stack:
            sfn, sqs, sns, ddb = sfn_client, sqs_client, sns_client, dynamodb_client
            if sfn is None:
                sfn = await stack.enter_async_context(
                    aws_session().client("stepfunctions", config=sfn_config(settings))
                )
            if sqs is None:
                # Same profile as the callbacks: a check is sent while Stripe waits.
                sqs = await stack.enter_async_context(
                    aws_session().client("sqs", config=sfn_config(settings))
                )
            if sns is None:
                # Same profile again: a notice is published while Stripe waits.
                sns = await stack.enter_async_context(
                    aws_session().client("sns", config=sfn_config(settings))
                )
            if ddb is None:
                # And again: a decline is counted against its card while Stripe waits.
                ddb = await stack.enter_async_context(
                    aws_session().client("dynamodb", config=sfn_config(settings))
                )
            failures = app[METRICS].callback_failures
            app[CALLBACKS] = Callbacks(
                sfn, on_failure=lambda action, code: failures.labels(action, code).inc()
            )
            app[BUDGET] = CardBudget(ddb, settings.card_attempts_table, settings.budgets)
            app[NOTICES] = TopicNotices(sns, settings.notifications_topic_arn)
            app[CHECKS] = QueueChecks(sqs, settings.queue_url)
            app[READINESS] = Readiness(sfn, settings.webhook_ready_cache_s)
            yield

    return context


async def receive_event(request: web.Request) -> web.Response:
    settings, metrics = request.app[SETTINGS], request.app[METRICS]
    limit = settings.webhook_max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        # Refuse before reading: the body is not Stripe's, however it is signed.
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    try:
        body = await request.read()  # aiohttp enforces client_max_size for chunked bodies
    except web.RequestPayloadError as exc:
        # aiohttp decodes a Content-Encoding while it reads; a body that does not decode
        # (or a chunked stream that breaks off) is no event, and no retry will change it.
        metrics.signature_failures.labels("unreadable_body").inc()
        log.warning("webhook.body_unreadable", error=str(exc).strip()[:200])
        return _error(400, "unreadable_body")
    secrets = [secret.get_secret_value() for secret in settings.webhook_secrets]
    try:
        text = signature.verify(
            body,
            request.headers.get("Stripe-Signature"),
            secrets,
            settings.webhook_signature_tolerance_s,
        )
    except signature.SignatureError as exc:
        metrics.signature_failures.labels(exc.reason).inc()
        log.warning("webhook.signature_rejected", reason=exc.reason, body_bytes=len(body))
        return _error(400, "invalid_signature")

    try:
        event = parse_event(text)
    except MalformedEvent as exc:
        metrics.count_event("unknown", "malformed")
        log.warning("webhook.event_malformed", detail=str(exc)[:300])
        return _error(400, "malformed_event")
    metrics.observe_api_version(event.api_version)

    expected = settings.expected_mode
    if expected is not None and event.livemode != (expected == "live"):
        metrics.count_event(event.type, "wrong_mode")
        log.warning(
            "webhook.event_refused",
            event_id=event.id,
            event_type=event.type,
            livemode=event.livemode,
            expected_mode=expected,
        )
        return _error(400, "wrong_mode")

    return await _dispatch(request.app, event)


async def _dispatch(app: web.Application, event: StripeEvent) -> web.Response:
    metrics = app[METRICS]
    try:
        outcome = await handle_event(
            event, app[CALLBACKS], app[READER], app[CHECKS], app[NOTICES], app[BUDGET]
        )
    except MalformedEvent as exc:
        metrics.count_event(event.type, "malformed")
        log.warning(
            "webhook.event_malformed",
            event_id=event.id,
            event_type=event.type,
            detail=str(exc)[:300],
        )
        return _error(400, "malformed_event")
    except CallbackError as exc:
        metrics.count_event(event.type, "callback_failed")
        return _error(503, "throttled" if exc.throttled else "step_functions_unavailable")
    except CheckError as exc:
        # The payment must reach the worker to be kept or refunded: Stripe sends it again.
        metrics.count_event(event.type, "check_failed")
        log.warning("webhook.payment_check_failed", event_id=event.id, error=str(exc)[:300])
        return _error(503, "queue_unavailable")
    except NoticeError as exc:
        # The customer must hear of it: Stripe sends the event again (the heartbeat repeats).
        metrics.count_event(event.type, "notice_failed")
        log.warning("webhook.customer_notice_failed", event_id=event.id, error=str(exc)[:300])
        return _error(503, "notifications_unavailable")

    metrics.count_event(event.type, outcome.result)
    if outcome.action is not None and outcome.callback_s is not None:
        metrics.callback_seconds.labels(outcome.action, outcome.result).observe(outcome.callback_s)
    if outcome.result is Result.ALREADY_CLOSED and outcome.action is not None:
        metrics.already_closed.labels(outcome.action).inc()
    if outcome.reason is not None:
        metrics.ignored.labels(outcome.reason).inc()
    if outcome.reason is IgnoreReason.MISMATCH:
        metrics.mismatches.inc()
    if outcome.checked:
        metrics.payment_checks.inc()
    answer: dict[str, str] = {"outcome": outcome.result}
    if outcome.action is not None:
        answer["action"] = outcome.action
    if outcome.checked:
        answer["check"] = "queued"
    if outcome.reason is not None:
        answer["reason"] = outcome.reason
    return web.json_response(answer)


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    ok = await request.app[READINESS].check()
    return web.json_response({"ok": ok}, status=200 if ok else 503)


def _error(status: int, error: str) -> web.Response:
    return web.json_response({"error": error}, status=status)
