"""Payments in bulk on a running stack, what each must end as, and the figures of a run.

A run starts a mix of payments (cards that succeed, cards that are declined,
bank debits that succeed later, orders that cannot be fulfilled, invalid
input), lets a scenario break things meanwhile, waits for every execution to
end and then checks each order against what its payment method dictates:

- succeeded (card, bank debit): exactly one PaymentIntent, succeeded, named by
  the output and the order row, one receipt published;
- declined: one declined PaymentIntent per attempt, none succeeded, one
  notification per attempt;
- unfulfillable: one succeeded PaymentIntent refunded in full, once;
- invalid input: no PaymentIntent.

Across the run: no PaymentIntent of an unknown order or of an execution still
running, and nothing in the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from paystep_local.localstack import LocalStack, ManagedProcess, free_port, wait_http
from paystep_local.scenarios import Stack
from tests.worker.support import Workers

MAX_ATTEMPTS: Final = 2
DEPLOY_ARGS: Final = ("--max-attempts", str(MAX_ATTEMPTS), "--retry-backoff-s", "1")
# Workers that come back quickly: a killed worker's messages reappear after this.
WORKER_ENV: Final = {
    "PAYSTEP_WORKER_VISIBILITY_TIMEOUT_S": "8",
    "PAYSTEP_WORKER_RETRY_BASE_S": "1",
    "PAYSTEP_WORKER_RETRY_MAX_S": "4",
    "PAYSTEP_WORKER_BATCH_DELAY_S": "0.2",
}
LIST_PAGE: Final = 100


@dataclass(frozen=True)
class Kind:
    """A kind of payment and the end its payment method dictates."""

    name: str
    status: str
    error: str = ""
    payment_method: str | None = None
    sepa: bool = False
    out_of_stock: bool = False
    amount: int = 1999


KINDS: Final = {
    kind.name: kind
    for kind in (
        Kind("card", "SUCCEEDED", payment_method="pm_card_visa"),
        Kind("declined", "FAILED", "Payment.Declined", payment_method="pm_card_chargeCustomerFail"),
        Kind("sepa", "SUCCEEDED", sepa=True),
        Kind(
            "unfulfillable",
            "FAILED",
            "Order.Unfulfillable",
            payment_method="pm_card_visa",
            out_of_stock=True,
        ),
        Kind("invalid", "FAILED", "Payment.InvalidInput", payment_method="pm_card_visa", amount=-5),
    )
}
MIX: Final = ("card", "declined", "card", "sepa", "card", "unfulfillable", "card", "invalid")


def mix(count: int) -> list[Kind]:
    return [KINDS[MIX[index % len(MIX)]] for index in range(count)]


@dataclass
class Order:
    order_id: str
    kind: Kind
    request: dict[str, Any]
    arn: str = ""
    described: dict[str, Any] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    """The types of the SNS messages it must have published."""
    problems: list[str] = field(default_factory=list)


@dataclass
class Figures:
    """One line per scenario: what was started, what ended as expected, what went wrong."""

    scenario: str
    started: int = 0
    as_expected: int = 0
    intents_per_order: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0

    def line(self) -> str:
        per_order = ", ".join(f"{n}:{c}" for n, c in sorted(self.intents_per_order.items()))
        extra = "".join(f", {key} {value}" for key, value in self.extra.items())
        return (
            f"[faults] {self.scenario}: payments started {self.started}, ended as expected "
            f"{self.as_expected}, PaymentIntents per order {{{per_order}}}, errors "
            f"{len(self.errors)}{extra}, {self.seconds:.0f} s"
        )


# -- the processes -------------------------------------------------------------------------


def fault_seed() -> int:
    """`FAULTS_SEED` from the environment, to replay a run's draws; else a fresh one."""
    return int(os.environ.get("FAULTS_SEED") or random.randrange(1_000_000))


def start_webhook(
    local: LocalStack, port: int | None = None, env: Mapping[str, str] | None = None
) -> ManagedProcess:
    """A `paystep webhook` process on `port` (a free one if None); not registered anywhere."""
    port = port or free_port()
    metrics_port = free_port()
    proc = local.spawn(
        "webhook",
        [sys.executable, "-m", "paystep", "webhook"],
        env={
            "PAYSTEP_WEBHOOK_PORT": str(port),
            "PAYSTEP_WEBHOOK_HOST": "127.0.0.1",
            "PAYSTEP_METRICS_PORT": str(metrics_port),
            **(env or {}),
        },
    )
    proc.urls = {
        "webhook": f"http://127.0.0.1:{port}/webhooks/stripe",
        "base": f"http://127.0.0.1:{port}",
        "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
    }
    wait_http(f"http://127.0.0.1:{port}/healthz", process=proc.process)
    return proc


def start_worker(
    workers: Workers, stripe_base: str, env: Mapping[str, str] = WORKER_ENV
) -> ManagedProcess:
    """A `paystep worker` on the stack's deployment, its Stripe at `stripe_base`."""
    assert workers.stack.deployment
    return workers.start(workers.stack.deployment, stripe_base, wait_ready=True, **env)


def reconcile(local: LocalStack, since: str = "1h") -> dict[str, int]:
    """`paystep reconcile --since`, its summary as numbers; its output joins the stack's logs."""
    result = subprocess.run(
        [sys.executable, "-m", "paystep", "reconcile", "--since", since],
        env=local.env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    log_path = local.workdir / f"reconcile-{uuid.uuid4().hex[:6]}.log"
    log_path.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise AssertionError(
            f"paystep reconcile exited {result.returncode}: {result.stderr[-2000:]}"
        )
    # "events seen 12, callbacks sent 3, already closed 9, skipped 0, heartbeats 0, errors 0"
    line = result.stdout.strip().splitlines()[-1]
    parts = (part.rsplit(" ", 1) for part in line.split(", "))
    return {name.replace(" ", "_"): int(value) for name, value in parts}


def rss_kib(proc: ManagedProcess) -> int:
    """The process's resident set (VmRSS) in KiB."""
    status = Path(f"/proc/{proc.process.pid}/status").read_text(encoding="ascii")
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


# -- the payments ----------------------------------------------------------------------------


class Payments:
    """Start a mix of payments, wait for every execution, check how each ended."""

    def __init__(self, clients: Stack, scenario: str) -> None:
        self.clients = clients
        self.orders: list[Order] = []
        self.figures = Figures(scenario)
        self._begun = time.monotonic()

    async def start(self, kind: Kind) -> Order:
        order_id = f"ord_{kind.name}_{uuid.uuid4().hex[:10]}"
        request: dict[str, Any] = {"order_id": order_id, "amount": kind.amount, "currency": "usd"}
        if kind.payment_method:
            request["payment_method"] = kind.payment_method
        if kind.sepa:
            request["payment_method"] = await self.clients.sepa_payment_method()
            request["currency"] = "eur"
        if kind.out_of_stock:
            sku = f"sku_none_{order_id}"
            await self.clients.put_stock(sku, 0)
            request["items"] = [{"sku": sku, "quantity": 1}]
        order = Order(order_id, kind, request)
        self.orders.append(order)
        order.arn = await self.clients.start(request)
        self.figures.started += 1
        return order

    async def start_all(self, kinds: Sequence[Kind], over_s: float = 0.0) -> None:
        """Start one payment per kind, spread evenly over `over_s` seconds."""
        interval_s = over_s / max(len(kinds), 1)
        for kind in kinds:
            await self.start(kind)
            if interval_s:
                await asyncio.sleep(interval_s)

    async def running(self) -> set[str]:
        """Arns of this run's executions still running."""
        mine = {order.arn for order in self.orders}
        found: set[str] = set()
        token: str | None = None
        while True:
            params: dict[str, Any] = {
                "stateMachineArn": self.clients.deployment["state_machine_arn"],
                "statusFilter": "RUNNING",
                "maxResults": 1000,
            }
            if token:
                params["nextToken"] = token
            page = await self.clients.sfn.list_executions(**params)
            found |= {e["executionArn"] for e in page["executions"]} & mine
            token = page.get("nextToken")
            if not token:
                return found

    async def wait_all(self, timeout_s: float) -> set[str]:
        """Wait until no execution of the run is running; the arns still running at the bound."""
        deadline = time.monotonic() + timeout_s
        while True:
            running = await self.running()
            if not running or time.monotonic() > deadline:
                return running
            await asyncio.sleep(1.0)

    async def check(self, timeout_s: float) -> Figures:
        """Wait for the ends, then hold every order and the run to the rules above."""
        still_running = await self.wait_all(timeout_s)
        figures = self.figures
        for order in self.orders:
            order.described = await self.clients.sfn.describe_execution(executionArn=order.arn)
        intents = await self._payment_intents()
        by_order: dict[str, list[dict[str, Any]]] = {}
        for pi in intents:
            by_order.setdefault(pi["metadata"].get("order_id", ""), []).append(pi)
        known = {order.order_id: order for order in self.orders}
        for order_id, pis in by_order.items():
            owner = known.get(order_id)
            if owner is None:
                figures.errors.append(f"{len(pis)} PaymentIntents of unknown order {order_id!r}")
            elif owner.arn in still_running:
                figures.errors.append(f"{order_id}: PaymentIntents but the execution is running")
        await asyncio.gather(
            *(self._check_order(order, by_order.get(order.order_id, [])) for order in self.orders)
        )
        for order in self.orders:
            # Once every order's messages came: a duplicate of an early one shows by now.
            late = [m["type"] for m in self.clients.messages(order.order_id)]
            if not order.problems and late != order.messages:
                order.problems.append(f"published {late}, expected {order.messages}")
        for order in self.orders:
            figures.intents_per_order[len(by_order.get(order.order_id, []))] += 1
            if order.problems:
                figures.errors.extend(f"{order.order_id}: {p}" for p in order.problems)
            else:
                figures.as_expected += 1
        dead_letters = await self._queue_depth(self.clients.deployment["dead_letter_queue_url"])
        if dead_letters:
            figures.errors.append(f"{dead_letters} messages in the dead-letter queue")
        figures.extra["stuck"] = len(still_running)
        figures.seconds = time.monotonic() - self._begun
        return figures

    async def _check_order(self, order: Order, pis: list[dict[str, Any]]) -> None:
        kind, described = order.kind, order.described
        expect = _Expect(order.problems)
        ended = (described["status"], described.get("error", ""))
        expect(
            ended == (kind.status, kind.error),
            f"ended {ended}, expected {kind.status} {kind.error}".strip(),
        )
        statuses = sorted(pi["status"] for pi in pis)
        succeeded = [pi for pi in pis if pi["status"] == "succeeded"]
        if kind.name == "invalid":
            expect(pis == [], f"PaymentIntents {statuses} for invalid input")
            return
        if kind.name == "declined":
            expect(
                statuses == ["requires_payment_method"] * MAX_ATTEMPTS, f"PaymentIntents {statuses}"
            )
            await self._expect_messages(order, ["payment_declined"] * MAX_ATTEMPTS)
            return
        expect(statuses == ["succeeded"], f"PaymentIntents {statuses}, expected one succeeded")
        if len(succeeded) != 1:
            return
        pi = succeeded[0]
        row = await self.clients.order_row(order.order_id)
        if kind.name == "unfulfillable":
            refunds = await self.clients.stripe("GET", f"/v1/refunds?payment_intent={pi['id']}")
            amounts = [r["amount"] for r in refunds["data"]]
            expect(amounts == [pi["amount"]], f"refunds {amounts} of {pi['amount']}")
            expect(row.get("status") == "refunded", f"order row {row}")
            await self._expect_messages(order, ["order_refunded"])
            return
        output = json.loads(described.get("output") or "{}")
        expect(
            output.get("payment", {}).get("payment_intent_id") == pi["id"],
            "the output names another PaymentIntent",
        )
        expect(
            (row.get("status"), row.get("payment_intent_id")) == ("paid", pi["id"]),
            f"order row {row}",
        )
        await self._expect_messages(order, ["receipt"])

    async def _expect_messages(self, order: Order, types: list[str]) -> None:
        order.messages = types
        messages = await self.clients.wait_messages(order.order_id, len(types), timeout_s=15)
        got = [m["type"] for m in messages]
        if got != types:
            order.problems.append(f"published {got}, expected {types}")

    async def _payment_intents(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        after = ""
        while True:
            query = f"?limit={LIST_PAGE}" + (f"&starting_after={after}" if after else "")
            page = await self.clients.stripe("GET", f"/v1/payment_intents{query}")
            found += page["data"]
            if not page.get("has_more") or not page["data"]:
                return found
            after = page["data"][-1]["id"]

    async def _queue_depth(self, url: str) -> int:
        attributes = await self.clients.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
        return sum(int(v) for v in attributes["Attributes"].values())


class _Expect:
    def __init__(self, problems: list[str]) -> None:
        self._problems = problems

    def __call__(self, condition: bool, problem: str) -> None:
        if not condition:
            self._problems.append(problem)


def summary(figures: Figures, limit: int = 20) -> str:
    """The figures line and the first problems, for an assertion message."""
    return "\n".join([figures.line(), *figures.errors[:limit]])
