"""Sample payments on a running stack, each with what it must end as, and its check.

Used by `paystep demo` and by the end-to-end tests: a scenario starts a real
execution, plays the customer's part where one is needed (confirming a
PaymentIntent later), waits for the end and reports what it observed in Step
Functions, Stripe, DynamoDB and SNS. `problems` lists every way the observation
differs from what the scenario expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from paystep_common.clients import aws_config, aws_session
from paystep_common.retry import DEMO
from paystep_local.polling import NotInTime, ended, eventually_async
from statemachine.metadata import ATTEMPT_KEY, ORDER_KEY

POLL_S: Final = 0.25
SCENARIO_TIMEOUT_S: Final = 120.0
IBAN_ASYNC_SUCCESS: Final = "DE89370400440532013000"


@dataclass
class Observed:
    """What one payment ended as."""

    order_id: str
    scenario: str
    execution_arn: str = ""
    status: str = ""
    error: str = ""
    cause: str = ""
    output: dict[str, Any] = field(default_factory=dict)
    payment_intents: list[dict[str, Any]] = field(default_factory=list)
    order_row: dict[str, str] = field(default_factory=dict)
    stock: dict[str, int] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def payment_intent(self) -> dict[str, Any]:
        return self.payment_intents[-1] if self.payment_intents else {}

    def expect(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)


class Stack:
    """Clients of a running stack, shared by concurrent scenarios."""

    def __init__(
        self,
        deployment: dict[str, Any],
        stripe_base: str,
        stripe_key: str,
        *,
        message_timeout_s: float = 10.0,
    ) -> None:
        self.deployment = deployment
        self.message_timeout_s = message_timeout_s
        self.stripe_base = stripe_base
        self._stripe_key = stripe_key
        self._exit = AsyncExitStack()
        self.sfn: Any = None
        self.ddb: Any = None
        self.sqs: Any = None
        self.http: aiohttp.ClientSession | None = None
        self._inbox_url = ""
        self._messages: dict[str, list[dict[str, Any]]] = {}
        self._collector: asyncio.Task[None] | None = None
        self._arrived = asyncio.Condition()

    async def __aenter__(self) -> Stack:
        session = aws_session()
        config = aws_config(DEMO)
        self.sfn = await self._exit.enter_async_context(
            session.client("stepfunctions", config=config)
        )
        self.ddb = await self._exit.enter_async_context(session.client("dynamodb", config=config))
        self.sqs = await self._exit.enter_async_context(session.client("sqs", config=config))
        sns = await self._exit.enter_async_context(session.client("sns", config=config))
        self.http = await self._exit.enter_async_context(
            aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self._stripe_key}"},
                timeout=aiohttp.ClientTimeout(total=30),
            )
        )
        name = f"inbox-{uuid.uuid4().hex[:10]}"
        self._inbox_url = (await self.sqs.create_queue(QueueName=name))["QueueUrl"]
        inbox_arn = (
            await self.sqs.get_queue_attributes(
                QueueUrl=self._inbox_url, AttributeNames=["QueueArn"]
            )
        )["Attributes"]["QueueArn"]
        for topic in ("receipts_topic_arn", "notifications_topic_arn", "alarms_topic_arn"):
            await sns.subscribe(
                TopicArn=self.deployment[topic],
                Protocol="sqs",
                Endpoint=inbox_arn,
                Attributes={"RawMessageDelivery": "true"},
            )
        self._collector = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._collector:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        await self._exit.aclose()

    async def _collect(self) -> None:
        """Gather receipts, notifications and alerts, indexed by order."""
        while True:
            answer = await self.sqs.receive_message(
                QueueUrl=self._inbox_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            batch = answer.get("Messages", [])
            async with self._arrived:
                for message in batch:
                    body = json.loads(message["Body"])
                    # Receipts and notifications carry the request, alerts the order's id.
                    order = body.get("request", {}).get("order_id") or body.get("order_id", "")
                    self._messages.setdefault(order, []).append(body)
                self._arrived.notify_all()
            if batch:
                await self.sqs.delete_message_batch(
                    QueueUrl=self._inbox_url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(batch)
                    ],
                )

    def messages(self, order_id: str) -> list[dict[str, Any]]:
        return list(self._messages.get(order_id, []))

    async def wait_messages(self, order_id: str, count: int) -> list[dict[str, Any]]:
        """The order's messages once `count` arrived (or what arrived within
        `message_timeout_s`)."""
        with contextlib.suppress(TimeoutError):
            async with self._arrived:
                await asyncio.wait_for(
                    self._arrived.wait_for(lambda: len(self.messages(order_id)) >= count),
                    self.message_timeout_s,
                )
        return self.messages(order_id)

    # -- Stripe (the emulator's HTTP API, as a client or a customer would use it) --------

    async def stripe(self, method: str, path: str, **form: str) -> dict[str, Any]:
        assert self.http
        async with self.http.request(
            method, f"{self.stripe_base}{path}", data=form or None
        ) as response:
            body: dict[str, Any] = await response.json(content_type=None)
            if response.status >= 400:
                raise RuntimeError(f"Stripe {method} {path}: {response.status} {body}")
            return body

    async def sepa_payment_method(self, iban: str = IBAN_ASYNC_SUCCESS) -> str:
        """A SEPA debit PaymentMethod whose payments settle later, as bank debits do
        (with Stripe's test IBANs: later succeeded, or later failed)."""
        method = await self.stripe(
            "POST",
            "/v1/payment_methods",
            type="sepa_debit",
            **{"sepa_debit[iban]": iban, "billing_details[name]": "Ada Lovelace",
               "billing_details[email]": "ada@example.com"},
        )  # fmt: skip
        method_id: str = method["id"]
        return method_id

    async def pay(self, pi_id: str, payment_method: str = "pm_card_visa") -> dict[str, Any]:
        """The customer confirms the PaymentIntent with `payment_method` (again, after a
        decline: the Payment Element's retry)."""
        return await self.stripe(
            "POST", f"/v1/payment_intents/{pi_id}/confirm", payment_method=payment_method
        )

    async def authenticate(self, pi_id: str) -> dict[str, Any]:
        """The customer passes the authentication a `requires_action` PaymentIntent asks for
        (3D Secure; localstripe's stand-in for the bank's page)."""
        intent = await self.stripe("GET", f"/v1/payment_intents/{pi_id}")
        return await self.stripe(
            "POST",
            f"/v1/payment_intents/{pi_id}/_authenticate",
            client_secret=intent["client_secret"],
            success="true",
        )

    async def refunds_of(self, pi_id: str) -> list[dict[str, Any]]:
        listed = await self.stripe("GET", f"/v1/refunds?payment_intent={pi_id}")
        refunds: list[dict[str, Any]] = listed["data"]
        return refunds

    async def payment_intents(self) -> list[dict[str, Any]]:
        """Every PaymentIntent of the account, newest first."""
        found: list[dict[str, Any]] = []
        after = ""
        while True:
            query = f"?limit=100&starting_after={after}" if after else "?limit=100"
            page = await self.stripe("GET", f"/v1/payment_intents{query}")
            found += page["data"]
            if not page.get("has_more") or not page["data"]:
                return found
            after = page["data"][-1]["id"]

    async def payment_intents_of(self, order_id: str) -> list[dict[str, Any]]:
        """The order's PaymentIntents, in the order of its attempts."""
        return in_attempt_order(
            [pi for pi in await self.payment_intents() if pi["metadata"].get(ORDER_KEY) == order_id]
        )

    # -- AWS -----------------------------------------------------------------------------

    async def put_stock(self, sku: str, stock: int) -> None:
        await self.ddb.put_item(
            TableName=self.deployment["inventory_table"],
            Item={"sku": {"S": sku}, "stock": {"N": str(stock)}},
        )

    async def stock_of(self, sku: str) -> int:
        item = await self.ddb.get_item(
            TableName=self.deployment["inventory_table"], Key={"sku": {"S": sku}}
        )
        return int(item["Item"]["stock"]["N"])

    async def order_row(self, order_id: str) -> dict[str, str]:
        item = await self.ddb.get_item(
            TableName=self.deployment["orders_table"], Key={"order_id": {"S": order_id}}
        )
        return {k: next(iter(v.values())) for k, v in item.get("Item", {}).items()}

    async def start(self, request: dict[str, Any], name: str | None = None) -> str:
        """An execution of `request`, named after its order unless `name` says otherwise."""
        started = await self.sfn.start_execution(
            stateMachineArn=self.deployment["state_machine_arn"],
            name=name or str(request.get("order_id") or uuid.uuid4().hex),
            input=json.dumps(request),
        )
        arn: str = started["executionArn"]
        return arn

    async def wait_done(
        self, execution_arn: str, timeout_s: float = SCENARIO_TIMEOUT_S
    ) -> dict[str, Any]:
        """`DescribeExecution` once the execution ended (or as it is at the deadline)."""

        async def describe() -> dict[str, Any]:
            described: dict[str, Any] = await self.sfn.describe_execution(
                executionArn=execution_arn
            )
            return described

        try:
            return await eventually_async(
                describe, until=ended, timeout_s=timeout_s, interval_s=POLL_S
            )
        except NotInTime as late:
            still: dict[str, Any] = late.last  # type: ignore[assignment]
            return still


def in_attempt_order(payment_intents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        payment_intents, key=lambda pi: (pi["created"], pi["metadata"].get(ATTEMPT_KEY, ""))
    )


Step = Callable[[Stack, Observed, dict[str, Any]], Awaitable[None]]


async def _nothing(stack: Stack, observed: Observed, request: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class Scenario:
    name: str
    request: dict[str, Any]
    status: str
    error: str = ""
    prepare: Step = _nothing
    during: Step = _nothing
    check: Step = _nothing


async def run(stack: Stack, scenario: Scenario, order_id: str | None = None) -> Observed:
    """Run one scenario end to end and report what happened and what differed."""
    order_id = order_id or f"ord_{scenario.name}_{uuid.uuid4().hex[:8]}"
    observed = Observed(order_id=order_id, scenario=scenario.name)
    request = {"order_id": order_id, **scenario.request}
    begun = time.monotonic()
    await scenario.prepare(stack, observed, request)
    observed.execution_arn = await stack.start(request)
    await scenario.during(stack, observed, request)
    described = await stack.wait_done(observed.execution_arn)
    observed.seconds = time.monotonic() - begun
    observe(observed, described, await stack.payment_intents_of(order_id))
    observed.order_row = await stack.order_row(order_id)
    await judge(stack, scenario, observed, request)
    return observed


def observe(
    observed: Observed, described: dict[str, Any], payment_intents: list[dict[str, Any]]
) -> None:
    """Note how the execution (`DescribeExecution`) ended and the order's PaymentIntents."""
    observed.execution_arn = described["executionArn"]
    observed.status = described["status"]
    observed.error = described.get("error", "")
    observed.cause = described.get("cause", "")
    observed.output = json.loads(described.get("output") or "{}")
    observed.payment_intents = in_attempt_order(payment_intents)


async def judge(
    stack: Stack, scenario: Scenario, observed: Observed, request: dict[str, Any]
) -> None:
    """Hold what was observed to what the scenario expects; differences go to `problems`."""
    observed.expect(
        (observed.status, observed.error) == (scenario.status, scenario.error),
        f"ended {observed.status} {observed.error}, expected {scenario.status} {scenario.error}",
    )
    await scenario.check(stack, observed, request)


# -- the demo's scenarios -----------------------------------------------------------------


async def _with_stock(stack: Stack, observed: Observed, request: dict[str, Any]) -> None:
    for item in request.get("items", []):
        sku = item["sku"]
        # Each run seeds its own SKU so concurrent payments never share stock.
        await stack.put_stock(sku, 10 if "plenty" in sku else 0)
        observed.stock[sku] = await stack.stock_of(sku)


async def _check_paid(stack: Stack, observed: Observed, request: dict[str, Any]) -> None:
    pi = observed.payment_intent
    observed.expect(pi.get("status") == "succeeded", f"PaymentIntent is {pi.get('status')}")
    observed.expect(
        len(observed.payment_intents) == 1, f"{len(observed.payment_intents)} PaymentIntents"
    )
    observed.expect(
        observed.order_row.get("status") == "paid"
        and observed.order_row.get("payment_intent_id") == pi.get("id"),
        f"order row is {observed.order_row}",
    )
    observed.expect(
        observed.output.get("payment", {}).get("payment_intent_id") == pi.get("id"),
        "output names another PaymentIntent",
    )
    for item in request.get("items", []):
        before = observed.stock[item["sku"]]
        after = await stack.stock_of(item["sku"])
        observed.expect(
            after == before - item["quantity"], f"{item['sku']} stock {before} -> {after}"
        )
    messages = await stack.wait_messages(observed.order_id, 1)
    observed.messages = messages
    observed.expect(
        [m["type"] for m in messages] == ["receipt"], f"published {[m['type'] for m in messages]}"
    )


async def _check_captured(stack: Stack, observed: Observed, request: dict[str, Any]) -> None:
    """Paid as any order, by a PaymentIntent authorised first, then captured in full."""
    await _check_paid(stack, observed, request)
    pi = observed.payment_intent
    observed.expect(pi.get("capture_method") == "manual", f"captured {pi.get('capture_method')}")
    observed.expect(
        pi.get("amount_received") == request["amount"],
        f"captured {pi.get('amount_received')} of {request['amount']}",
    )


def _with_items(sku: str, quantity: int = 1) -> Step:
    async def add(stack: Stack, observed: Observed, request: dict[str, Any]) -> None:
        request["items"] = [{"sku": f"{sku}_{observed.order_id}", "quantity": quantity}]
        await _with_stock(stack, observed, request)

    return add


def _check_declined(max_attempts: int) -> Step:
    async def check(stack: Stack, observed: Observed, request: dict[str, Any]) -> None:
        statuses = [pi["status"] for pi in observed.payment_intents]
        # Each retry cancels the attempt before it: only the last stays open.
        expected = ["canceled"] * (max_attempts - 1) + ["requires_payment_method"]
        observed.expect(
            statuses == expected,
            f"PaymentIntents {statuses}, expected {max_attempts} declined attempts ({expected})",
        )
        messages = await stack.wait_messages(observed.order_id, max_attempts)
        observed.messages = messages
        observed.expect(
            [m["type"] for m in messages] == ["payment_declined"] * max_attempts,
            f"notified {[m['type'] for m in messages]}",
        )
        observed.expect(
            observed.order_row.get("status") == "released",
            f"a declined order's claim is released, row {observed.order_row}",
        )

    return check


async def _check_declined_at_once(
    stack: Stack, observed: Observed, request: dict[str, Any]
) -> None:
    """A card that will never be approved: one PaymentIntent, no retry, the reason said."""
    observed.expect(
        len(observed.payment_intents) == 1,
        f"{len(observed.payment_intents)} PaymentIntents for a final decline, expected 1",
    )
    cause = json.loads(observed.cause or "{}")
    observed.expect(
        (cause.get("verdict"), cause.get("reason")) == ("final", "decline_code:stolen_card"),
        f"cause {observed.cause!r}",
    )
    observed.messages = await stack.wait_messages(observed.order_id, 1)
    observed.expect(
        [m["type"] for m in observed.messages] == ["payment_declined"],
        f"notified {[m['type'] for m in observed.messages]}",
    )


def _check_paid_after_failing(max_attempts: int) -> Step:
    """The customer pays the last declined attempt after the execution failed: the money
    rule refunds it, and the operators get an alert."""
    declined = _check_declined(max_attempts)

    async def check(stack: Stack, observed: Observed, request: dict[str, Any]) -> None:
        await declined(stack, observed, request)
        last = observed.payment_intent.get("id", "")
        try:
            await stack.pay(last)
        except RuntimeError as exc:
            observed.problems.append(f"the customer could not pay the last attempt: {exc}")
            return

        try:
            observed.refunds = await eventually_async(
                lambda: stack.refunds_of(last),
                timeout_s=SCENARIO_TIMEOUT_S,
                interval_s=POLL_S,
                what="the refund",
            )
        except NotInTime:
            observed.problems.append("the payment made after the execution failed was kept")
            return
        observed.expect(
            [r["amount"] for r in observed.refunds] == [request["amount"]],
            f"refunds {[r['amount'] for r in observed.refunds]}",
        )
        messages = await stack.wait_messages(observed.order_id, max_attempts + 1)
        observed.messages = messages
        alerts = {m.get("payment_intent_id") for m in messages if m["type"] == "payment_refunded"}
        observed.expect(alerts == {last}, f"alerts for {alerts}, expected for {last}")

    return check


async def _sepa_method(stack: Stack, observed: Observed, request: dict[str, Any]) -> None:
    request["payment_method"] = await stack.sepa_payment_method()


async def _confirm_later(stack: Stack, observed: Observed, request: dict[str, Any]) -> None:
    """The customer confirms on the client side once the PaymentIntent exists."""
    try:
        intents = await eventually_async(
            lambda: stack.payment_intents_of(observed.order_id),
            timeout_s=60,
            interval_s=POLL_S,
            what="a PaymentIntent to confirm",
        )
    except NotInTime:
        observed.problems.append("no PaymentIntent was created to confirm")
        return
    pi = intents[0]
    observed.expect(pi["status"] == "requires_payment_method", f"created as {pi['status']}")
    described = await stack.sfn.describe_execution(executionArn=observed.execution_arn)
    observed.expect(described["status"] == "RUNNING", "the execution must wait for the customer")
    await stack.stripe("POST", f"/v1/payment_intents/{pi['id']}", payment_method="pm_card_visa")
    await stack.stripe("POST", f"/v1/payment_intents/{pi['id']}/confirm")


async def _check_invalid(stack: Stack, observed: Observed, request: dict[str, Any]) -> None:
    observed.expect(
        "amount" in observed.cause, f"cause does not name the field: {observed.cause!r}"
    )
    observed.expect(observed.payment_intents == [], "a PaymentIntent was created for invalid input")


async def _check_unfulfillable(stack: Stack, observed: Observed, request: dict[str, Any]) -> None:
    """Out of stock: refused before any payment, the stock and the order's row untouched."""
    observed.expect(
        observed.payment_intents == [],
        f"{len(observed.payment_intents)} PaymentIntents for an order that cannot ship",
    )
    for item in request.get("items", []):
        after = await stack.stock_of(item["sku"])
        observed.expect(
            after == observed.stock[item["sku"]], f"{item['sku']} stock changed to {after}"
        )
        observed.expect(
            f'"sku":"{item["sku"]}"' in observed.cause, f"cause does not name {item['sku']}"
        )
    observed.expect(observed.order_row == {}, f"order row {observed.order_row}")


def demo_scenarios(max_attempts: int) -> list[Scenario]:
    """The scenarios of `paystep demo`, for a deployment with `max_attempts`."""
    base = {"amount": 1999, "currency": "usd", "receipt_email": "ada@example.com"}
    return [
        Scenario(
            "card",
            {**base, "payment_method": "pm_card_visa"},
            "SUCCEEDED",
            prepare=_with_items("sku_plenty_mug", 2),
            check=_check_paid,
        ),
        Scenario(
            "manual_capture",
            {**base, "payment_method": "pm_card_visa", "capture_method": "manual"},
            "SUCCEEDED",
            prepare=_with_items("sku_plenty_frame"),
            check=_check_captured,
        ),
        Scenario(
            "declined_retried",
            {**base, "payment_method": "pm_card_chargeDeclinedInsufficientFunds"},
            "FAILED",
            "Payment.Declined",
            check=_check_declined(max_attempts),
        ),
        Scenario(
            "declined_final",
            {**base, "payment_method": "pm_card_chargeDeclinedStolenCard"},
            "FAILED",
            "Payment.Declined",
            check=_check_declined_at_once,
        ),
        Scenario(
            "paid_too_late",
            {**base, "payment_method": "pm_card_chargeCustomerFail"},
            "FAILED",
            "Payment.Declined",
            check=_check_paid_after_failing(max_attempts),
        ),
        Scenario(
            "sepa_debit",
            {**base, "currency": "eur"},
            "SUCCEEDED",
            prepare=_sepa_method,
            check=_check_paid,
        ),
        Scenario(
            "confirm_later", dict(base), "SUCCEEDED", during=_confirm_later, check=_check_paid
        ),
        Scenario(
            "invalid_input",
            {**base, "amount": -500},
            "FAILED",
            "Payment.InvalidInput",
            check=_check_invalid,
        ),
        Scenario(
            "out_of_stock",
            {**base, "payment_method": "pm_card_visa"},
            "FAILED",
            "Order.Unfulfillable",
            prepare=_with_items("sku_none_lamp"),
            check=_check_unfulfillable,
        ),
    ]
