"""`paystep reconcile`: finish payments whose webhook never arrived.

Stripe retries a webhook for three days at most (a few times in test mode), and
an endpoint can be down for a weekend; a bank debit can stay `processing` for
two weeks. This command lists the PaymentIntent events of a window from
Stripe's Events API (kept 30 days) and feeds each one, oldest first, through
exactly the webhook's own mapping (`webhook.mapping.handle_event`). Replaying is
safe: a callback on a task that is already closed answers "already closed"; a
success whose task is closed goes to the worker as a payment to check, as from
the webhook (the worker keeps it or refunds it, once).

Then it puts back the stock of open claims whose execution has ended: the order's
row still says `paying` for an execution that will never release it (stopped by
hand, or ended while its ReleaseOrder could not run). Whether an execution has
ended is asked of Step Functions, never judged by the claim's age: a bank debit
keeps its execution RUNNING for weeks.

With `--heartbeat`, PaymentIntents of the window that are still open (processing,
waiting for the customer) get a SendTaskHeartbeat on their current token, so a
HeartbeatSeconds on the payment wait only catches payments that are truly stuck.

Exit status: 0 when every event was handled or deliberately skipped, 1 when an
error could not be got past (Stripe or Step Functions still failing after their
retries), 2 for bad arguments or settings.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Final

import stripe
import structlog
from botocore.exceptions import ClientError
from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway

from paystep_common.clients import aws_config, aws_session, stripe_client
from paystep_common.logging import configure_logging, token_hash
from paystep_common.retry import RECONCILE, STRIPE_RECONCILE
from paystep_common.settings import OrderTablesSettings, StripeSettings, load_settings
from statemachine.callbacks import CallbackError, CallbackResult, Callbacks
from statemachine.card_budget import CardBudget
from statemachine.executions import Executions, NoSuchExecution
from statemachine.orders import Claim, Orders
from webhook.checks import CheckError, PaymentChecks, QueueChecks
from webhook.events import MalformedEvent, PaymentIntentSnapshot, StripeEvent, parse_event
from webhook.mapping import (
    EVENT_TABLE,
    DeclineCounter,
    Ignore,
    Result,
    TokenReader,
    handle_event,
    plan,
)
from webhook.notices import CustomerNotices, NoticeError, TopicNotices
from webhook.settings import EventSettings

log = structlog.get_logger("paystep.reconcile")

# https://docs.stripe.com/api/events: events are listable for 30 days.
STRIPE_EVENTS_RETENTION_S: Final = 30 * 86_400
STRIPE_PAGE_LIMIT: Final = 100
OPEN_STATUSES: Final = frozenset(
    {"processing", "requires_action", "requires_payment_method", "requires_confirmation"}
)
# Event types that show a PaymentIntent may still be open, listed only for --heartbeat.
OPENING_TYPES: Final = ("payment_intent.created", "payment_intent.processing",
                        "payment_intent.requires_action")  # fmt: skip
_DURATION: Final = re.compile(r"(\d+)([smhd])")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class ReconcileSettings(StripeSettings, EventSettings, OrderTablesSettings):
    """Stripe key, token keys and state machine as the webhook's, tables; optional Pushgateway."""

    pushgateway_url: str | None = None
    reconcile_concurrency: int = 8


def parse_duration(text: str) -> int:
    """`90s`, `30m`, `72h`, `3d`, `1h30m` → seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"--since: expected a duration such as 30m, 72h or 3d, got {text!r}")
    seconds = sum(int(n) * _UNIT_S[u] for n, u in parts)
    if not 0 < seconds <= STRIPE_EVENTS_RETENTION_S:
        raise ValueError(
            f"--since: must be between 1s and 30d (Stripe keeps events 30 days), got {text}"
        )
    return seconds


@dataclass
class Summary:
    events_seen: int = 0
    callbacks_sent: int = 0
    already_closed: int = 0
    skipped: int = 0
    would_send: int = 0
    heartbeats: int = 0
    payment_checks: int = 0
    claims_open: int = 0
    holds_released: int = 0
    would_release: int = 0
    errors: int = 0

    def line(self, dry_run: bool) -> str:
        sent = (
            f"would send {self.would_send}" if dry_run else f"callbacks sent {self.callbacks_sent}"
        )
        released = (
            f"would release {self.would_release}"
            if dry_run
            else f"holds released {self.holds_released}"
        )
        return (
            f"events seen {self.events_seen}, {sent}, already closed {self.already_closed}, "
            f"skipped {self.skipped}, heartbeats {self.heartbeats}, "
            f"payments to check {self.payment_checks}, open claims {self.claims_open}, "
            f"{released}, errors {self.errors}"
        )


async def list_events(
    client: stripe.StripeClient, since_ts: int, types: Sequence[str]
) -> list[StripeEvent]:
    """Every event of `types` created at or after `since_ts`, oldest first.

    One listing per type with `type=` (an exact name works everywhere; `types[]`
    and wildcards are not universal), paginated with `starting_after`.
    """
    found: dict[str, StripeEvent] = {}
    for event_type in types:
        async for raw in _pages(client, {"type": event_type, "created": {"gte": since_ts}}):
            try:
                event = parse_event(raw)
            except MalformedEvent as exc:
                log.warning("reconcile.event_unreadable", event_id=raw.get("id"), error=str(exc))
                continue
            found[event.id] = event
    return sorted(found.values(), key=lambda event: (event.created, event.id))


async def _pages(
    client: stripe.StripeClient, params: dict[str, Any]
) -> AsyncIterator[dict[str, Any]]:
    after: str | None = None
    while True:
        page_params = {**params, "limit": STRIPE_PAGE_LIMIT}
        if after:
            page_params["starting_after"] = after
        page = await client.v1.events.list_async(page_params)  # type: ignore[arg-type]
        for item in page.data:
            yield item.to_dict()
        if not page.has_more or not page.data:
            return
        after = page.data[-1].id


async def replay(
    events: Sequence[StripeEvent],
    callbacks: Callbacks,
    reader: TokenReader,
    checks: PaymentChecks,
    notices: CustomerNotices,
    budget: DeclineCounter,
    summary: Summary,
    *,
    dry_run: bool,
    concurrency: int,
) -> None:
    """Feed events through the webhook's mapping; events of one PaymentIntent stay in order.

    One event that cannot be read or acted on is counted and passed: the run goes on.
    """
    by_pi: dict[str, list[StripeEvent]] = {}
    for event in events:
        pi_id = str(event.data.object.get("id", ""))
        by_pi.setdefault(pi_id, []).append(event)
    slots = asyncio.Semaphore(concurrency)

    async def one_payment_intent(pi_events: list[StripeEvent]) -> None:
        async with slots:
            for event in pi_events:
                await _replay_one(
                    event, callbacks, reader, checks, notices, budget, summary, dry_run=dry_run
                )

    await asyncio.gather(*(one_payment_intent(e) for e in by_pi.values()))


async def _replay_one(
    event: StripeEvent,
    callbacks: Callbacks,
    reader: TokenReader,
    checks: PaymentChecks,
    notices: CustomerNotices,
    budget: DeclineCounter,
    summary: Summary,
    *,
    dry_run: bool,
) -> None:
    summary.events_seen += 1
    bound = log.bind(event_id=event.id, event_type=event.type)
    try:
        if dry_run:
            decision = plan(event, reader)
            if isinstance(decision, Ignore):
                summary.skipped += 1
            else:
                summary.would_send += 1
                bound.info("reconcile.would_send", action=decision.callback.action,
                           payment_intent=decision.payment_intent.id)  # fmt: skip
            return
        outcome = await handle_event(event, callbacks, reader, checks, notices, budget)
    except MalformedEvent as exc:
        summary.skipped += 1
        bound.warning("reconcile.event_malformed", error=str(exc))
        return
    except CallbackError as exc:
        summary.errors += 1
        bound.error("reconcile.callback_failed", code=exc.code, error=str(exc))
        return
    except CheckError as exc:
        summary.errors += 1
        bound.error("reconcile.payment_check_failed", error=str(exc))
        return
    except NoticeError as exc:
        summary.errors += 1
        bound.error("reconcile.customer_notice_failed", error=str(exc))
        return
    summary.payment_checks += outcome.checked
    if outcome.result is Result.DELIVERED:
        summary.callbacks_sent += 1
    elif outcome.result is Result.ALREADY_CLOSED:
        summary.already_closed += 1
    else:
        summary.skipped += 1


async def heartbeat_open(
    client: stripe.StripeClient,
    events: Sequence[StripeEvent],
    callbacks: Callbacks,
    reader: TokenReader,
    summary: Summary,
    *,
    dry_run: bool,
) -> None:
    """SendTaskHeartbeat for PaymentIntents of the window that are still open now.

    Unlike replay, this reads the PaymentIntent fresh: a heartbeat must reach the
    task that is waiting now, and a heartbeat cannot change an outcome.
    """
    pi_ids = sorted({str(e.data.object.get("id")) for e in events if e.data.object.get("id")})
    for pi_id in pi_ids:
        try:
            pi = await client.v1.payment_intents.retrieve_async(pi_id)
        except stripe.StripeError as exc:
            summary.errors += 1
            log.error("reconcile.retrieve_failed", payment_intent=pi_id, error=str(exc))
            continue
        if pi.status not in OPEN_STATUSES:
            continue
        try:
            snapshot = PaymentIntentSnapshot.model_validate(pi.to_dict())
        except ValueError as exc:
            log.warning("reconcile.payment_intent_unreadable", payment_intent=pi_id, error=str(exc))
            continue
        token = reader.read(snapshot, bool(pi.livemode))
        if not isinstance(token, str):
            continue
        bound = log.bind(payment_intent=pi_id, status=pi.status, token_hash=token_hash(token))
        if dry_run:
            bound.info("reconcile.would_heartbeat")
            continue
        try:
            result = await callbacks.heartbeat(token)
        except CallbackError as exc:
            summary.errors += 1
            bound.error("reconcile.heartbeat_failed", code=exc.code)
            continue
        if result is CallbackResult.DELIVERED:
            summary.heartbeats += 1
            bound.info("reconcile.heartbeat_sent")


async def release_ended_claims(
    orders: Orders,
    executions: Executions,
    summary: Summary,
    *,
    dry_run: bool,
    concurrency: int,
) -> None:
    """Put back the holds of every open claim whose execution has ended.

    At most `concurrency` DescribeExecution calls at a time (the API is throttled per
    account: https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html).
    One claim whose calls fail is counted and passed: the run goes on.
    """
    slots = asyncio.Semaphore(concurrency)

    async def one_claim(claim: Claim) -> None:
        async with slots:
            await _release_if_ended(claim, orders, executions, summary, dry_run=dry_run)

    pending: list[asyncio.Task[None]] = []
    try:
        async for claim in orders.open_claims():
            summary.claims_open += 1
            pending.append(asyncio.create_task(one_claim(claim)))
    except ClientError as exc:
        summary.errors += 1
        log.error("reconcile.claims_list_failed", error=str(exc))
    await asyncio.gather(*pending)


async def _release_if_ended(
    claim: Claim, orders: Orders, executions: Executions, summary: Summary, *, dry_run: bool
) -> None:
    bound = log.bind(order_id=claim.order_id, execution=claim.execution_id,
                     claimed_at=claim.claimed_at)  # fmt: skip
    try:
        execution = await executions.describe(claim.execution_id)
    except NoSuchExecution:
        # Another account or region, or purged after its retention: a person decides.
        bound.warning("reconcile.claim_of_unknown_execution")
        return
    except ClientError as exc:
        summary.errors += 1
        bound.error("reconcile.describe_failed", error=str(exc))
        return
    if not execution.ended:
        return
    bound = bound.bind(status=execution.status)
    if dry_run:
        summary.would_release += 1
        bound.info("reconcile.would_release")
        return
    try:
        released = await orders.release(claim.execution_id, claim.order_id)
    except ClientError as exc:
        summary.errors += 1
        bound.error("reconcile.release_failed", error=str(exc))
        return
    if released is not None:
        summary.holds_released += 1
        bound.info("reconcile.claim_released", items=released.items)


async def reconcile(
    settings: ReconcileSettings, since_s: int, *, dry_run: bool, heartbeat: bool
) -> Summary:
    summary = Summary()
    client = stripe_client(settings, STRIPE_RECONCILE)
    async with AsyncExitStack() as stack:
        sfn = await stack.enter_async_context(
            aws_session().client("stepfunctions", config=aws_config(RECONCILE))
        )
        sqs = await stack.enter_async_context(
            aws_session().client("sqs", config=aws_config(RECONCILE))
        )
        ddb = await stack.enter_async_context(
            aws_session().client("dynamodb", config=aws_config(RECONCILE))
        )
        callbacks = Callbacks(sfn)
        sns = await stack.enter_async_context(
            aws_session().client("sns", config=aws_config(RECONCILE))
        )
        checks = QueueChecks(sqs, settings.queue_url)
        notices = TopicNotices(sns, settings.notifications_topic_arn)
        budget = CardBudget(ddb, settings.card_attempts_table, settings.budgets)
        reader = TokenReader.from_settings(settings)
        await _replay_window(client, since_s, callbacks, reader, checks, notices, budget,
                             summary, concurrency=settings.reconcile_concurrency,
                             dry_run=dry_run, heartbeat=heartbeat)  # fmt: skip
        # After the replay: an execution the replay let finish has released its own claim.
        # A Stripe outage does not keep the stock held.
        await release_ended_claims(
            Orders(ddb, settings.orders_table, settings.inventory_table),
            Executions(sfn),
            summary,
            dry_run=dry_run,
            concurrency=settings.reconcile_concurrency,
        )
    return summary


async def _replay_window(
    client: stripe.StripeClient,
    since_s: int,
    callbacks: Callbacks,
    reader: TokenReader,
    checks: PaymentChecks,
    notices: CustomerNotices,
    budget: DeclineCounter,
    summary: Summary,
    *,
    concurrency: int,
    dry_run: bool,
    heartbeat: bool,
) -> None:
    since_ts = int(time.time()) - since_s
    try:
        events = await list_events(client, since_ts, list(EVENT_TABLE))
        opening = await list_events(client, since_ts, OPENING_TYPES) if heartbeat else []
    except stripe.StripeError as exc:
        summary.errors += 1
        log.error("reconcile.list_failed", error=str(exc))
        return
    log.info("reconcile.listed", events=len(events), since_s=since_s)
    await replay(
        events,
        callbacks,
        reader,
        checks,
        notices,
        budget,
        summary,
        dry_run=dry_run,
        concurrency=concurrency,
    )
    if heartbeat:
        await heartbeat_open(
            client, [*events, *opening], callbacks, reader, summary, dry_run=dry_run
        )


def _push_metrics(settings: ReconcileSettings, summary: Summary) -> None:
    """A CronJob ends before any scrape: push its figures to the Pushgateway."""
    if not settings.pushgateway_url:
        return
    registry = CollectorRegistry()
    counts = Counter(
        "paystep_reconcile_events",
        "Events of the last run, by result.",
        ["result"],
        registry=registry,
    )
    results = {
        "delivered": summary.callbacks_sent,
        "already_closed": summary.already_closed,
        "skipped": summary.skipped,
        "error": summary.errors,
    }
    for result, value in results.items():
        counts.labels(result).inc(value)
    Counter(
        "paystep_reconcile_holds_released",
        "Open claims of ended executions whose stock the last run put back.",
        registry=registry,
    ).inc(summary.holds_released)
    Gauge(
        "paystep_reconcile_last_run_timestamp_seconds", "End of the last run.", registry=registry
    ).set_to_current_time()
    try:
        push_to_gateway(settings.pushgateway_url, job="paystep-reconcile", registry=registry)
    except OSError as exc:
        log.warning("reconcile.push_failed", error=str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paystep reconcile", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--since", required=True, help="window to replay, e.g. 30m, 72h, 3d (at most 30d)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be sent, send nothing"
    )
    parser.add_argument(
        "--heartbeat", action="store_true", help="also heartbeat payments still open"
    )
    args = parser.parse_args(argv)
    try:
        since_s = parse_duration(args.since)
    except ValueError as exc:
        print(f"paystep reconcile: {exc}", file=sys.stderr)
        return 2
    settings = load_settings(ReconcileSettings, "reconcile")
    configure_logging(settings)
    summary = asyncio.run(
        reconcile(settings, since_s, dry_run=args.dry_run, heartbeat=args.heartbeat)
    )
    log.info("reconcile.done", dry_run=args.dry_run, **vars(summary))
    _push_metrics(settings, summary)
    print(summary.line(args.dry_run))
    return 1 if summary.errors else 0
