"""Worker throughput and cost per task against a Stripe that takes 200 ms, and the naive ratio.

Processes: the fake Stripe (`python -m paystep_local.fake_stripe --latency-s 0.2`) and
the SQS fake (`python -m paystep_local.fake_sqs`; moto slows down as a queue grows) share
one core with this process; the worker under test (`python -m worker`, its real
entry point, JSON logs to a file) gets the other core to itself.

For each tasks-in-flight level (16, 64, 256): start a worker with
`PAYSTEP_WORKER_CONCURRENCY` at that level, warm it up, load M create-payment
tasks (card payments, AWS-length tokens) into its queue at once, and time them
until the last one is deleted:

- tasks/s: M over that time;
- worker CPU ms per task: the worker's user + system time over the run, over M;
- SQS requests per task: requests the SQS fake answered during the run, over M;
- Stripe calls per payment: PaymentIntent creates the fake answered, over M;
- peak RSS: the worker's high-water mark (VmHWM).

Then the naive consumer (`bench/naive_consumer.py`: one message at a time, sync
boto3 and stripe) runs on the worker's core for a fixed time; the speed-up is the
worker's tasks/s at 64 in flight over the naive consumer's.

    python -m bench.worker_bench [--quick]     # --quick: under a minute

Figures are printed and written to `bench/results-worker.json`. The machine's other
load changes tasks/s; CPU per task and requests per task move much less.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from paystep_local.polling import eventually
from paystep_local.processes import free_port, wait_http
from statemachine.seal import new_key

RESULTS: Final = Path(__file__).with_name("results-worker.json")
STRIPE_LATENCY_S: Final = 0.2
LEVELS: Final = (16, 64, 256)
HEADLINE_LEVEL: Final = 64
UNLIMITED_PER_S: Final = 100_000
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
BENCH_ALARM_TOPIC_ARN: Final = "arn:aws:sns:us-east-1:000000000000:bench-alarms"
ROOT: Final = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Plan:
    run_s: float
    naive_s: float
    max_rate_per_s: float


FULL: Final = Plan(run_s=12, naive_s=15, max_rate_per_s=1200)
QUICK: Final = Plan(run_s=3, naive_s=5, max_rate_per_s=800)


def _cores() -> tuple[set[int], set[int]]:
    """(the worker's core, everyone else's); one shared set on a single core."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return set(available), set(available)
    return {available[0]}, set(available[1:])


def _token() -> str:
    length = 1000 + secrets.randbelow(1049)  # AWS task tokens run to 2,048 characters
    return base64.b64encode(secrets.token_bytes(length)).decode()[:length]


def _bodies(count: int, run: str) -> list[str]:
    return [
        json.dumps(
            {
                "type": "create_payment",
                "task_token": _token(),
                "execution_id": f"arn:aws:states:us-east-1:123456789012:execution:bench:{run}-{i}",
                "state": "CreatePayment",
                "attempt": 1,
                "request": {
                    "order_id": f"ord_{run}_{i}",
                    "amount": 1999,
                    "currency": "usd",
                    "payment_method": "pm_card_visa",
                    "metadata": {"campaign": "bench"},
                },
            }
        )
        for i in range(count)
    ]


def _http(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        headers={"Content-Type": "application/json"},
        method="POST" if data else "GET",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Stack:
    stripe_url: str
    sqs_url: str
    workdir: Path
    worker_cores: set[int]
    token_keys: str = field(default_factory=new_key, repr=False)

    def aws_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PAYSTEP_"))}
        env.update(
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL_SQS=self.sqs_url,
            # Never called by card payments; set so nothing reaches a real endpoint.
            AWS_ENDPOINT_URL_SFN=self.sqs_url,
            AWS_ENDPOINT_URL_SNS=self.sqs_url,
            AWS_ENDPOINT_URL_DYNAMODB=self.sqs_url,
            PYTHONPATH=str(ROOT),
            PAYSTEP_TOKEN_KEYS=self.token_keys,
            # Only refunds publish to it, and the bench makes none: no SNS behind it.
            PAYSTEP_ALARM_TOPIC_ARN=BENCH_ALARM_TOPIC_ARN,
            # Only the order tasks use them, and the bench sends create tasks only.
            PAYSTEP_ORDERS_TABLE="bench-orders",
            PAYSTEP_INVENTORY_TABLE="bench-inventory",
            # Read on a decline only, and the bench's payments succeed: no table behind it.
            PAYSTEP_CARD_ATTEMPTS_TABLE="bench-card-attempts",
        )
        return env

    def create_queue(self, name: str) -> str:
        import boto3

        sqs = boto3.client(
            "sqs",
            endpoint_url=self.sqs_url,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        url: str = sqs.create_queue(QueueName=name)["QueueUrl"]
        return url

    def load(self, queue: str, bodies: list[str]) -> None:
        for start in range(0, len(bodies), 2000):
            _http(f"{self.sqs_url}/_load", {"queue": queue, "bodies": bodies[start : start + 2000]})

    def sqs_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = _http(f"{self.sqs_url}/_stats")
        return stats

    def stripe_creates(self) -> int:
        routes: dict[str, int] = _http(f"{self.stripe_url}/_fake/stats")["routes"]
        return routes.get("POST /v1/payment_intents", 0)


@contextlib.contextmanager
def _services(workdir: Path, worker_cores: set[int], other_cores: set[int]) -> Iterator[Stack]:
    os.sched_setaffinity(0, other_cores)
    stripe_port, sqs_port = free_port(), free_port()
    procs = [
        subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=(workdir / f"{name}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for name, argv in (
            (
                "fake_stripe",
                [
                    sys.executable,
                    "-m",
                    "paystep_local.fake_stripe",
                    "--port",
                    str(stripe_port),
                    "--latency-s",
                    str(STRIPE_LATENCY_S),
                ],
            ),
            ("fake_sqs", [sys.executable, "-m", "paystep_local.fake_sqs", "--port", str(sqs_port)]),
        )
    ]
    try:
        stripe_url, sqs_url = f"http://127.0.0.1:{stripe_port}", f"http://127.0.0.1:{sqs_port}"
        wait_http(f"{stripe_url}/_fake/stats", process=procs[0])
        wait_http(f"{sqs_url}/_stats", process=procs[1])
        yield Stack(stripe_url, sqs_url, workdir, worker_cores)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def _wait_deleted(stack: Stack, target: int, timeout_s: float) -> float:
    """The moment the SQS fake counted `target` deletions."""
    eventually(
        lambda: stack.sqs_stats()["deleted"] >= target,
        timeout_s=timeout_s,
        interval_s=0.02,
        what=f"{target} tasks done",
    )
    return time.monotonic()


def _measure_worker(stack: Stack, in_flight: int, plan: Plan) -> dict[str, float]:
    name = f"worker-{in_flight}"
    queue_url = stack.create_queue(name)
    metrics_port = free_port()
    env = stack.aws_env()
    env.update(
        PAYSTEP_QUEUE_URL=queue_url,
        PAYSTEP_STRIPE_API_KEY="sk_test_bench",
        PAYSTEP_STRIPE_API_BASE=stack.stripe_url,
        PAYSTEP_WORKER_CONCURRENCY=str(in_flight),
        # The worker's own capacity: a Stripe account whose limits are far above it
        # (bench/fleet_bench.py measures the fleet at Stripe's real limits).
        PAYSTEP_WORKER_STRIPE_ACCOUNT_RATE_PER_S=str(UNLIMITED_PER_S),
        PAYSTEP_WORKER_STRIPE_ENDPOINT_RATE_PER_S=str(UNLIMITED_PER_S),
        PAYSTEP_METRICS_PORT=str(metrics_port),
        PAYSTEP_METRICS_HOST="127.0.0.1",
    )
    log = (stack.workdir / f"{name}.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        os.sched_setaffinity(worker.pid, stack.worker_cores)
        wait_http(f"http://127.0.0.1:{metrics_port}/readyz", process=worker)
        warmup = in_flight * 2
        deleted = stack.sqs_stats()["deleted"]
        stack.load(name, _bodies(warmup, f"{name}-warm"))
        _wait_deleted(stack, deleted + warmup, timeout_s=60)

        rate = min(in_flight / STRIPE_LATENCY_S, plan.max_rate_per_s)
        count = max(in_flight * 4, int(rate * plan.run_s))
        bodies = _bodies(count, name)
        before_sqs = stack.sqs_stats()
        before_creates = stack.stripe_creates()
        before_cpu = _cpu_s(worker.pid)
        started = time.monotonic()
        stack.load(name, bodies)
        finished = _wait_deleted(stack, before_sqs["deleted"] + count, timeout_s=300)
        cpu_s = _cpu_s(worker.pid) - before_cpu
        after_sqs = stack.sqs_stats()
        sqs_requests = sum(after_sqs["requests"].values()) - sum(before_sqs["requests"].values())
        result = {
            "tasks": count,
            "tasks_per_s": count / (finished - started),
            "cpu_ms_per_task": cpu_s * 1000 / count,
            "sqs_requests_per_task": sqs_requests / count,
            "stripe_calls_per_payment": (stack.stripe_creates() - before_creates) / count,
            "peak_rss_mb": _peak_rss_mb(worker.pid),
        }
    finally:
        worker.send_signal(signal.SIGTERM)
        exit_code = worker.wait(60)
        log.close()
    if exit_code != 0:
        raise RuntimeError(f"worker at {in_flight} in flight exited {exit_code}")
    return result


def _measure_naive(stack: Stack, plan: Plan) -> dict[str, float]:
    queue_url = stack.create_queue("naive")
    stack.load("naive", _bodies(int(plan.naive_s / STRIPE_LATENCY_S * 2) + 20, "naive"))
    env = stack.aws_env()
    env["PAYSTEP_STRIPE_API_KEY"] = "sk_test_bench"
    answer = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.naive_consumer",
            "--queue-url",
            queue_url,
            "--stripe-base",
            stack.stripe_url,
            "--duration-s",
            str(plan.naive_s),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=True,
        timeout=plan.naive_s + 120,
        preexec_fn=lambda: os.sched_setaffinity(0, stack.worker_cores),
    )
    figures = json.loads(answer.stdout)
    return {
        "tasks_per_s": figures["tasks"] / figures["elapsed_s"],
        "cpu_ms_per_task": figures["cpu_s"] * 1000 / max(figures["tasks"], 1),
        "sqs_requests_per_task": figures["sqs_requests"] / max(figures["tasks"], 1),
    }


def run(plan: Plan, quick: bool) -> dict[str, Any]:
    worker_cores, other_cores = _cores()
    with (
        tempfile.TemporaryDirectory(prefix="paystep-worker-bench-") as tmp,
        _services(Path(tmp), worker_cores, other_cores) as stack,
    ):
        by_level = {level: _measure_worker(stack, level, plan) for level in LEVELS}
        naive = _measure_naive(stack, plan)
    headline = by_level[HEADLINE_LEVEL]
    return {
        "worker_tasks_per_s": {str(k): round(v["tasks_per_s"], 1) for k, v in by_level.items()},
        "speedup_vs_naive": round(headline["tasks_per_s"] / naive["tasks_per_s"], 1),
        "worker_cpu_ms_per_task": round(headline["cpu_ms_per_task"], 3),
        "worker_peak_rss_mb": round(max(v["peak_rss_mb"] for v in by_level.values()), 1),
        "sqs_requests_per_task": round(headline["sqs_requests_per_task"], 3),
        "stripe_calls_per_payment": round(
            max(v["stripe_calls_per_payment"] for v in by_level.values()), 3
        ),
        "headline_in_flight": HEADLINE_LEVEL,
        "worker_cpu_ms_per_task_by_in_flight": {
            str(k): round(v["cpu_ms_per_task"], 3) for k, v in by_level.items()
        },
        "sqs_requests_per_task_by_in_flight": {
            str(k): round(v["sqs_requests_per_task"], 3) for k, v in by_level.items()
        },
        "tasks_measured_by_in_flight": {str(k): int(v["tasks"]) for k, v in by_level.items()},
        "naive_tasks_per_s": round(naive["tasks_per_s"], 2),
        "naive_cpu_ms_per_task": round(naive["cpu_ms_per_task"], 3),
        "naive_sqs_requests_per_task": round(naive["sqs_requests_per_task"], 3),
        "stripe_latency_s": STRIPE_LATENCY_S,
        "quick": quick,
        "cores": len(worker_cores | other_cores),
        "worker_pinned_alone": worker_cores.isdisjoint(other_cores),
        "python": platform.python_version(),
        "run_id": uuid.uuid4().hex[:8],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_bench")
    parser.add_argument("--quick", action="store_true", help="a run of under a minute")
    args = parser.parse_args(argv)
    results = run(QUICK if args.quick else FULL, args.quick)
    text = json.dumps(results, indent=2)
    print(text)
    RESULTS.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
