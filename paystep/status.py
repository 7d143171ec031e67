"""`paystep status ORDER_ID`: where an order's payment is, read from DynamoDB, Step Functions
and Stripe, and said in one verdict a script can act on (the exit code).

It only reads: `GetItem` on the orders and inventory tables, `DescribeExecution` and
`GetExecutionHistory` on the state machine's executions, and on Stripe the PaymentIntents
(retrieve, search) and their refunds (list), which a restricted key with read access to
PaymentIntents and Refunds allows (https://docs.stripe.com/keys/restricted-api-keys).

Where each part comes from:

- the order's row: its status, claim and held items, and `executions`, every execution
  that ever claimed it; the current stock of each held SKU;
- the executions: those of the row, the one named after the order (what `paystep pay`
  starts when no `--execution-name` is given: an order refused before its claim, out of
  stock or invalid, has no row) and those the order's PaymentIntents name;
- the PaymentIntents: Stripe Search on the `order_id` metadata the worker writes, plus
  the one the row names (the payment kept or refunded), since search results can lag writes
  by up to a minute (https://docs.stripe.com/search#data-freshness).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeVar

import aiohttp
import stripe
from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import TypeAdapter, ValidationError, field_validator

from paystep_common.clients import aws_config, aws_session, stripe_client
from paystep_common.retry import CONTROL_PLANE, STRIPE_RECONCILE
from paystep_common.settings import EXIT_BAD_SETTINGS, OrderTablesSettings, StripeSettings
from statemachine import errors, metadata, orders
from statemachine.executions import ENDED
from statemachine.models import OrderId

Verdict = Literal["paid", "not_paid", "in_progress", "attention", "unknown"]

# The exit code of each verdict; 2 is a bad argument or setting, as for every command.
EXIT_CODES: Final[Mapping[Verdict, int]] = {
    "paid": 0,
    "not_paid": 1,
    "in_progress": 3,
    "unknown": 4,
    "attention": 5,
}
EXIT_BAD_ARGUMENTS: Final = EXIT_BAD_SETTINGS
EXIT_UNREADABLE: Final = 6
NOT_FOUND: Final = "NOT_FOUND"
# Row statuses of an open claim: paying, or authorised and not yet captured.
CLAIMED: Final = frozenset({orders.PAYING, orders.AUTHORIZED})
# https://docs.aws.amazon.com/step-functions/latest/apireference/API_GetExecutionHistory.html:
# at most 1,000 events a page. A paystep execution rarely has 100; two pages of the newest
# events name the current state and the last attempt of any.
HISTORY_PAGE: Final = 100
HISTORY_PAGES: Final = 2
# https://docs.stripe.com/search#search-query-language: at most 100 results a page.
SEARCH_PAGE: Final = 100
SEARCH_PAGES: Final = 3
CREATE_STATE: Final = "CreatePayment"
_ORDER_ID: Final[TypeAdapter[str]] = TypeAdapter(OrderId)
_DESERIALIZE: Final = TypeDeserializer().deserialize
T = TypeVar("T")


class StatusSettings(StripeSettings, OrderTablesSettings):
    """The tables, the Stripe key (read access is enough) and the state machine."""

    state_machine_arn: str

    @field_validator("state_machine_arn")
    @classmethod
    def _is_a_state_machine(cls, value: str) -> str:
        parts = value.split(":")
        if len(parts) != 7 or parts[0] != "arn" or parts[5] != "stateMachine":
            raise ValueError("expected arn:aws:states:<region>:<account>:stateMachine:<name>")
        return value


class BadOrderId(ValueError):
    """Not an order id paystep takes: nothing can be found under it."""


@dataclass(frozen=True, slots=True)
class Hold:
    sku: str
    quantity: int
    stock: int | None
    """The SKU's stock now, `None` if its row is gone."""


@dataclass(frozen=True, slots=True)
class OrderRow:
    status: str
    execution_id: str | None
    claim_state: str | None
    claimed_at: str | None
    payment_intent_id: str | None
    paid_at: str | None
    refund_id: str | None
    executions: list[str]
    holds: list[Hold]


@dataclass(frozen=True, slots=True)
class ExecutionView:
    arn: str
    name: str
    status: str
    """Step Functions' status, or `NOT_FOUND` for one it does not know (any longer)."""
    current_state: str | None
    """The state entered last (for an ended execution, the one it ended in)."""
    attempts: int
    """Payment attempts started: the attempt number of the last `CreatePayment` entered."""
    started_at: str | None
    stopped_at: str | None
    error: str | None
    cause: str | None

    @property
    def ended(self) -> bool:
        return self.status in ENDED


@dataclass(frozen=True, slots=True)
class RefundView:
    id: str
    amount: int
    status: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class PaymentError:
    code: str | None
    decline_code: str | None
    message: str | None


@dataclass(frozen=True, slots=True)
class PaymentIntentView:
    id: str
    status: str
    amount: int
    amount_received: int
    currency: str
    capture_method: str | None
    execution: str | None
    attempt: str | None
    created: int
    last_payment_error: PaymentError | None
    refunds: list[RefundView]

    @property
    def refunded(self) -> int:
        return sum(r.amount for r in self.refunds if r.status in ("succeeded", "pending"))

    @property
    def kept(self) -> int:
        """Money taken and not given back (a pending refund counts as given back)."""
        return max(0, self.amount_received - self.refunded)


@dataclass(slots=True)
class OrderStatus:
    order_id: str
    verdict: Verdict = "unknown"
    summary: str = ""
    order: OrderRow | None = None
    executions: list[ExecutionView] = field(default_factory=list)
    payment_intents: list[PaymentIntentView] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    """The sources that could not be read, and why: the verdict may miss what they hold."""

    @property
    def exit_code(self) -> int:
        return EXIT_UNREADABLE if self.unreadable else EXIT_CODES[self.verdict]

    def as_json(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "summary": self.summary,
            "order": asdict(self.order) if self.order else None,
            "executions": [asdict(e) for e in self.executions],
            "payment_intents": [asdict(p) for p in self.payment_intents],
            "unreadable": list(self.unreadable),
        }


def judge(status: OrderStatus) -> None:
    """Set `verdict` and `summary` from what was read.

    `attention` comes first: a refund that failed, or money taken that no paid order
    accounts for once no execution runs (a payment the money rule has not refunded yet,
    or a second charge of a paid order).
    """
    row, runs, intents = status.order, status.executions, status.payment_intents
    failed_refund = [e for e in runs if e.error == errors.REFUND_FAILED]
    # PENDING_REDRIVE (a failed execution being redriven) has not ended: it goes on.
    running = [e for e in runs if e.status not in ENDED and e.status != NOT_FOUND]
    holder = next((e for e in runs if row and e.arn == row.execution_id), None)
    paid_with = row.payment_intent_id if row and row.status == orders.PAID else None
    unmatched = [p for p in intents if p.kept and p.id != paid_with]
    if failed_refund:
        status.verdict = "attention"
        status.summary = (
            f"{failed_refund[-1].name} failed {errors.REFUND_FAILED}: the payment was "
            "kept for an order that is not fulfilled; a person must refund it"
        )
    elif running:
        latest = running[-1]
        status.verdict = "in_progress"
        status.summary = f"{latest.name} is {latest.status} in {latest.current_state or '?'}"
    elif row is not None and row.status in CLAIMED and (holder is None or not holder.ended):
        status.verdict = "in_progress"
        status.summary = f"claimed by {row.execution_id or '?'}, not seen running"
    elif unmatched:
        status.verdict = "attention"
        money = ", ".join(f"{p.id} {p.kept} {p.currency}" for p in unmatched)
        status.summary = f"money kept that no paid order accounts for: {money}"
    elif paid_with:
        status.verdict = "paid"
        status.summary = f"paid by {paid_with}"
    elif row is None and not runs and not intents:
        status.verdict = "unknown"
        status.summary = "no order row, execution or PaymentIntent"
    else:
        status.verdict = "not_paid"
        last = runs[-1] if runs else None
        ended = f"{last.name} ended {last.status} {last.error or ''}".rstrip() if last else ""
        row_text = f"order row {row.status}" if row else "no order row"
        if row is not None and row.status in CLAIMED:
            # An execution stopped from outside never ran its release.
            row_text += ", claimed by an ended execution (paystep reconcile releases it)"
        status.summary = "; ".join(part for part in (ended, row_text) if part)


class StatusReader:
    """Reads one order's view over injected clients (aioboto3 `dynamodb`, `stepfunctions`;
    a `StripeClient`); every source that fails is noted in `unreadable`, never raised."""

    def __init__(
        self, settings: StatusSettings, ddb: Any, sfn: Any, stripe_api: stripe.StripeClient
    ) -> None:
        self._settings = settings
        self._ddb = ddb
        self._sfn = sfn
        self._stripe = stripe_api.v1

    async def read(self, order_id: str) -> OrderStatus:
        try:
            _ORDER_ID.validate_python(order_id)
        except ValidationError:
            raise BadOrderId(f"{order_id!r} is not an order id (1-64 of A-Z a-z 0-9 _ -)") from None
        status = OrderStatus(order_id)
        row, found = await asyncio.gather(
            _guarded(status, "dynamodb", self._order_row(order_id)),
            _guarded(status, "stripe search", self._search(order_id)),
        )
        status.order, intents = row, list(found or [])
        # The row's payment, which a search made just after it may not list yet.
        if row and row.payment_intent_id and row.payment_intent_id not in {p.id for p in intents}:
            intents += (
                await _guarded(status, "stripe", self._retrieve([row.payment_intent_id])) or []
            )
        status.payment_intents = sorted(intents, key=lambda p: (p.created, p.attempt or ""))
        runs = await _guarded(status, "stepfunctions", self._executions(order_id, row, intents))
        status.executions = sorted(runs or [], key=lambda e: e.started_at or "")
        judge(status)
        return status

    # -- DynamoDB ----------------------------------------------------------------------------

    async def _order_row(self, order_id: str) -> OrderRow | None:
        answer = await self._ddb.get_item(
            TableName=self._settings.orders_table,
            Key={"order_id": {"S": order_id}},
            ConsistentRead=True,
        )
        item = answer.get("Item")
        if not item:
            return None
        row = {name: _DESERIALIZE(value) for name, value in item.items()}
        held = row.get("held_items") or []
        stocks = await asyncio.gather(*(self._stock(str(h["sku"])) for h in held))
        return OrderRow(
            status=str(row.get("status", "")),
            execution_id=row.get("execution_id"),
            claim_state=row.get("claim_state"),
            claimed_at=row.get("claimed_at"),
            payment_intent_id=row.get("payment_intent_id"),
            paid_at=row.get("paid_at"),
            refund_id=row.get("refund_id"),
            executions=sorted(row.get("executions") or ()),
            holds=[
                Hold(str(h["sku"]), int(h["quantity"]), stock)
                for h, stock in zip(held, stocks, strict=True)
            ],
        )

    async def _stock(self, sku: str) -> int | None:
        answer = await self._ddb.get_item(
            TableName=self._settings.inventory_table,
            Key={"sku": {"S": sku}},
            ConsistentRead=True,
            ProjectionExpression="stock",
        )
        stock = answer.get("Item", {}).get("stock", {}).get("N")
        return int(stock) if stock is not None else None

    # -- Step Functions ----------------------------------------------------------------------

    async def _executions(
        self, order_id: str, row: OrderRow | None, intents: Iterable[PaymentIntentView]
    ) -> list[ExecutionView]:
        named = list(row.executions) if row else []
        if row and row.execution_id:
            named.append(row.execution_id)
        named += [p.execution for p in intents if p.execution]
        machine = self._settings.state_machine_arn
        # `paystep pay` names the execution after the order unless told otherwise.
        guessed = machine.replace(":stateMachine:", ":execution:", 1) + f":{order_id}"
        arns = list(dict.fromkeys([*named, guessed]))
        found = await asyncio.gather(*(self._execution(arn, arn in named) for arn in arns))
        return [view for view in found if view is not None]

    async def _execution(self, arn: str, named: bool) -> ExecutionView | None:
        try:
            described = await self._sfn.describe_execution(executionArn=arn)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ExecutionDoesNotExist":
                raise
            # Step Functions keeps an ended execution's history for 90 days:
            # https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html
            return _unknown_execution(arn) if named else None
        current, attempts = await self._history(arn)
        return ExecutionView(
            arn=arn,
            name=str(described.get("name") or arn.rsplit(":", 1)[-1]),
            status=str(described["status"]),
            current_state=current,
            attempts=attempts,
            started_at=_when(described.get("startDate")),
            stopped_at=_when(described.get("stopDate")),
            error=described.get("error"),
            cause=described.get("cause"),
        )

    async def _history(self, arn: str) -> tuple[str | None, int]:
        """The state entered last, and the attempt of the last `CreatePayment` entered."""
        events: list[dict[str, Any]] = []
        params: dict[str, Any] = {
            "executionArn": arn,
            "reverseOrder": True,
            "maxResults": HISTORY_PAGE,
            "includeExecutionData": True,
        }
        for _ in range(HISTORY_PAGES):
            page = await self._sfn.get_execution_history(**params)
            events += page.get("events", [])
            if not page.get("nextToken"):
                break
            params["nextToken"] = page["nextToken"]
        # Event ids grow with time: newest first whatever order the pages came in.
        events.sort(key=lambda event: int(event.get("id", 0)), reverse=True)
        entered = [e["stateEnteredEventDetails"] for e in events if "stateEnteredEventDetails" in e]
        current = str(entered[0]["name"]) if entered else None
        attempts = 0
        for details in entered:
            if details.get("name") == CREATE_STATE:
                attempts = _attempt_of(details.get("input"))
                break
        return current, attempts

    # -- Stripe ------------------------------------------------------------------------------

    async def _search(self, order_id: str) -> list[PaymentIntentView]:
        found: list[Any] = []
        params: dict[str, Any] = {"query": metadata.order_query(order_id), "limit": SEARCH_PAGE}
        for _ in range(SEARCH_PAGES):
            page = await self._stripe.payment_intents.search_async(params)  # type: ignore[arg-type]
            found += page.data
            if not page.has_more or not page.next_page:
                break
            params["page"] = page.next_page
        return list(await asyncio.gather(*(self._view(p) for p in found)))

    async def _retrieve(self, ids: Sequence[str]) -> list[PaymentIntentView]:
        intents = await asyncio.gather(
            *(self._stripe.payment_intents.retrieve_async(pi_id) for pi_id in ids)
        )
        return list(await asyncio.gather(*(self._view(p) for p in intents)))

    async def _view(self, pi: stripe.PaymentIntent) -> PaymentIntentView:
        received = int(getattr(pi, "amount_received", 0) or 0)
        # Only a PaymentIntent that received money can have refunds; they are listed, as a
        # PaymentIntent carries none (nor its charges) since API version 2022-11-15.
        refunds: list[RefundView] = []
        if received > 0:
            listed = await self._stripe.refunds.list_async({"payment_intent": pi.id, "limit": 100})
            refunds = [
                RefundView(r.id, int(r.amount), str(r.status), getattr(r, "reason", None))
                for r in listed.data
            ]
        error = getattr(pi, "last_payment_error", None)
        meta = getattr(pi, "metadata", None) or {}
        return PaymentIntentView(
            id=pi.id,
            status=str(pi.status),
            amount=int(pi.amount),
            amount_received=received,
            currency=str(pi.currency),
            capture_method=getattr(pi, "capture_method", None),
            execution=_value(meta, metadata.EXECUTION_KEY),
            attempt=_value(meta, metadata.ATTEMPT_KEY),
            created=int(getattr(pi, "created", 0) or 0),
            last_payment_error=_payment_error(error),
            refunds=refunds,
        )


async def read_status(settings: StatusSettings, order_id: str) -> OrderStatus:
    """The order's view, with clients opened here and closed before returning."""
    session = aws_session()
    config = aws_config(CONTROL_PLANE)
    async with AsyncExitStack() as stack:
        ddb = await stack.enter_async_context(session.client("dynamodb", config=config))
        sfn = await stack.enter_async_context(session.client("stepfunctions", config=config))
        # Owned here, so it is closed here (stripe-python leaves its own session open).
        http = await stack.enter_async_context(aiohttp.ClientSession())
        client = stripe_client(settings, STRIPE_RECONCILE, session=http)
        return await StatusReader(settings, ddb, sfn, client).read(order_id)


# -- rendering ---------------------------------------------------------------------------


def render_table(status: OrderStatus) -> str:
    lines = [f"order {status.order_id}: {status.verdict} (exit {status.exit_code})"]
    lines.append(f"  {status.summary}")
    lines += [f"  could not read {what}" for what in status.unreadable]
    row = status.order
    lines.append("")
    if row is None:
        lines.append("order row: none")
    else:
        parts = [row.status]
        if row.payment_intent_id:
            paid = "paid by" if row.status == orders.PAID else "payment"
            parts.append(f"{paid} {row.payment_intent_id}")
        if row.refund_id:
            parts.append(f"refund {row.refund_id}")
        if row.claim_state:
            parts.append(f"claim {row.claim_state} by {row.execution_id}")
        lines.append("order row: " + ", ".join(parts))
        holds = ", ".join(
            f"{h.sku} x{h.quantity} (stock {'-' if h.stock is None else h.stock})"
            for h in row.holds
        )
        lines.append(f"holds: {holds or 'none'}")
    lines.append("")
    lines.append(
        _columns(
            ("execution", "status", "state", "attempts", "started", "stopped", "error"),
            [
                (
                    e.name,
                    e.status,
                    e.current_state or "-",
                    str(e.attempts),
                    e.started_at or "-",
                    e.stopped_at or "-",
                    e.error or "-",
                )
                for e in status.executions
            ],
        )
    )
    for e in status.executions:
        if e.cause:
            lines.append(f"  {e.name} cause: {e.cause}")
    lines.append("")
    lines.append(
        _columns(
            (
                "PaymentIntent",
                "status",
                "amount",
                "received",
                "refunds",
                "capture",
                "attempt",
                "last error",
            ),
            [
                (
                    p.id,
                    p.status,
                    f"{p.amount} {p.currency}",
                    str(p.amount_received),
                    ", ".join(f"{r.id} {r.amount} {r.status}" for r in p.refunds) or "-",
                    p.capture_method or "-",
                    p.attempt or "-",
                    _error_text(p.last_payment_error),
                )
                for p in status.payment_intents
            ],
        )
    )
    return "\n".join(lines)


def render_json(status: OrderStatus) -> str:
    return json.dumps(status.as_json(), indent=2)


def _columns(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    if not rows:
        return f"{header[0]}: none"
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _error_text(error: PaymentError | None) -> str:
    if error is None:
        return "-"
    codes = "/".join(c for c in (error.code, error.decline_code) if c)
    return f"{codes}: {error.message}" if error.message else codes or "-"


# -- helpers -----------------------------------------------------------------------------


async def _guarded(status: OrderStatus, source: str, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None with `source` noted as unreadable when its service failed."""
    try:
        return await work
    except (ClientError, BotoCoreError, stripe.StripeError) as exc:
        status.unreadable.append(f"{source}: {_reason(exc)}")
        return None


def _value(mapping: Any, key: str) -> str | None:
    """`mapping[key]` of a StripeObject (no `.get`: its attributes are its keys) or a dict."""
    try:
        return str(mapping[key])
    except KeyError:
        return None


def _payment_error(error: Any) -> PaymentError | None:
    if not error:
        return None
    return PaymentError(
        getattr(error, "code", None),
        getattr(error, "decline_code", None),
        getattr(error, "message", None),
    )


def _unknown_execution(arn: str) -> ExecutionView:
    return ExecutionView(arn, arn.rsplit(":", 1)[-1], NOT_FOUND, None, 0, None, None, None, None)


def _attempt_of(state_input: str | None) -> int:
    try:
        attempt = json.loads(state_input or "{}").get("attempt")
    except (ValueError, AttributeError):
        return 0
    return attempt if isinstance(attempt, int) else 0


def _when(value: datetime | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        # botocore gives the local time zone; UTC to the second reads the same everywhere.
        return value.astimezone(UTC).isoformat(timespec="seconds")
    return str(value)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", exc))
    return f"{type(exc).__name__}: {exc}"
