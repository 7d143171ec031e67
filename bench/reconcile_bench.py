"""What one `paystep reconcile` run costs: a window of 20,000 finished payments and 200 open.

Reconcile runs in this process (`webhook.reconcile.reconcile_with`, the Stripe
client and aioboto3 as in production) against the two fast fakes, each a process
of its own on the other core:

- `paystep_local.fake_stripe` with Stripe's limits: 100 requests/s for the account
  (live mode), 25/s per endpoint, 20/s for the Search API; it holds every payment's
  PaymentIntent and the event that settled it;
- `paystep_local.fake_sfn` with the Step Functions quotas of the smaller regions
  (`--quotas other`: ListExecutions 2/s with a bucket of 100, DescribeExecution
  10/s, SendTask* 300/s); it holds the executions, their task tokens, and ends an
  execution when its task is answered.

The window: `finished` executions SUCCEEDED with their succeeded PaymentIntent
(what the webhook already did), and `open` executions RUNNING whose webhook
delivery was lost: 60 % succeeded, 15 % declined, 10 % canceled at Stripe, 15 %
still processing (a heartbeat, with `--heartbeat`). The checkpoint, open claims
(none), the check queue and the customers' topic are in memory
(`paystep_local.reconcile_doubles`).

Figures: the first run's wall time (`reconcile_s_per_20k`), SendTask* calls per open
payment and on finished ones (counted by the fake Step Functions), and the SendTask*
calls of a second run started right after; plus the calls of each kind and any 429
or ThrottlingException the fakes answered (the rates must keep them at 0).

    python -m bench.reconcile_bench [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Final

import structlog

from paystep_local.processes import free_port, wait_http
from paystep_local.reconcile_doubles import Payments, Recorder, services
from statemachine.seal import TokenKeys, new_key
from webhook.call_rates import Call
from webhook.reconcile import ReconcileSettings, reconcile_with

RESULTS: Final = Path(__file__).with_name("results-reconcile.json")
FINISHED: Final = 20_000
OPEN: Final = 200
QUICK_FINISHED: Final = 5_000
QUICK_OPEN: Final = 50
# Open payments by what Stripe says of them now.
OPEN_MIX: Final = (("succeeded", 0.60), ("requires_payment_method", 0.15),
                   ("canceled", 0.10), ("processing", 0.15))  # fmt: skip
WINDOW_S: Final = 72 * 3600


def _start(module: str, *args: str, ready: str) -> subprocess.Popen[bytes]:
    cores = os.sched_getaffinity(0)
    other = {max(cores)} if len(cores) > 1 else cores
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, other),
    )
    wait_http(ready, process=process)
    return process


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers=headers or {}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def _sfn(url: str, target: str, body: Any) -> Any:
    return _post(url, body, {"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.0"})


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def window(keys: TokenKeys, finished: int, open_: int, now: int) -> tuple[Payments, int]:
    """The payments of the window, oldest first over its 72 hours; how many are heartbeats."""
    payments = Payments(keys)
    # Over the window less its first hour: setting up takes a while, the run starts later.
    step = (WINDOW_S - 3600) / finished
    for index in range(finished):
        payments.add(status="SUCCEEDED", pi_status="succeeded",
                     created=now - WINDOW_S + 3600 + int(index * step))  # fmt: skip
    heartbeats = 0
    for status, share in OPEN_MIX:
        for _ in range(round(open_ * share)):
            payments.add(status="RUNNING", pi_status=status, created=now - 600)
            heartbeats += status == "processing"
    return payments, heartbeats


async def measure(quick: bool) -> dict[str, Any]:
    finished, open_ = (QUICK_FINISHED, QUICK_OPEN) if quick else (FINISHED, OPEN)
    keys = TokenKeys.parse(new_key("bench"))
    now = int(time.time())
    payments, heartbeats = window(keys, finished, open_, now)
    stripe_port, sfn_port = free_port(), free_port()
    stripe_url, sfn_url = f"http://127.0.0.1:{stripe_port}", f"http://127.0.0.1:{sfn_port}"
    processes = [
        _start("paystep_local.fake_stripe", "--port", str(stripe_port),
               "--global-rate-per-s", "100", "--endpoint-rate-per-s", "25",
               "--search-rate-per-s", "20", ready=f"{stripe_url}/_fake/stats"),
        _start("paystep_local.fake_sfn", "--port", str(sfn_port), "--quotas", "other",
               ready=sfn_url),
    ]  # fmt: skip
    try:
        # The fake takes a body of 1 MB at most: a sealed token makes a PaymentIntent ~3 KB.
        for start in range(0, len(payments.intents), 200):
            _post(f"{stripe_url}/_fake/payment_intents", payments.intents[start : start + 200])
        _sfn(sfn_url, "Fake.PutExecutions", {"executions": payments.executions})
        settings = ReconcileSettings.model_construct()
        recorder = Recorder()
        rates = settings.call_rates()
        async with services(stripe_url, sfn_url, keys, rates, recorder) as (wired, _):
            began = time.perf_counter()
            first = await reconcile_with(wired, settings, None, dry_run=False, heartbeat=True)
            first_s = time.perf_counter() - began
            after_first = _sfn(sfn_url, "Fake.Stats", {})
            taken_first = dict(rates.taken)
            began = time.perf_counter()
            second = await reconcile_with(wired, settings, None, dry_run=False, heartbeat=True)
            second_s = time.perf_counter() - began
        after_second = _sfn(sfn_url, "Fake.Stats", {})
        stripe_stats = _get(f"{stripe_url}/_fake/stats")
        stripe_limits = _get(f"{stripe_url}/_fake/rate_limits")
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)

    def send_tasks(stats: dict[str, Any], key: str = "answered") -> int:
        return sum(v for k, v in stats[key].items() if k.startswith("SendTask"))

    sent_first = send_tasks(after_first)
    on_finished = after_first.get("on_ended", {}).get("SendTask", 0)
    results = {
        "reconcile_s_per_20k": round(first_s * FINISHED / finished, 1),
        "reconcile_sendtask_per_open": round(sent_first / open_, 3),
        "reconcile_sendtask_finished": on_finished,
        "reconcile_sendtask_second_run": send_tasks(after_second) - sent_first,
        "reconcile_first_run_s": round(first_s, 2),
        "reconcile_second_run_s": round(second_s, 2),
        "reconcile_finished": finished,
        "reconcile_open": open_,
        "reconcile_open_heartbeats": heartbeats,
        "reconcile_first_run": vars(first),
        "reconcile_second_run": vars(second),
        "reconcile_calls_first_run": {str(k): v for k, v in taken_first.items()},
        "reconcile_calls_both_runs": {str(k): v for k, v in rates.taken.items()},
        "reconcile_payment_checks": len(recorder.checks),
        "reconcile_sfn_throttled": after_second["throttled"],
        "reconcile_stripe_429": stripe_limits.get("refused", {}),
        "reconcile_stripe_requests": stripe_stats["routes"],
        "reconcile_rates_per_s": {
            str(kind): rate
            for kind, rate in (
                (Call.STRIPE_LIST, settings.reconcile_stripe_per_s),
                (Call.STRIPE_SEARCH, settings.reconcile_stripe_search_per_s),
                (Call.SEND_TASK, settings.reconcile_send_task_per_s),
                (Call.LIST_EXECUTIONS, settings.reconcile_list_executions_per_s),
                (Call.DESCRIBE_EXECUTION, settings.reconcile_describe_execution_per_s),
            )
        },
        # This process's peak: the run's and the generated window's (a few hundred bytes of
        # sealed metadata per payment, held twice while the fakes are loaded).
        "reconcile_process_peak_rss_mb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
        "quick": quick,
        "scaled_from_finished": finished,
    }
    return results


def main(argv: list[str] | None = None) -> int:
    # One line per callback would cost the run more than its calls: warnings and errors only.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile_bench")
    parser.add_argument("--quick", action="store_true", help="5,000 finished and 50 open")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = asyncio.run(measure(args.quick))
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    for key in ("reconcile_s_per_20k", "reconcile_sendtask_per_open",
                "reconcile_sendtask_finished", "reconcile_sendtask_second_run",
                "reconcile_sfn_throttled", "reconcile_stripe_429"):  # fmt: skip
        print(f"{key}: {results[key]}")
    met = (
        results["reconcile_s_per_20k"] < 120
        and results["reconcile_sendtask_per_open"] <= 1.1
        and results["reconcile_sendtask_finished"] == 0
        and results["reconcile_sendtask_second_run"] == 0
        and not results["reconcile_sfn_throttled"]
        and not results["reconcile_stripe_429"]
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
