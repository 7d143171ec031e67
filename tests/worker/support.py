"""Helpers of the worker tests: worker processes, polling, queue and metrics reads."""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from paystep_local.localstack import (
    LOCAL_STRIPE_KEY,
    LocalStack,
    ManagedProcess,
    free_port,
    wait_http,
)

FAST_RETRIES = {
    "PAYSTEP_WORKER_RETRY_BASE_S": "1",
    "PAYSTEP_WORKER_RETRY_MAX_S": "2",
}


@dataclass
class Workers:
    """Start `paystep worker` processes against one deployment; all stopped after the test."""

    stack: LocalStack
    started: list[ManagedProcess] = field(default_factory=list)

    def start(
        self, deployment: dict[str, Any], stripe_base: str, *, wait_ready: bool = True, **env: str
    ) -> ManagedProcess:
        metrics_port = free_port()
        proc = self.stack.spawn(
            "worker",
            [sys.executable, "-m", "paystep", "worker"],
            env={
                "PAYSTEP_QUEUE_URL": deployment["queue_url"],
                "PAYSTEP_STATE_MACHINE_ARN": deployment["state_machine_arn"],
                "PAYSTEP_STRIPE_API_BASE": stripe_base,
                "PAYSTEP_STRIPE_API_KEY": LOCAL_STRIPE_KEY,
                "PAYSTEP_METRICS_PORT": str(metrics_port),
                "PAYSTEP_METRICS_HOST": "127.0.0.1",
                "PAYSTEP_WORKER_POLL_WAIT_S": "1",
                "PAYSTEP_WORKER_BATCH_DELAY_S": "0.05",
                **env,
            },
        )
        proc.urls = {"metrics": f"http://127.0.0.1:{metrics_port}"}
        self.started.append(proc)
        if wait_ready:
            wait_http(f"http://127.0.0.1:{metrics_port}/readyz", process=proc.process)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop(signal.SIGKILL)


def worker_env(deployment: dict[str, Any], proc: ManagedProcess) -> dict[str, str]:
    """The settings a second command needs to reach a running worker (`--check`)."""
    return {
        "PAYSTEP_QUEUE_URL": deployment["queue_url"],
        "PAYSTEP_STRIPE_API_KEY": LOCAL_STRIPE_KEY,
        "PAYSTEP_METRICS_PORT": proc.urls["metrics"].rsplit(":", 1)[1],
    }


def eventually(
    check: Callable[[], Any], *, timeout_s: float = 30, interval_s: float = 0.2, what: str = ""
) -> Any:
    """`check()`'s first truthy value; fails the test after `timeout_s` (not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what or check}")
        time.sleep(interval_s)


def queue_counts(sqs: Any, url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue; exact on moto."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def queue_empty(sqs: Any, url: str) -> bool:
    return queue_counts(sqs, url) == (0, 0)


def execution_status(sfn: Any, arn: str) -> dict[str, Any]:
    described: dict[str, Any] = sfn.describe_execution(executionArn=arn)
    return described


def scrape(proc: ManagedProcess) -> str:
    with urllib.request.urlopen(proc.urls["metrics"] + "/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if (
            not labels
            or got == wanted
            or all(f'{k}="{v}"' in label_text for k, v in labels.items())
        ):
            total += float(value)
    return total


def log_events(proc: ManagedProcess) -> list[dict[str, Any]]:
    """The JSON log lines a worker wrote so far."""
    events = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def healthy(proc: ManagedProcess) -> bool:
    try:
        with urllib.request.urlopen(proc.urls["metrics"] + "/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
