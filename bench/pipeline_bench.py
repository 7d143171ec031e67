"""What one card payment costs on the whole local stack, and what paystep adds to it.

Runs card payments one after the other through the real processes (moto, localstripe,
`paystep deploy`, webhook, worker) with a counting proxy between paystep and the
Stripe emulator, then reads each execution's history:

- Stripe API calls per successful card payment (counted at the proxy; the demo's own
  checks talk to the emulator directly and are not counted),
- Step Functions state transitions per payment (states entered, Map and Parallel
  children included) and dollars per million payments at $0.025 per 1,000,
- pipeline overhead: execution start to SUCCEEDED, minus the emulator's fixed webhook
  delay and the Stripe call's own time.

    python -m bench.pipeline_bench [--payments N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web

from paystep.demo import DEMO_DEPLOY_ARGS, DEMO_MAX_ATTEMPTS
from paystep_local.localstack import LOCAL_STRIPE_KEY, LocalStack
from paystep_local.scenarios import Scenario, Stack, demo_scenarios, run

# localstripe's webhooks.py sleeps 1 s before each delivery.
EMULATOR_WEBHOOK_DELAY_S: Final = 1.0
# https://aws.amazon.com/step-functions/pricing/: Standard workflows, per state transition.
USD_PER_TRANSITION: Final = 0.025 / 1000
NO_ITEMS_PAYMENTS: Final = 3
RESULTS: Final = Path(__file__).with_name("results-pipeline.json")


@dataclass
class Calls:
    """Requests paystep made to Stripe, in order: (method, path, seconds)."""

    seen: list[tuple[str, str, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def api(self) -> list[tuple[str, str, float]]:
        with self.lock:
            return [c for c in self.seen if c[1].startswith("/v1/")]


@contextmanager
def counting_proxy(target: str) -> Iterator[tuple[str, Calls]]:
    """A loopback HTTP proxy to `target` that records every request, in its own thread."""
    calls = Calls()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in {"host", "content-length"}
        }
        begun = time.perf_counter()
        session: aiohttp.ClientSession = state["session"]
        async with session.request(
            request.method, f"{target}{request.path_qs}", data=body, headers=headers
        ) as answer:
            payload = await answer.read()
            status, content_type = (
                answer.status,
                answer.headers.get("Content-Type", "application/json"),
            )
        with calls.lock:
            calls.seen.append((request.method, request.path, time.perf_counter() - begun))
        return web.Response(body=payload, status=status, headers={"Content-Type": content_type})

    async def serve() -> None:
        state["session"] = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["port"] = runner.addresses[0][1]
        state["stop"] = asyncio.Event()
        ready.set()
        await state["stop"].wait()
        await state["session"].close()
        await runner.cleanup()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield f"http://127.0.0.1:{state['port']}", calls
    finally:
        loop.call_soon_threadsafe(state["stop"].set)
        thread.join(10)


async def _history(clients: Stack, arn: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    paginator = clients.sfn.get_paginator("get_execution_history")
    async for page in paginator.paginate(executionArn=arn):
        events.extend(page["events"])
    return events


def _transitions(history: list[dict[str, Any]]) -> int:
    """State transitions of one execution: the states it entered (billed per entry)."""
    return sum(event["type"].endswith("StateEntered") for event in history)


async def _measure(
    stack: LocalStack, stripe_direct: str, calls: Calls, payments: int
) -> dict[str, Any]:
    assert stack.deployment
    card = next(s for s in demo_scenarios(DEMO_MAX_ATTEMPTS) if s.name == "card")
    # The same card payment for an order without items (the demo's has one line).
    no_items = Scenario("card_no_items", card.request, card.status, check=card.check)
    transitions: list[int] = []
    transitions_no_items: list[int] = []
    totals_s: list[float] = []
    overheads_s: list[float] = []
    failures: list[str] = []
    async with Stack(stack.deployment, stripe_direct, LOCAL_STRIPE_KEY) as clients:
        for _ in range(payments):
            before = len(calls.api())
            observed = await run(clients, card)
            if observed.problems:
                failures.append(f"{observed.order_id}: {observed.problems}")
                continue
            history = await _history(clients, observed.execution_arn)
            transitions.append(_transitions(history))
            started = next(e["timestamp"] for e in history if e["type"] == "ExecutionStarted")
            ended = next(e["timestamp"] for e in history if e["type"] == "ExecutionSucceeded")
            total_s = (ended - started).total_seconds()
            stripe_s = sum(seconds for _, _, seconds in calls.api()[before:])
            totals_s.append(total_s)
            overheads_s.append(total_s - EMULATOR_WEBHOOK_DELAY_S - stripe_s)
        for _ in range(NO_ITEMS_PAYMENTS):
            observed = await run(clients, no_items)
            if observed.problems:
                failures.append(f"{observed.order_id}: {observed.problems}")
                continue
            history = await _history(clients, observed.execution_arn)
            transitions_no_items.append(_transitions(history))
    api_calls = calls.api()
    succeeded = len(transitions)
    per_payment = statistics.mean(transitions) if transitions else float("nan")
    return {
        "payments": payments,
        "payments_succeeded": succeeded,
        "failures": failures,
        # Every successful payment, with items or without, made its one create.
        "stripe_calls_per_payment": len(api_calls) / (succeeded + len(transitions_no_items))
        if succeeded
        else float("nan"),
        "stripe_calls_by_path": _by_path(api_calls),
        "state_transitions_per_payment": per_payment,
        "state_transitions_per_payment_no_items": statistics.mean(transitions_no_items)
        if transitions_no_items
        else float("nan"),
        "usd_per_million_payments": per_payment * USD_PER_TRANSITION * 1_000_000,
        "pipeline_total_ms_median": statistics.median(totals_s) * 1000
        if totals_s
        else float("nan"),
        "pipeline_overhead_ms_median": statistics.median(overheads_s) * 1000
        if overheads_s
        else float("nan"),
        "pipeline_overhead_ms_max": max(overheads_s) * 1000 if overheads_s else float("nan"),
    }


def _by_path(api_calls: list[tuple[str, str, float]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for method, path, _ in api_calls:
        parts = ("{id}" if part.startswith(("pi_", "re_")) else part for part in path.split("/"))
        key = f"{method} {'/'.join(parts)}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline_bench")
    parser.add_argument("--payments", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="5 payments")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    payments = 5 if args.quick else args.payments
    with LocalStack(Path(tempfile.mkdtemp(prefix="paystep-bench-")), workers=1) as stack:
        stack.start_aws()
        direct = stack.start_stripe()
        with counting_proxy(direct) as (proxy, calls):
            stack.stripe_base = proxy
            stack.deploy(*DEMO_DEPLOY_ARGS)
            stack.start_webhook()
            stack.start_worker()
            with stack.environment():
                results = asyncio.run(_measure(stack, direct, calls, payments))
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        print(f"{key}: {value}")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
