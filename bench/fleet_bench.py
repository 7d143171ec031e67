"""A fleet of K workers against Stripe's rate limits: how close to the ceiling, at what cost.

One fake Stripe (`python -m paystep_local.fake_stripe --latency-s 0.2
--global-rate-per-s 100 --endpoint-rate-per-s 25`, the limiters of
`paystep_local.stripe_rate_limits`) and one SQS fake serve K = 1, 2, 4 worker
processes (`python -m worker`, production settings but a 1 s poll and 1 s retry
base). Orders arrive open loop at 1.2 times the binding limit (the 25/s of
`POST /v1/payment_intents`) for `run_s`; two thirds into the run both limits
halve. Then the limits come back and the fleet drains the backlog. Every figure
comes from the fake's timeline of admitted and refused creates:

- share of limit: PaymentIntents created per second over the settled part of
  the full-limit phase, over 25/s. It is settled `SETTLE_AFTER_LIMIT_S` after the
  fleet first met the limit (its first 429; at least `settle_s` into the run) up to
  the halving: the orders' excess of 5/s spends the bucket's burst of 25 only about
  5 s in, so the first 429s, which tell the pods where the limit is, come then;
- 429s per payment: refused creates over created ones in that same stretch
  (`..._from_5s`: from 5 s, the first 429s included; `..._whole_run`: from the
  first order to the end of the drain);
- enqueue -> created p50/p99: from an order's SendMessage to its create's answer;
- recovery: from the halving until every 2 s window up to the end of the run
  holds at least 90 % of the new limit with under 0.05 429s per payment;
- lost / duplicated: orders with no PaymentIntent / with more than one;
- paces: each worker's create pace (`paystep_worker_stripe_rate_per_s`) every
  0.5 s, to tell which pod overshot when the fleet did.

All processes share the machine's cores unpinned (K = 4 workers at 25/s use a
few percent of a core each); the run is arranged one K after another.

    python -m bench.fleet_bench [--quick]     # figures in bench/results-fleet.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import TypeAdapter

from bench.worker_bench import ROOT, Stack, _bodies, _http
from paystep_local.polling import eventually
from paystep_local.processes import free_port, wait_http
from statemachine.models import CreatePaymentTask

RESULTS: Final = Path(__file__).with_name("results-fleet.json")
STRIPE_LATENCY_S: Final = 0.2
GLOBAL_PER_S: Final = 100.0
ENDPOINT_PER_S: Final = 25.0
CREATE: Final = "POST /v1/payment_intents"
OVERLOAD: Final = 1.2
FLEETS: Final = (1, 2, 4)
WINDOW_S: Final = 2.0
RECOVERED_SHARE: Final = 0.9
RECOVERED_429_PER_PAYMENT: Final = 0.05
# Each worker's create pace (its pacer's rate, from its metrics) is read this often.
PACE_EVERY_S: Final = 0.5
PACE_METRIC: Final = 'paystep_worker_stripe_rate_per_s{limiter="payment_intents.create"}'
# From the fleet's first 429 until it is settled at the limit: the window that cuts it
# (a second), the 429s of calls already sent (200 ms) and the window after.
SETTLE_AFTER_LIMIT_S: Final = 3.0


@dataclass(frozen=True)
class Plan:
    run_s: float
    settle_s: float


FULL: Final = Plan(run_s=30, settle_s=5)
QUICK: Final = Plan(run_s=15, settle_s=5)


@contextlib.contextmanager
def _services(workdir: Path) -> Iterator[Stack]:
    stripe_port, sqs_port = free_port(), free_port()
    commands = {
        "fake_stripe": [
            *("-m", "paystep_local.fake_stripe", "--port", str(stripe_port)),
            *("--latency-s", str(STRIPE_LATENCY_S)),
            *("--global-rate-per-s", str(GLOBAL_PER_S)),
            *("--endpoint-rate-per-s", str(ENDPOINT_PER_S)),
        ],
        "fake_sqs": ["-m", "paystep_local.fake_sqs", "--port", str(sqs_port)],
    }  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            stdout=(workdir / f"{name}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for name, argv in commands.items()
    ]
    try:
        stripe_url, sqs_url = f"http://127.0.0.1:{stripe_port}", f"http://127.0.0.1:{sqs_port}"
        wait_http(f"{stripe_url}/_fake/stats", process=procs[0])
        wait_http(f"{sqs_url}/_stats", process=procs[1])
        cores = set(os.sched_getaffinity(0))
        yield Stack(stripe_url, sqs_url, workdir, cores)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def _limits(stack: Stack, scale: float) -> None:
    _http(
        f"{stack.stripe_url}/_fake/rate_limits",
        {"global_per_s": GLOBAL_PER_S * scale, "endpoint_per_s": ENDPOINT_PER_S * scale},
    )


def _start_workers(
    stack: Stack, name: str, count: int
) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """The worker processes and their metrics ports."""
    queue_url = stack.create_queue(name)
    workers = []
    ports = []
    for index in range(count):
        env = stack.aws_env()
        env.update(
            PAYSTEP_QUEUE_URL=queue_url,
            PAYSTEP_STRIPE_API_KEY="sk_test_bench",
            PAYSTEP_STRIPE_API_BASE=stack.stripe_url,
            PAYSTEP_WORKER_CONCURRENCY="64",
            PAYSTEP_WORKER_POLL_WAIT_S="1",
            PAYSTEP_WORKER_RETRY_BASE_S="1",
            PAYSTEP_METRICS_PORT=str(free_port()),
            PAYSTEP_METRICS_HOST="127.0.0.1",
        )
        log = (stack.workdir / f"{name}-{index}.log").open("wb")
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "worker"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        wait_http(f"http://127.0.0.1:{env['PAYSTEP_METRICS_PORT']}/readyz", process=workers[-1])
        ports.append(int(env["PAYSTEP_METRICS_PORT"]))
    return workers, ports


def _pace(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith(PACE_METRIC):
                    return round(float(line.rsplit(" ", 1)[1]), 2)
    except OSError:
        return None
    return None


@contextlib.contextmanager
def _paces(ports: list[int], began: float) -> Iterator[list[list[float | None]]]:
    """Rows of [seconds since `began`, each worker's create pace], every `PACE_EVERY_S`."""
    rows: list[list[float | None]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.wait(PACE_EVERY_S):
            rows.append([round(time.time() - began, 2), *(_pace(port) for port in ports)])

    reader = threading.Thread(target=read, name="paces", daemon=True)
    reader.start()
    try:
        yield rows
    finally:
        stop.set()
        reader.join()


def _arrivals(stack: Stack, name: str, bodies: list[str], rate: float, plan: Plan) -> list[float]:
    """Send `bodies` open loop at `rate`, halving Stripe's limits two thirds in; enqueue times."""
    sent_at: list[float] = []
    began = time.time()
    halved = False
    while len(sent_at) < len(bodies):
        now = time.time()
        if not halved and now - began >= plan.run_s * 2 / 3:
            _limits(stack, 0.5)
            halved = True
        due = min(len(bodies), int((now - began) * rate) + 1)
        if due > len(sent_at):
            stack.load(name, bodies[len(sent_at) : due])
            sent_at.extend([time.time()] * (due - len(sent_at)))
        time.sleep(max(0.0, began + len(sent_at) / rate - time.time()))
    return sent_at


def _windows(
    creates: list[tuple[float, int | str]], start: float, end: float
) -> list[tuple[float, float, float]]:
    """(window start, created/s, 429s per payment) per 2 s window in [start, end)."""
    answer = []
    at = start
    while at + WINDOW_S <= end + 1e-9:
        ok = sum(1 for t, status in creates if at <= t < at + WINDOW_S and status == 200)
        refused = sum(1 for t, status in creates if at <= t < at + WINDOW_S and status != 200)
        answer.append((at, ok / WINDOW_S, refused / max(ok, 1)))
        at += 1.0
    return answer


def _measure(stack: Stack, pods: int, plan: Plan) -> dict[str, Any]:
    name = f"fleet-k{pods}"
    _limits(stack, 1.0)
    workers, ports = _start_workers(stack, name, pods)
    rate = ENDPOINT_PER_S * OVERLOAD
    count = int(rate * plan.run_s)
    bodies = _bodies(count, name)
    adapter = TypeAdapter(CreatePaymentTask)
    keys = [adapter.validate_json(body).idempotency_key for body in bodies]
    orders = {json.loads(body)["request"]["order_id"]: i for i, body in enumerate(bodies)}
    deleted = stack.sqs_stats()["deleted"]
    began = time.time()
    try:
        with _paces(ports, began) as paces:
            sent_at = _arrivals(stack, name, bodies, rate, plan)
            halved_at = began + plan.run_s * 2 / 3
            run_end = began + plan.run_s
            _limits(stack, 1.0)
            eventually(
                lambda: stack.sqs_stats()["deleted"] >= deleted + count,
                timeout_s=300,
                interval_s=0.2,
                what=f"{count} orders done",
            )
            drained_at = time.time()
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(60)
    timeline = _http(f"{stack.stripe_url}/_fake/rate_limits?since={began - 1}")["timeline"]
    by_key = {key: i for i, key in enumerate(keys)}
    ours = [(t, status, key) for t, route, status, key in timeline if route == CREATE]
    creates = [(t, status) for t, status, key in ours if key in by_key]
    created_at: dict[int, float] = {}
    for t, route, status, key in timeline:
        if route == CREATE and status == 200 and key in by_key:
            created_at.setdefault(by_key[key], t)
    intents: dict[int, set[str]] = {}
    for intent in _http(f"{stack.stripe_url}/_fake/payment_intents"):
        for value in intent.get("metadata", {}).values():
            if value in orders:
                intents.setdefault(orders[value], set()).add(intent["id"])
    # A fleet that never passes the limit before the halving (one pod paced at it) is
    # settled from `settle_s`.
    first_refused = min((t for t, s in creates if s != 200 and t < halved_at), default=began)
    settled_at = max(began + plan.settle_s, first_refused + SETTLE_AFTER_LIMIT_S)

    def created_refused(start: float) -> tuple[int, int]:
        stretch = [s for t, s in creates if start <= t < halved_at]
        return sum(1 for s in stretch if s == 200), sum(1 for s in stretch if s != 200)

    ok, refused = created_refused(settled_at)
    ok_from_5s, refused_from_5s = created_refused(began + plan.settle_s)
    windows = _windows(creates, halved_at, run_end)
    recovered_s = None
    for index, (at, _, _) in enumerate(windows):
        if all(
            created >= RECOVERED_SHARE * ENDPOINT_PER_S / 2 and per < RECOVERED_429_PER_PAYMENT
            for _, created, per in windows[index:]
        ):
            recovered_s = at - halved_at
            break
    latencies = sorted(created_at[i] - sent_at[i] for i in created_at)
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    all_ok = sum(1 for _, s in creates if s == 200)
    windows_all = _windows(creates, began, drained_at)
    series = [(round(t - began, 2), ok_s, round(per * ok_s, 2)) for t, ok_s, per in windows_all]
    return {
        "pods": pods,
        "orders": count,
        "arrival_per_s": rate,
        "settled_from_s": round(settled_at - began, 1),
        "share_of_limit": round(ok / (halved_at - settled_at) / ENDPOINT_PER_S, 3),
        "rate_limited_per_payment": round(refused / max(ok, 1), 4),
        "rate_limited_per_payment_from_5s": round(refused_from_5s / max(ok_from_5s, 1), 4),
        "rate_limited_per_payment_whole_run": round(
            sum(1 for _, s in creates if s != 200) / max(all_ok, 1), 4
        ),
        "enqueue_to_created_p50_s": round(quantiles[49], 2),
        "enqueue_to_created_p99_s": round(quantiles[98], 2),
        "recovery_s": recovered_s,
        "lost": sum(1 for i in range(count) if i not in intents),
        "duplicated": sum(1 for ids in intents.values() if len(ids) > 1),
        "drain_s": round(drained_at - run_end, 1),
        "halved_at_s": round(halved_at - began, 1),
        "series": series,
        "paces": paces,
    }


def run(plan: Plan, quick: bool) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="paystep-fleet-bench-") as tmp,
        _services(Path(tmp)) as stack,
    ):
        fleets = {pods: _measure(stack, pods, plan) for pods in FLEETS}
    recoveries = [f["recovery_s"] for f in fleets.values()]
    worst = {
        key: max(f[key] for f in fleets.values())
        for key in (
            "rate_limited_per_payment",
            "rate_limited_per_payment_from_5s",
            *(f"enqueue_to_created_p{q}_s" for q in (50, 99)),
        )
    }
    return {
        **{f"fleet_share_of_limit_k{k}": f["share_of_limit"] for k, f in fleets.items()},
        "fleet_429_per_payment": worst["rate_limited_per_payment"],
        "fleet_429_per_payment_from_5s": worst["rate_limited_per_payment_from_5s"],
        "fleet_recovery_s": None if None in recoveries else max(r or 0.0 for r in recoveries),
        "fleet_enqueue_to_created_p50_s": worst["enqueue_to_created_p50_s"],
        "fleet_enqueue_to_created_p99_s": worst["enqueue_to_created_p99_s"],
        "fleet_lost": sum(f["lost"] for f in fleets.values()),
        "fleet_duplicated": sum(f["duplicated"] for f in fleets.values()),
        "fleet_by_pods": {str(k): f for k, f in fleets.items()},
        "fleet_binding_limit_per_s": ENDPOINT_PER_S,
        "fleet_cores": len(os.sched_getaffinity(0)),
        "fleet_run_s": plan.run_s,
        "quick": quick,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_bench")
    parser.add_argument("--quick", action="store_true", help="a shorter run")
    args = parser.parse_args(argv)
    results = run(QUICK if args.quick else FULL, args.quick)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "fleet_by_pods"}, indent=2))
    for pods, figures in results["fleet_by_pods"].items():
        print(pods, {k: v for k, v in figures.items() if k != "series"})
    return 0 if results["fleet_lost"] == results["fleet_duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
