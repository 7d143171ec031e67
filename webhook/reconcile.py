"""`paystep reconcile`: finish payments whose webhook never arrived, at the cost of what is open.

Stripe retries a webhook for three days at most (a few times in test mode), and
an endpoint can be down for a weekend; a bank debit can stay `processing` for
two weeks. Each run acts only where something is unfinished:

1. It lists Stripe's PaymentIntent events since the last run's checkpoint, less an
   overlap for events created late (`webhook.checkpoint`), the executions still
   RUNNING and the statuses of those started in that window (`webhook.listings`:
   paged listings, never one call per finished payment).
2. Open tasks: for each running execution, the latest event of its current attempt
   goes through exactly the webhook's own mapping (`webhook.mapping.handle_event`):
   the token comes from that event's own snapshot, a closed task answers "already
   closed", and a success whose task is closed goes to the worker as a payment to
   check. A running execution without an event in the window has its PaymentIntents
   searched, and their current state stands for the event. A task known closed (a
   callback taken, or refused as closed, by an earlier run) is never sent to again.
3. Orphan payments (the money rule): a PaymentIntent that succeeded for an execution
   that has ended without keeping it goes to the worker as a payment to check (it
   keeps or refunds it, once). An execution that SUCCEEDED with exactly one
   succeeded PaymentIntent kept that one; any other case asks `DescribeExecution`.
4. Holds: the stock of open claims whose execution has ended goes back, and the
   authorisation such a claim held uncaptured (manual capture) is canceled
   (`webhook.authorizations`). Whether it ended is asked of Step Functions, never
   judged by the claim's age (a bank debit keeps its execution RUNNING for weeks),
   and only for claims whose execution is not in the RUNNING listing.

With `--heartbeat`, open tasks (processing, waiting for the customer) get a
SendTaskHeartbeat at most every `PAYSTEP_RECONCILE_HEARTBEAT_EVERY_S`, so a
HeartbeatSeconds on the payment wait only catches payments that are truly stuck.

`--since DURATION` lists that window instead of the checkpoint's (a person looking
further back); without it and without a checkpoint, the first run lists
`PAYSTEP_RECONCILE_FIRST_WINDOW_S`. Every call is paced (`webhook.call_rates`).

Exit status: 0 when everything was handled or deliberately skipped, 1 when an error
could not be got past (Stripe or Step Functions still failing after their retries;
the run went on past it, and the checkpoint only moves when the listings were
whole), 2 for bad arguments or settings.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import stripe
import structlog
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import CollectorRegistry, Counter, Gauge, pushadd_to_gateway
from pydantic import Field

from paystep_common.clients import aws_config, aws_session, stripe_client
from paystep_common.logging import configure_logging, token_hash
from paystep_common.retry import RECONCILE, STRIPE_RECONCILE
from paystep_common.settings import OrderTablesSettings, StripeSettings, load_settings
from statemachine import metadata
from statemachine.callbacks import CallbackError, CallbackResult, Callbacks
from statemachine.card_budget import CardBudget
from statemachine.executions import Executions, NoSuchExecution
from statemachine.orders import Claim, Orders, Released
from webhook.authorizations import cancel_abandoned
from webhook.call_rates import Call, CallRates
from webhook.checkpoint import CheckpointStore, Memory, task_key
from webhook.checks import CheckError, PaymentChecks, QueueChecks
from webhook.events import MalformedEvent, PaymentIntentSnapshot, StripeEvent, parse_event
from webhook.listings import list_events, payment_intents_of, running_executions, statuses_since
from webhook.mapping import (
    EVENT_TABLE,
    AskCustomer,
    DeclineCounter,
    Heartbeat,
    Ignore,
    Result,
    TokenReader,
    check_task,
    handle_event,
    plan,
)
from webhook.notices import CustomerNotices, NoticeError, TopicNotices
from webhook.settings import EventSettings

log = structlog.get_logger("paystep.reconcile")

# https://docs.stripe.com/api/events: events are listable for 30 days.
STRIPE_EVENTS_RETENTION_S: Final = 30 * 86_400
SUCCEEDED: Final = "payment_intent.succeeded"
# A PaymentIntent's current status as the event that would have announced it
# (https://docs.stripe.com/payments/paymentintents/lifecycle); the others are the
# worker's own business (created, not yet confirmed).
STATUS_EVENTS: Final = {
    "succeeded": SUCCEEDED,
    "processing": "payment_intent.processing",
    "requires_action": "payment_intent.requires_action",
    "requires_capture": "payment_intent.amount_capturable_updated",
    "canceled": "payment_intent.canceled",
}
_ENDS: Final = frozenset({SUCCEEDED, "payment_intent.payment_failed", "payment_intent.canceled"})
_DURATION: Final = re.compile(r"(\d+)([smhd])")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class ReconcileSettings(StripeSettings, EventSettings, OrderTablesSettings):
    """Stripe key, token keys and state machine as the webhook's, tables; optional Pushgateway;
    the window and the rates of each kind of call (see `webhook.call_rates` for the quotas)."""

    pushgateway_url: str | None = None
    reconcile_concurrency: int = Field(default=8, ge=1)
    reconcile_overlap_s: int = Field(default=900, ge=0)
    reconcile_first_window_s: int = Field(default=72 * 3600, ge=1, le=STRIPE_EVENTS_RETENTION_S)
    reconcile_heartbeat_every_s: int = Field(default=3600, ge=1)
    # Shares of quotas the worker and the webhook also draw on.
    reconcile_stripe_per_s: float = Field(default=20.0, gt=0)
    reconcile_stripe_search_per_s: float = Field(default=10.0, gt=0)
    reconcile_send_task_per_s: float = Field(default=100.0, gt=0)
    reconcile_list_executions_per_s: float = Field(default=1.0, gt=0)
    reconcile_describe_execution_per_s: float = Field(default=5.0, gt=0)

    def call_rates(self) -> CallRates:
        return CallRates(
            {
                Call.STRIPE_LIST: self.reconcile_stripe_per_s,
                Call.STRIPE_SEARCH: self.reconcile_stripe_search_per_s,
                Call.SEND_TASK: self.reconcile_send_task_per_s,
                Call.LIST_EXECUTIONS: self.reconcile_list_executions_per_s,
                Call.DESCRIBE_EXECUTION: self.reconcile_describe_execution_per_s,
            }
        )


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


def window_start(
    settings: ReconcileSettings, since_s: int | None, checkpoint: int | None, now: int
) -> int:
    """Where this run's listing starts: `--since`, else the checkpoint less the overlap."""
    if since_s is not None:
        return now - since_s
    if checkpoint is None:
        return now - settings.reconcile_first_window_s
    return max(checkpoint - settings.reconcile_overlap_s, now - STRIPE_EVENTS_RETENTION_S)


@dataclass
class Summary:
    events_seen: int = 0
    running: int = 0
    callbacks_sent: int = 0
    already_closed: int = 0
    known_closed: int = 0
    skipped: int = 0
    would_send: int = 0
    heartbeats: int = 0
    payment_checks: int = 0
    claims_open: int = 0
    holds_released: int = 0
    would_release: int = 0
    authorizations_canceled: int = 0
    would_cancel: int = 0
    errors: int = 0

    def line(self, dry_run: bool) -> str:
        sent = (
            f"would send {self.would_send}" if dry_run else f"callbacks sent {self.callbacks_sent}"
        )
        released = (
            f"would release {self.would_release}, would cancel {self.would_cancel}"
            if dry_run
            else f"holds released {self.holds_released}, "
            f"authorizations canceled {self.authorizations_canceled}"
        )
        return (
            f"events seen {self.events_seen}, running executions {self.running}, {sent}, "
            f"already closed {self.already_closed}, known closed {self.known_closed}, "
            f"skipped {self.skipped}, heartbeats {self.heartbeats}, "
            f"payments to check {self.payment_checks}, open claims {self.claims_open}, "
            f"{released}, errors {self.errors}"
        )


class PacedCallbacks(Callbacks):
    """SendTask* calls, each waiting for its turn under the SendTask* rate."""

    def __init__(self, sfn_client: Any, rates: CallRates) -> None:
        super().__init__(sfn_client)
        self._rates = rates

    async def _send(self, operation: str, **params: str) -> CallbackResult:
        await self._rates.take(Call.SEND_TASK)
        return await super()._send(operation, **params)


class Claims(Protocol):
    """The open claims and their release (`statemachine.orders.Orders`)."""

    def open_claims(self) -> AsyncIterator[Claim]: ...

    async def release(self, execution_id: str, order_id: str) -> Released | None: ...

    async def authorization(self, execution_id: str, order_id: str) -> str | None: ...


class Checkpoints(Protocol):
    """Where the checkpoint and the memory of tasks live (`webhook.checkpoint`)."""

    async def load(self) -> Memory: ...

    async def save(self, memory: Memory) -> None: ...


@dataclass
class Services:
    """What a run calls, created once per process (or faked by a test or the benchmark)."""

    stripe: stripe.StripeClient
    sfn: Any
    callbacks: Callbacks
    orders: Claims
    checkpoints: Checkpoints
    checks: PaymentChecks
    notices: CustomerNotices
    budget: DeclineCounter
    reader: TokenReader
    rates: CallRates

    @property
    def executions(self) -> Executions:
        return Executions(self.sfn)


@dataclass(frozen=True)
class Found:
    """The latest event of the window for one PaymentIntent of one of our executions."""

    event: StripeEvent
    pi: PaymentIntentSnapshot
    execution: str
    attempt: str

    @property
    def attempt_number(self) -> int:
        return int(self.attempt) if self.attempt.isdecimal() else 0


@dataclass
class Run:
    """One run's inputs and what it learns; see the module docstring for the steps."""

    services: Services
    memory: Memory
    summary: Summary
    now: int
    dry_run: bool
    heartbeat: bool
    heartbeat_every_s: int
    concurrency: int
    running: set[str] = field(default_factory=set)
    statuses: dict[str, str] = field(default_factory=dict)

    async def act(self, events: Sequence[StripeEvent]) -> None:
        by_execution = self._by_execution(latest_per_payment_intent(events))
        quiet = sorted(self.running - by_execution.keys())
        for execution, found in zip(quiet, await self._bounded(self._current, quiet), strict=True):
            if found:
                by_execution[execution] = found
        await self._bounded(lambda item: self._execution(*item), list(by_execution.items()))

    async def _bounded(
        self, work: Callable[[Any], Awaitable[Any]], items: Sequence[Any]
    ) -> list[Any]:
        slots = asyncio.Semaphore(self.concurrency)

        async def one(item: Any) -> Any:
            async with slots:
                return await work(item)

        return list(await asyncio.gather(*(one(item) for item in items)))

    def _by_execution(self, events: Iterable[StripeEvent]) -> dict[str, list[Found]]:
        found: dict[str, list[Found]] = {}
        for event in events:
            try:
                pi = event.payment_intent()
            except MalformedEvent as exc:
                self.summary.skipped += 1
                log.warning("reconcile.event_malformed", event_id=event.id, error=str(exc))
                continue
            execution = pi.metadata.get(metadata.EXECUTION_KEY)
            if not execution or not self.services.reader.owns(execution):
                self.summary.skipped += 1
                continue
            attempt = pi.metadata.get(metadata.ATTEMPT_KEY, "")
            found.setdefault(execution, []).append(Found(event, pi, execution, attempt))
        return found

    async def _current(self, execution: str) -> list[Found]:
        """A running execution without an event in the window: its PaymentIntents as they are."""
        try:
            intents = await payment_intents_of(self.services.stripe, execution, self.services.rates)
        except stripe.StripeError as exc:
            self.summary.errors += 1
            log.error("reconcile.search_failed", execution=execution, error=str(exc))
            return []
        events = [e for e in (as_event(pi, self.now) for pi in intents) if e is not None]
        return self._by_execution(events).get(execution, [])

    async def _execution(self, execution: str, found: list[Found]) -> None:
        found = sorted(found, key=lambda f: (f.attempt_number, f.event.created))
        if execution in self.running:
            # Only the current attempt's task can be open; an earlier attempt that succeeded
            # meanwhile is a second payment, which the worker's check keeps or refunds.
            *earlier, current = found
            await self._settle(execution, [f for f in earlier if f.event.type == SUCCEEDED],
                               kept=None)  # fmt: skip
            await self._answer(current)
            return
        succeeded = [f for f in found if f.event.type == SUCCEEDED]
        unsettled = [f for f in succeeded if f.pi.id not in self.memory.settled]
        if not unsettled:
            return
        status = self.statuses.get(execution)
        if status == "SUCCEEDED" and len(succeeded) == 1:
            return  # it kept the one payment it had: RecordPaid only records a success
        if status in (None, "RUNNING", "SUCCEEDED", "PENDING_REDRIVE"):
            ended, kept = await self._kept(execution)
            if ended:
                await self._settle(execution, unsettled, kept=kept)
            return
        await self._settle(execution, unsettled, kept=None)

    async def _kept(self, execution: str) -> tuple[bool, str | None]:
        """Whether the execution has ended (False when unknown too), and the payment it kept."""
        await self.services.rates.take(Call.DESCRIBE_EXECUTION)
        try:
            described = await self.services.executions.describe(execution)
        except NoSuchExecution:
            log.warning("reconcile.payment_of_unknown_execution", execution=execution)
            return False, None
        except (ClientError, BotoCoreError) as exc:
            self.summary.errors += 1
            log.error("reconcile.describe_failed", execution=execution, error=str(exc))
            return False, None
        return described.ended, described.kept_payment_intent_id

    async def _settle(
        self, execution: str, succeeded: Sequence[Found], *, kept: str | None
    ) -> None:
        """Every succeeded PaymentIntent but the kept one goes to the worker to keep or refund."""
        for found in succeeded:
            if found.pi.id in self.memory.settled:
                continue
            if found.pi.id != kept:
                task = check_task(found.pi, found.event.id)
                if task is None:
                    continue
                bound = log.bind(payment_intent=found.pi.id, execution=execution)
                if self.dry_run:
                    self.summary.would_send += 1
                    bound.info("reconcile.would_check")
                    continue
                try:
                    await self.services.checks.check(task)
                except CheckError as exc:
                    self.summary.errors += 1
                    bound.error("reconcile.payment_check_failed", error=str(exc))
                    continue
                self.summary.payment_checks += 1
                bound.info("reconcile.payment_check_queued")
            if not self.dry_run:
                created = found.event.data.object.get("created")
                self.memory.settled[found.pi.id] = int(created or found.event.created)

    async def _answer(self, found: Found) -> None:
        """The current attempt's task: its callback, or a heartbeat when one is due."""
        key = task_key(found.execution, found.attempt)
        if self.memory.is_closed(key):
            self.summary.known_closed += 1
            return
        event = found.event
        bound = log.bind(event_id=event.id, event_type=event.type, payment_intent=found.pi.id)
        try:
            decision = plan(event, self.services.reader)
        except MalformedEvent as exc:
            self.summary.skipped += 1
            bound.warning("reconcile.event_malformed", error=str(exc))
            return
        if isinstance(decision, Ignore):
            self.summary.skipped += 1
            return
        asked = isinstance(decision.callback, AskCustomer)
        if isinstance(decision.callback, Heartbeat) or (
            asked and self.memory.heartbeat_at(key) is not None
        ):
            await self._heartbeat(key, decision.token, bound)
            return
        if self.dry_run:
            self.summary.would_send += 1
            bound.info("reconcile.would_send", action=decision.callback.action)
            return
        try:
            outcome = await handle_event(
                event,
                self.services.callbacks,
                self.services.reader,
                self.services.checks,
                self.services.notices,
                self.services.budget,
            )
        except MalformedEvent as exc:
            self.summary.skipped += 1
            bound.warning("reconcile.event_malformed", error=str(exc))
            return
        except CallbackError as exc:
            self.summary.errors += 1
            bound.error("reconcile.callback_failed", code=exc.code, error=str(exc))
            return
        except CheckError as exc:
            # The success met a closed task and its check is not queued: not closed for us,
            # the next run tries again.
            self.summary.errors += 1
            bound.error("reconcile.payment_check_failed", error=str(exc))
            return
        except NoticeError as exc:
            self.summary.errors += 1
            bound.error("reconcile.customer_notice_failed", error=str(exc))
            return
        self.summary.payment_checks += outcome.checked
        if outcome.result is Result.DELIVERED:
            self.summary.callbacks_sent += 1
            if asked:
                self.memory.heartbeat(key, self.now)
            else:
                self.memory.close(key, self.now)
        elif outcome.result is Result.ALREADY_CLOSED:
            self.summary.already_closed += 1
            self.memory.close(key, self.now)
        else:
            self.summary.skipped += 1

    async def _heartbeat(self, key: str, token: str, bound: Any) -> None:
        last = self.memory.heartbeat_at(key)
        if not self.heartbeat or (last is not None and self.now - last < self.heartbeat_every_s):
            return
        bound = bound.bind(token_hash=token_hash(token))
        if self.dry_run:
            bound.info("reconcile.would_heartbeat")
            return
        try:
            result = await self.services.callbacks.heartbeat(token)
        except CallbackError as exc:
            self.summary.errors += 1
            bound.error("reconcile.heartbeat_failed", code=exc.code)
            return
        if result is CallbackResult.DELIVERED:
            self.summary.heartbeats += 1
            self.memory.heartbeat(key, self.now)
            bound.info("reconcile.heartbeat_sent")
        else:
            self.summary.already_closed += 1
            self.memory.close(key, self.now)


def latest_per_payment_intent(events: Iterable[StripeEvent]) -> list[StripeEvent]:
    """Each PaymentIntent's latest event; of two in the same second, the one that ends it."""
    latest: dict[str, StripeEvent] = {}
    for event in events:
        pi_id = str(event.data.object.get("id", ""))
        seen = latest.get(pi_id)
        if seen is None or _rank(event) > _rank(seen):
            latest[pi_id] = event
    return list(latest.values())


def _rank(event: StripeEvent) -> tuple[int, bool]:
    return event.created, event.type in _ENDS


def as_event(pi: Mapping[str, Any], now: int) -> StripeEvent | None:
    """A PaymentIntent's current state as the event that would have announced it."""
    status = str(pi.get("status"))
    event_type = STATUS_EVENTS.get(status)
    if status == "requires_payment_method" and pi.get("last_payment_error"):
        event_type = "payment_intent.payment_failed"
    if event_type is None:
        return None
    try:
        return parse_event(
            {
                "id": f"reconcile:{pi.get('id')}:{status}",
                "object": "event",
                "type": event_type,
                "livemode": bool(pi.get("livemode")),
                "created": now,
                "data": {"object": dict(pi)},
            }
        )
    except MalformedEvent:
        return None


async def reconcile_with(
    services: Services,
    settings: ReconcileSettings,
    since_s: int | None,
    *,
    dry_run: bool,
    heartbeat: bool,
    clock: Callable[[], float] = time.time,
) -> Summary:
    """One run over injected services; the checkpoint moves only when every listing was whole."""
    summary = Summary()
    now = int(clock())
    try:
        memory = await services.checkpoints.load()
        loaded = True
    except (ClientError, BotoCoreError) as exc:
        summary.errors += 1
        log.error("reconcile.checkpoint_unreadable", error=str(exc))
        memory, loaded = Memory(), False
    since_ts = window_start(settings, since_s, memory.checkpoint, now)
    run = Run(services, memory, summary, now, dry_run, heartbeat,
              settings.reconcile_heartbeat_every_s, settings.reconcile_concurrency)  # fmt: skip
    # The listings draw on separate quotas: they run side by side.
    (events, whole), listed = await asyncio.gather(
        _events(services, since_ts, summary), _executions(services, since_ts, summary)
    )
    summary.events_seen = len(events)
    if listed is None:
        # Without the running executions nothing can tell an open task from a closed one.
        return summary
    run.running, run.statuses = listed
    summary.running = len(run.running)
    log.info("reconcile.listed", events=len(events), since_ts=since_ts, running=len(run.running))
    await run.act(events)
    # After the callbacks: an execution they let finish has released its own claim.
    await release_ended_claims(
        services.orders,
        services.executions,
        services.stripe,
        summary,
        dry_run=dry_run,
        concurrency=settings.reconcile_concurrency,
        running=run.running,
        rates=services.rates,
    )
    if dry_run or not loaded:
        return summary
    if whole:
        memory.checkpoint = now
    memory.forget(run.running, since_ts)
    try:
        await services.checkpoints.save(memory)
    except (ClientError, BotoCoreError) as exc:
        summary.errors += 1
        log.error("reconcile.checkpoint_unwritable", error=str(exc))
    return summary


async def _events(
    services: Services, since_ts: int, summary: Summary
) -> tuple[list[StripeEvent], bool]:
    """The window's events, and whether the listing was whole."""
    try:
        events = await list_events(services.stripe, since_ts, list(EVENT_TABLE), services.rates)
    except stripe.StripeError as exc:
        summary.errors += 1
        log.error("reconcile.list_failed", error=str(exc))
        return [], False
    return events, True


async def _executions(
    services: Services, since_ts: int, summary: Summary
) -> tuple[set[str], dict[str, str]] | None:
    """The executions still running, and the statuses of those started in the window."""
    machine = services.reader.state_machine_arn
    try:
        running = await running_executions(services.sfn, machine, services.rates)
        statuses = await statuses_since(services.sfn, machine, since_ts, services.rates)
    except (ClientError, BotoCoreError) as exc:
        summary.errors += 1
        log.error("reconcile.executions_list_failed", error=str(exc))
        return None
    return running, statuses


async def release_ended_claims(
    orders: Claims,
    executions: Executions,
    stripe_client: stripe.StripeClient,
    summary: Summary,
    *,
    dry_run: bool,
    concurrency: int,
    running: set[str] | None = None,
    rates: CallRates | None = None,
) -> None:
    """Put back the holds of every open claim whose execution has ended, and cancel the
    authorisation it held uncaptured (`webhook.authorizations`).

    A claim of an execution in `running` is skipped without a call; the others are
    confirmed with DescribeExecution (the execution may have started after the
    listing), at most `concurrency` at a time and paced by `rates`.
    One claim whose calls fail is counted and passed: the run goes on.
    """
    slots = asyncio.Semaphore(concurrency)

    async def one_claim(claim: Claim) -> None:
        async with slots:
            if rates is not None:
                await rates.take(Call.DESCRIBE_EXECUTION)
            ended = await _release_if_ended(claim, orders, executions, summary, dry_run=dry_run)
            if ended is not None:
                await _cancel_authorization(ended, stripe_client, rates, summary, dry_run=dry_run)

    pending: list[asyncio.Task[None]] = []
    try:
        async for claim in orders.open_claims():
            summary.claims_open += 1
            if running is not None and claim.execution_id in running:
                continue
            pending.append(asyncio.create_task(one_claim(claim)))
    except ClientError as exc:
        summary.errors += 1
        log.error("reconcile.claims_list_failed", error=str(exc))
    await asyncio.gather(*pending)


@dataclass(frozen=True)
class Ended:
    """The claim of an ended execution, released (or, in a dry run, to be), and what it held."""

    claim: Claim
    authorization: str | None


async def _release_if_ended(
    claim: Claim, orders: Claims, executions: Executions, summary: Summary, *, dry_run: bool
) -> Ended | None:
    bound = log.bind(order_id=claim.order_id, execution=claim.execution_id,
                     claimed_at=claim.claimed_at)  # fmt: skip
    try:
        execution = await executions.describe(claim.execution_id)
    except NoSuchExecution:
        # Another account or region, or purged after its retention: a person decides.
        bound.warning("reconcile.claim_of_unknown_execution")
        return None
    except ClientError as exc:
        summary.errors += 1
        bound.error("reconcile.describe_failed", error=str(exc))
        return None
    if not execution.ended:
        return None
    bound = bound.bind(status=execution.status)
    try:
        if dry_run:
            authorization = await orders.authorization(claim.execution_id, claim.order_id)
            summary.would_release += 1
            bound.info("reconcile.would_release", authorization=authorization)
            return Ended(claim, authorization)
        released = await orders.release(claim.execution_id, claim.order_id)
    except ClientError as exc:
        summary.errors += 1
        bound.error("reconcile.release_failed", error=str(exc))
        return None
    if released is None:
        return None
    summary.holds_released += 1
    bound.info("reconcile.claim_released", items=released.items,
               authorization=released.authorization)  # fmt: skip
    return Ended(claim, released.authorization)


async def _cancel_authorization(
    ended: Ended,
    stripe_client: stripe.StripeClient,
    rates: CallRates | None,
    summary: Summary,
    *,
    dry_run: bool,
) -> None:
    """Cancel what the ended claim held uncaptured; a failure is an error, the run goes on.

    The holds are back already: a cancel that failed is not tried again by the next run
    (the claim is gone), and the authorisation expires on its own.
    """
    if ended.authorization is None:
        return
    bound = log.bind(order_id=ended.claim.order_id, execution=ended.claim.execution_id,
                     payment_intent=ended.authorization)  # fmt: skip
    try:
        canceled = await cancel_abandoned(stripe_client, ended.authorization, rates,
                                          dry_run=dry_run)  # fmt: skip
    except stripe.StripeError as exc:
        summary.errors += 1
        bound.error("reconcile.authorization_cancel_failed", error=str(exc))
        return
    if not canceled:
        bound.info("reconcile.authorization_not_held")
    elif dry_run:
        summary.would_cancel += 1
        bound.info("reconcile.would_cancel_authorization")
    else:
        summary.authorizations_canceled += 1
        bound.info("reconcile.authorization_canceled")


async def reconcile(
    settings: ReconcileSettings, since_s: int | None, *, dry_run: bool, heartbeat: bool
) -> Summary:
    rates = settings.call_rates()
    async with AsyncExitStack() as stack:
        clients = {}
        for service in ("stepfunctions", "sqs", "dynamodb", "sns"):
            clients[service] = await stack.enter_async_context(
                aws_session().client(service, config=aws_config(RECONCILE))
            )
        ddb = clients["dynamodb"]
        services = Services(
            stripe=stripe_client(settings, STRIPE_RECONCILE),
            sfn=clients["stepfunctions"],
            callbacks=PacedCallbacks(clients["stepfunctions"], rates),
            orders=Orders(ddb, settings.orders_table, settings.inventory_table),
            checkpoints=CheckpointStore(ddb, settings.orders_table),
            checks=QueueChecks(clients["sqs"], settings.queue_url),
            notices=TopicNotices(clients["sns"], settings.notifications_topic_arn),
            budget=CardBudget(ddb, settings.card_attempts_table, settings.budgets),
            reader=TokenReader.from_settings(settings),
            rates=rates,
        )
        return await reconcile_with(
            services, settings, since_s, dry_run=dry_run, heartbeat=heartbeat
        )
    raise AssertionError("unreachable")  # pragma: no cover


def _push_metrics(settings: ReconcileSettings, summary: Summary) -> None:
    """A CronJob ends before any scrape: push its figures to the Pushgateway.

    Pushed with POST (`pushadd`), which replaces only the metrics pushed: a failed run
    leaves the last success's timestamp in place, so staleness is measured from it.
    """
    if not settings.pushgateway_url:
        return
    registry = CollectorRegistry()
    counts = Counter(
        "paystep_reconcile_events",
        "What the last run did, by result.",
        ["result"],
        registry=registry,
    )
    results = {
        "delivered": summary.callbacks_sent,
        "already_closed": summary.already_closed,
        "known_closed": summary.known_closed,
        "heartbeat": summary.heartbeats,
        "payment_check": summary.payment_checks,
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
    Counter(
        "paystep_reconcile_authorizations_canceled",
        "Uncaptured authorisations of ended executions the last run canceled.",
        registry=registry,
    ).inc(summary.authorizations_canceled)
    Gauge(
        "paystep_reconcile_last_run_timestamp_seconds",
        "End of the last run, failed or not.",
        registry=registry,
    ).set_to_current_time()
    if not summary.errors:
        Gauge(
            "paystep_reconcile_last_success_timestamp_seconds",
            "End of the last run that met no error.",
            registry=registry,
        ).set_to_current_time()
    try:
        pushadd_to_gateway(settings.pushgateway_url, job="paystep-reconcile", registry=registry)
    except OSError as exc:
        log.warning("reconcile.push_failed", error=str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paystep reconcile", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--since",
        help="list this window (e.g. 30m, 72h, 3d; at most 30d) instead of the checkpoint's",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be sent, send nothing"
    )
    parser.add_argument(
        "--heartbeat", action="store_true", help="also heartbeat payments still open"
    )
    args = parser.parse_args(argv)
    since_s = None
    if args.since is not None:
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
