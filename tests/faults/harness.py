"""Payments in bulk on a running stack, what each must end as, and the figures of a run.

A run starts a mix of payments (cards that succeed, cards that are declined,
bank debits that succeed later, orders that cannot be fulfilled, invalid
input), lets a scenario break things meanwhile, waits for every execution to
end and then holds each order to the check of the demo scenario
(`paystep_local.scenarios`) that pays the same way:

- succeeded (card, bank debit): exactly one PaymentIntent, succeeded, named by
  the output and the order row, one receipt published;
- declined: one declined PaymentIntent per attempt, none succeeded, one
  notification per attempt;
- unfulfillable: no PaymentIntent, the stock and the order's row untouched;
- invalid input: no PaymentIntent.

Across the run: no PaymentIntent of an unknown order or of an execution still
running, and nothing in the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from paystep_local import processes
from paystep_local.localstack import LOCAL_STRIPE_KEY, LocalStack
from paystep_local.polling import NotInTime, eventually_async
from paystep_local.processes import ManagedProcess, Workers
from paystep_local.scenarios import Observed, Stack, demo_scenarios, judge, observe

MAX_ATTEMPTS: Final = 2
DEPLOY_ARGS: Final = ("--max-attempts", str(MAX_ATTEMPTS), "--retry-backoff-s", "1")
# Every declined payment of a run charges the one test card (one fingerprint): a budget
# the soak runs cannot spend, so each decline is retried as the scenario expects.
BUDGET_ENV: Final = {"PAYSTEP_RETRY_BUDGET_VISA_30D": "100000"}
# Workers that come back quickly: a killed worker's messages reappear after this.
WORKER_ENV: Final = {
    **BUDGET_ENV,
    "PAYSTEP_WORKER_VISIBILITY_TIMEOUT_S": "8",
    "PAYSTEP_WORKER_RETRY_BASE_S": "1",
    "PAYSTEP_WORKER_RETRY_MAX_S": "4",
    "PAYSTEP_WORKER_BATCH_DELAY_S": "0.2",
}


@dataclass(frozen=True)
class Kind:
    """A kind of payment; the demo scenario of the same payment says how it must end."""

    name: str
    scenario: str
    payment_method: str | None = None
    sepa: bool = False
    out_of_stock: bool = False
    amount: int = 1999


KINDS: Final = {
    kind.name: kind
    for kind in (
        Kind("card", "card", payment_method="pm_card_visa"),
        Kind("declined", "declined_retried", payment_method="pm_card_chargeCustomerFail"),
        Kind("sepa", "sepa_debit", sepa=True),
        Kind("unfulfillable", "out_of_stock", payment_method="pm_card_visa", out_of_stock=True),
        Kind("invalid", "invalid_input", payment_method="pm_card_visa", amount=-5),
    )
}
SCENARIOS: Final = {scenario.name: scenario for scenario in demo_scenarios(MAX_ATTEMPTS)}
MIX: Final = ("card", "declined", "card", "sepa", "card", "unfulfillable", "card", "invalid")


def mix(count: int) -> list[Kind]:
    return [KINDS[MIX[index % len(MIX)]] for index in range(count)]


@dataclass
class Order:
    kind: Kind
    request: dict[str, Any]
    observed: Observed

    @property
    def order_id(self) -> str:
        return self.observed.order_id

    @property
    def arn(self) -> str:
        return self.observed.execution_arn


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
    return processes.start_webhook(local, {**BUDGET_ENV, **(env or {})}, port=port)


def start_worker(
    workers: Workers, stripe_base: str, env: Mapping[str, str] = WORKER_ENV
) -> ManagedProcess:
    """A `paystep worker` on the stack's deployment, its Stripe at `stripe_base`."""
    assert isinstance(workers.stack, LocalStack) and workers.stack.deployment
    return workers.start(workers.stack.deployment, stripe_base, wait_ready=True, **env)


def clients(local: LocalStack) -> Stack:
    """Clients of the test's stack; receipts may come late under faults."""
    assert local.deployment and local.stripe_base
    return Stack(local.deployment, local.stripe_base, LOCAL_STRIPE_KEY, message_timeout_s=15)


@dataclass
class Chaos:
    """A fault test's stack, its workers and the seed of its draws; what it reports."""

    local: LocalStack
    workers: Workers
    seed: int

    def start_webhook(
        self,
        *,
        register: bool = True,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        """A webhook process; registered at the Stripe emulator unless something goes between."""
        webhook = start_webhook(self.local, port, env)
        if register:
            self.local.register_webhook(webhook.urls["webhook"])
        return webhook

    def start_workers(
        self, stripe_base: str, count: int = 2, env: Mapping[str, str] = WORKER_ENV
    ) -> list[ManagedProcess]:
        return [start_worker(self.workers, stripe_base, env) for _ in range(count)]

    @contextlib.asynccontextmanager
    async def payments(self, scenario: str) -> AsyncIterator[Payments]:
        async with clients(self.local) as stack:
            yield Payments(stack, scenario)

    def report(self, figures: Figures, **extra: object) -> None:
        """Print the run's line; fail the test on any order that ended otherwise."""
        figures.extra.update(seed=self.seed, **extra)
        print(figures.line())
        assert figures.errors == [], summary(figures)


def reconcile(local: LocalStack, since: str = "1h") -> dict[str, int]:
    """`paystep reconcile --since`, its summary as numbers; its output joins the stack's logs."""
    result = subprocess.run(
        [sys.executable, "-m", "paystep", "reconcile", "--since", since],
        env={**local.env(), **BUDGET_ENV},
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
    # "events seen 12, running executions 2, callbacks sent 2, already closed 0, ..., errors 0"
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
        order = Order(kind, request, Observed(order_id, kind.scenario))
        if kind.out_of_stock:
            order.observed.stock[sku] = 0
        self.orders.append(order)
        order.observed.execution_arn = await self.clients.start(request)
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
        try:
            await eventually_async(
                self.running,
                until=lambda running: not running,
                timeout_s=timeout_s,
                interval_s=1.0,
                what="every execution of the run to end",
            )
        except NotInTime as late:
            still: set[str] = late.last  # type: ignore[assignment]
            return still
        return set()

    async def check(self, timeout_s: float) -> Figures:
        """Wait for the ends, then hold every order and the run to the rules above."""
        still_running = await self.wait_all(timeout_s)
        figures = self.figures
        intents = await self.clients.payment_intents()
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
            observed = order.observed
            late = [m["type"] for m in self.clients.messages(order.order_id)]
            expected = [m["type"] for m in observed.messages]
            if not observed.problems and late != expected:
                observed.problems.append(f"published {late}, expected {expected}")
        for order in self.orders:
            figures.intents_per_order[len(by_order.get(order.order_id, []))] += 1
            if order.observed.problems:
                figures.errors.extend(f"{order.order_id}: {p}" for p in order.observed.problems)
            else:
                figures.as_expected += 1
        dead_letters = await self._queue_depth(self.clients.deployment["dead_letter_queue_url"])
        if dead_letters:
            figures.errors.append(f"{dead_letters} messages in the dead-letter queue")
        figures.extra["stuck"] = len(still_running)
        figures.seconds = time.monotonic() - self._begun
        return figures

    async def _check_order(self, order: Order, pis: list[dict[str, Any]]) -> None:
        """The check of the demo scenario the order's kind plays."""
        described = await self.clients.sfn.describe_execution(executionArn=order.arn)
        observe(order.observed, described, pis)
        order.observed.order_row = await self.clients.order_row(order.order_id)
        await judge(self.clients, SCENARIOS[order.kind.scenario], order.observed, order.request)

    async def _queue_depth(self, url: str) -> int:
        attributes = await self.clients.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
        return sum(int(v) for v in attributes["Attributes"].values())


def summary(figures: Figures, limit: int = 20) -> str:
    """The figures line and the first problems, for an assertion message."""
    return "\n".join([figures.line(), *figures.errors[:limit]])
