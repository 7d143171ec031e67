"""How many verified Stripe events one webhook process handles, and how fast it answers.

The webhook runs as its real process (`python -m webhook`) pinned to one core,
with Step Functions answered by `paystep_local/fake_sfn.py`; the load comes from this
process on the other core(s). Every event is signed as Stripe signs it, carries
an AWS-length task token split over PaymentIntent metadata, and goes the whole
way: size check, signature, parse, the event table, SendTask* through aioboto3
(adaptive retries), metrics, one JSON log line.

- events/s: a closed loop of concurrent deliveries for a fixed time;
- p50/p99 latency at a fixed 200 events/s, open loop, timed from each event's
  scheduled send time (a slow answer cannot hide the ones queued behind it);
- CPU per event: the webhook process's user+system time over the events answered
  (and its inverse, events per CPU-second, which other load on the machine
  disturbs less than events/s).

- under the SendTask* quota: a second webhook against a fake that throttles at
  `QUOTA_PER_S` (`--throttle-per-s`), events offered open loop at 1.6 times that
  for `quota_s`; a delivery answered anything but 200 is sent again a second
  later, as Stripe redelivers (over hours; here compressed), until a deadline.
  Lost events: those never answered 200; the 503 share: non-200 answers over
  all deliveries.

The mix is 80 % `payment_intent.succeeded`, 10 % `payment_intent.processing`
(heartbeats) and 10 % `charge.succeeded` (verified, then ignored).

    python -m bench.webhook_bench [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path
from typing import Any, Final

import aiohttp
import stripe

from paystep_local.processes import free_port, wait_http
from statemachine.metadata import payment_intent_metadata
from statemachine.seal import Binding, TokenKeys, new_key

RESULTS: Final = Path(__file__).with_name("results-webhook.json")
SECRET: Final = "whsec_" + "be" * 16
FIXED_RATE_PER_S: Final = 200
QUOTA_PER_S: Final = 200
QUOTA_OVERLOAD: Final = 1.6
REDELIVER_S: Final = 1.0
REDELIVERY_DEADLINE_S: Final = 120.0
DISTINCT_EVENTS: Final = 2000
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
TOKEN_KEYS: Final = new_key("bench")
STATE_MACHINE_ARN: Final = "arn:aws:states:us-east-1:123456789012:stateMachine:bench"
# Where the webhook asks for a check of a payment whose task is already closed; the
# bench's payments all have open tasks, so nothing is sent there.
TASK_QUEUE_URL: Final = "https://sqs.us-east-1.amazonaws.com/123456789012/bench-tasks"


@dataclass(frozen=True)
class Plan:
    warmup_s: float
    throughput_s: float
    latency_s: float
    concurrency: int
    quota_s: float


FULL: Final = Plan(warmup_s=3, throughput_s=20, latency_s=30, concurrency=32, quota_s=30)
QUICK: Final = Plan(warmup_s=1, throughput_s=5, latency_s=8, concurrency=32, quota_s=8)


# -- events ------------------------------------------------------------------------------


def _token() -> str:
    length = 1000 + secrets.randbelow(1049)  # AWS task tokens run to 2,048 characters
    return base64.b64encode(secrets.token_bytes(length)).decode()[:length]


def _event(index: int) -> bytes:
    kind = index % 10
    pi_id = f"pi_{uuid.uuid4().hex[:24]}"
    execution = f"arn:aws:states:us-east-1:123456789012:execution:bench:{index}"
    metadata = payment_intent_metadata(
        TokenKeys.parse(TOKEN_KEYS),
        _token(),
        Binding(execution, "1", 1999, "usd", False),
        order_id=f"ord_{index}",
    )
    event_type, obj = (
        "payment_intent.succeeded",
        {
            "id": pi_id,
            "object": "payment_intent",
            "amount": 1999,
            "amount_received": 1999,
            "currency": "usd",
            "latest_charge": f"ch_{uuid.uuid4().hex[:24]}",
            "metadata": metadata,
            "status": "succeeded",
            "livemode": False,
        },
    )
    if kind == 8:
        event_type, obj = "payment_intent.processing", {**obj, "status": "processing"}
    elif kind == 9:
        event_type, obj = "charge.succeeded", {"id": obj["latest_charge"], "object": "charge"}
    event = {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "data": {"object": obj},
        "livemode": False,
        "type": event_type,
    }
    return json.dumps(event, indent=2).encode()


def _headers(body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": stripe.WebhookSignature.generate_signature_header(
            body.decode(), SECRET
        ),
    }


def _process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


# -- processes ---------------------------------------------------------------------------


@dataclass
class Processes:
    webhook: subprocess.Popen[bytes]
    fake: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def cpu_s(self) -> float:
        return _process_cpu_s(self.webhook.pid)

    def others_cpu_s(self) -> float:
        """CPU time the rest of the machine used: the bench cannot control it, only report it."""
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        machine_s = (user + nice + system + irq + softirq + steal) / CLK_TCK
        ours_s = sum(_process_cpu_s(pid) for pid in (self.webhook.pid, self.fake.pid, os.getpid()))
        return machine_s - ours_s

    def stop(self) -> None:
        for proc in (self.webhook, self.fake):
            proc.terminate()
            proc.wait(15)


def start(
    workdir: Path, webhook_core: int, load_cores: set[int], throttle_per_s: float | None = None
) -> Processes:
    fake_port, port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PAYSTEP_"))},
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{fake_port}",
        "PAYSTEP_WEBHOOK_SECRETS": SECRET,
        "PAYSTEP_TOKEN_KEYS": TOKEN_KEYS,
        "PAYSTEP_STATE_MACHINE_ARN": STATE_MACHINE_ARN,
        "PAYSTEP_QUEUE_URL": TASK_QUEUE_URL,
        "PAYSTEP_NOTIFICATIONS_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:bench",
        "PAYSTEP_CARD_ATTEMPTS_TABLE": "bench-card-attempts",
        "PAYSTEP_WEBHOOK_PORT": str(port),
        "PAYSTEP_METRICS_PORT": str(free_port()),
        "PAYSTEP_LOG_FORMAT": "json",
    }
    throttle = [] if throttle_per_s is None else ["--throttle-per-s", str(throttle_per_s)]
    fake = subprocess.Popen(
        [sys.executable, "-m", "paystep_local.fake_sfn", "--port", str(fake_port), *throttle],
        env=env,
        preexec_fn=lambda: os.sched_setaffinity(0, load_cores),
    )
    log_path = workdir / "webhook.log"
    with log_path.open("wb") as log:
        webhook = subprocess.Popen(
            [sys.executable, "-m", "webhook"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, {webhook_core}),
        )
    wait_http(f"http://127.0.0.1:{port}/healthz", process=webhook)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
        assert response.status == 200, "the webhook cannot reach the fake Step Functions"
    return Processes(webhook, fake, f"http://127.0.0.1:{port}/webhooks/stripe", log_path)


# -- load --------------------------------------------------------------------------------


async def _deliver(session: aiohttp.ClientSession, url: str, body: bytes) -> bool:
    async with session.post(url, data=body, headers=_headers(body)) as response:
        await response.read()
        return response.status == 200


async def closed_loop(
    session: aiohttp.ClientSession, url: str, bodies: Iterator[bytes], seconds: float, workers: int
) -> tuple[int, int, float]:
    ok = failed = 0
    began = time.perf_counter()
    stop_at = began + seconds

    async def worker() -> None:
        nonlocal ok, failed
        while time.perf_counter() < stop_at:
            if await _deliver(session, url, next(bodies)):
                ok += 1
            else:
                failed += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return ok, failed, time.perf_counter() - began


async def open_loop(
    session: aiohttp.ClientSession, url: str, bodies: Iterator[bytes], seconds: float, rate: int
) -> tuple[list[float], int]:
    latencies_s: list[float] = []
    failed = 0

    async def one(scheduled: float, body: bytes) -> None:
        nonlocal failed
        if await _deliver(session, url, body):
            latencies_s.append(time.perf_counter() - scheduled)
        else:
            failed += 1

    first = time.perf_counter() + 0.05
    tasks = []
    for index in range(int(seconds * rate)):
        scheduled = first + index / rate
        pause = scheduled - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
        tasks.append(asyncio.create_task(one(scheduled, next(bodies))))
    await asyncio.gather(*tasks)
    return latencies_s, failed


async def under_quota(procs: Processes, plan: Plan) -> dict[str, Any]:
    """Events at 1.6x the quota, each redelivered until answered 200 or the deadline."""
    rate = QUOTA_PER_S * QUOTA_OVERLOAD
    bodies = [_event(i) for i in range(int(plan.quota_s * rate))]
    attempts = refused = 0
    delivered_after_s: list[float] = []
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector) as session:
        first = time.perf_counter() + 0.05
        deadline = first + plan.quota_s + REDELIVERY_DEADLINE_S

        async def until_delivered(scheduled: float, body: bytes) -> None:
            nonlocal attempts, refused
            while time.perf_counter() < deadline:
                attempts += 1
                try:
                    if await _deliver(session, procs.url, body):
                        delivered_after_s.append(time.perf_counter() - scheduled)
                        return
                except aiohttp.ClientError:
                    pass
                refused += 1
                await asyncio.sleep(REDELIVER_S)

        tasks = []
        for index, body in enumerate(bodies):
            scheduled = first + index / rate
            pause = scheduled - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            tasks.append(asyncio.create_task(until_delivered(scheduled, body)))
        await asyncio.gather(*tasks)
    return {
        "webhook_quota_per_s": QUOTA_PER_S,
        "webhook_quota_offered_per_s": rate,
        "webhook_quota_events": len(bodies),
        "webhook_quota_lost_events": len(bodies) - len(delivered_after_s),
        "webhook_quota_503_share": round(refused / max(attempts, 1), 3),
        "webhook_quota_deliveries_per_event": round(attempts / max(len(bodies), 1), 3),
        "webhook_quota_delivered_p99_s": round(
            statistics.quantiles(delivered_after_s, n=100, method="inclusive")[98], 2
        ),
    }


async def measure(procs: Processes, plan: Plan) -> dict[str, Any]:
    bodies = cycle([_event(i) for i in range(DISTINCT_EVENTS)])
    connector = aiohttp.TCPConnector(limit=plan.concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        await closed_loop(session, procs.url, bodies, plan.warmup_s, plan.concurrency)

        cpu_before, others_before = procs.cpu_s(), procs.others_cpu_s()
        ok, failed, elapsed_s = await closed_loop(
            session, procs.url, bodies, plan.throughput_s, plan.concurrency
        )
        cpu_s = procs.cpu_s() - cpu_before
        others_throughput = (procs.others_cpu_s() - others_before) / elapsed_s

        others_before, began = procs.others_cpu_s(), time.perf_counter()
        latencies_s, late_failed = await open_loop(
            session, procs.url, bodies, plan.latency_s, FIXED_RATE_PER_S
        )
        others_latency = (procs.others_cpu_s() - others_before) / (time.perf_counter() - began)
    quantiles = statistics.quantiles(latencies_s, n=100, method="inclusive")
    return {
        "webhook_events_per_s": round(ok / elapsed_s, 1),
        "webhook_p50_ms": round(quantiles[49] * 1000, 2),
        "webhook_p99_ms": round(quantiles[98] * 1000, 2),
        "webhook_cpu_ms_per_event": round(cpu_s * 1000 / max(ok, 1), 3),
        # What a whole core would do at that cost: steadier than events/s on a shared machine.
        "webhook_events_per_cpu_s": round(ok / cpu_s, 1) if cpu_s else None,
        "webhook_cpu_busy_during_throughput": round(cpu_s / elapsed_s, 2),
        "webhook_max_ms": round(max(latencies_s) * 1000, 2),
        # Cores busy with other processes while measuring; tails suffer when this is high.
        "other_processes_cores_throughput": round(others_throughput, 2),
        "other_processes_cores_latency": round(others_latency, 2),
        "events_answered_throughput": ok,
        "events_answered_at_fixed_rate": len(latencies_s),
        "non_2xx": failed + late_failed,
        "fixed_rate_per_s": FIXED_RATE_PER_S,
        "concurrency": plan.concurrency,
        "throughput_s": plan.throughput_s,
        "latency_s": plan.latency_s,
        "mix": "80% payment_intent.succeeded, 10% processing, 10% charge.succeeded",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhook_bench")
    parser.add_argument("--quick", action="store_true", help="a short run (< 30 s)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        print(
            "webhook_bench: needs 2 cores (one for the webhook, one for the load)", file=sys.stderr
        )
        return 2
    webhook_core, load_cores = cores[0], set(cores[1:])
    os.sched_setaffinity(0, load_cores)

    with tempfile.TemporaryDirectory(prefix="webhook-bench-") as workdir:
        procs = start(Path(workdir), webhook_core, load_cores)
        try:
            results = asyncio.run(measure(procs, plan))
        finally:
            procs.stop()
        delivered = procs.log_path.read_text().count('"event": "webhook.callback_delivered"')
        (Path(workdir) / "quota").mkdir()
        quota = start(Path(workdir) / "quota", webhook_core, load_cores, QUOTA_PER_S)
        try:
            results.update(asyncio.run(under_quota(quota, plan)))
        finally:
            quota.stop()
    results.update(
        quick=args.quick,
        cores=len(cores),
        webhook_core=webhook_core,
        callbacks_logged=delivered,
        python=sys.version.split()[0],
    )
    for key, value in results.items():
        print(f"{key:38} {value}")
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
