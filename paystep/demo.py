"""`paystep demo` and `paystep dev`: the embedded local stack, for a person at a terminal."""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Final

from paystep_local.localstack import LOCAL_STRIPE_KEY, LocalStack, StackError
from paystep_local.scenarios import Observed, Scenario, Stack, demo_scenarios, run

DEMO_MAX_ATTEMPTS: Final = 3
DEMO_DEPLOY_ARGS: Final = ("--max-attempts", str(DEMO_MAX_ATTEMPTS), "--retry-backoff-s", "1")
COLUMNS: Final = ("order", "scenario", "status", "error", "PaymentIntent", "PI status", "seconds")


def _say(out: IO[str], text: str) -> None:
    print(text, file=out, flush=True)


def _workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def _start(stack: LocalStack, out: IO[str], *deploy_args: str) -> None:
    begun = time.monotonic()
    _say(out, "starting moto (AWS) ...")
    stack.start_aws()
    _say(out, "starting localstripe (Stripe) ...")
    stack.start_stripe()
    _say(out, "paystep deploy ...")
    stack.deploy(*deploy_args)
    _say(out, "starting the webhook ...")
    stack.start_webhook()
    for n in range(stack.workers):
        _say(out, f"starting worker {n + 1} ...")
        stack.start_worker()
    _say(out, f"stack up in {time.monotonic() - begun:.1f} s")


def table(results: Sequence[Observed]) -> str:
    rows = [COLUMNS] + [
        (
            r.order_id,
            r.scenario,
            r.status,
            r.error or "-",
            r.payment_intent.get("id", "-"),
            r.payment_intent.get("status", "-"),
            f"{r.seconds:.1f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


async def _run_all(
    stack: LocalStack, scenarios: Sequence[Scenario], out: IO[str]
) -> list[Observed]:
    assert stack.deployment and stack.stripe_base
    async with Stack(stack.deployment, stack.stripe_base, LOCAL_STRIPE_KEY) as clients:
        name_width = max(len(s.name) for s in scenarios)

        async def one(scenario: Scenario) -> Observed:
            observed = await run(clients, scenario)
            mark = "ok" if not observed.problems else "UNEXPECTED"
            line = f"  {mark:<10} {scenario.name:<{name_width}} {observed.status} {observed.error}"
            _say(out, line.rstrip())
            return observed

        _say(out, f"running {len(scenarios)} scenarios ...")
        return list(await asyncio.gather(*(one(s) for s in scenarios)))


def demo(workers: int = 2, out: IO[str] = sys.stdout) -> int:
    with LocalStack(_workdir("paystep-demo-"), workers=workers) as stack:
        try:
            _start(stack, sys.stderr, *DEMO_DEPLOY_ARGS)
        except StackError as exc:
            _say(sys.stderr, f"paystep demo: the local stack did not start: {exc}")
            _say(sys.stderr, f"logs: {stack.workdir}")
            return 1
        with stack.environment():
            results = asyncio.run(_run_all(stack, demo_scenarios(DEMO_MAX_ATTEMPTS), sys.stderr))
        _say(out, "")
        _say(out, table(results))
        failed = [r for r in results if r.problems]
        for r in failed:
            _say(out, f"\n{r.scenario} ({r.order_id}) did not end as expected:")
            for problem in r.problems:
                _say(out, f"  - {problem}")
        if failed:
            _say(out, f"\nprocess logs: {stack.workdir}")
        _say(sys.stderr, "stopping the stack ...")
    return 1 if failed else 0


def dev(workers: int = 1, out: IO[str] = sys.stdout) -> int:
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    with LocalStack(_workdir("paystep-dev-"), workers=workers) as stack:
        try:
            _start(stack, sys.stderr)
        except StackError as exc:
            _say(sys.stderr, f"paystep dev: the local stack did not start: {exc}")
            return 1
        assert stack.deployment
        _say(out, f"AWS (moto)           {stack.aws_endpoint}")
        _say(out, f"Stripe (localstripe) {stack.stripe_base}")
        for proc in stack.processes:
            for what, url in proc.urls.items():
                _say(out, f"{proc.name:<10} {what:<9} {url}")
        _say(out, f"state machine        {stack.deployment['state_machine_arn']}")
        _say(out, f"task queue           {stack.deployment['queue_url']}")
        _say(out, f"logs                 {stack.workdir}")
        _say(out, "\nIn another terminal:\n")
        for line in stack.exports():
            _say(out, line)
        _say(out, "paystep pay --order-id ord_1 --amount 1999 --currency usd "
                  "--payment-method pm_card_visa --wait")  # fmt: skip
        _say(out, "\nCtrl-C stops everything.")
        while not stopping.wait(1):
            dead = [p for p in stack.processes if p.process.poll() is not None]
            if dead:
                _say(sys.stderr, f"paystep dev: {dead[0].name} exited; see {dead[0].log_path}")
                return 1
        _say(sys.stderr, "stopping ...")
    return 0
