"""paystep's own processes (worker, webhook) started on loopback and stopped for certain.

A stack (`LocalStack`) spawns each process in a session of its own with its
output in a log file; the functions here add what a worker or a webhook needs
(ports, settings) and wait until it answers:

    proc = start_worker(stack, {"PAYSTEP_WORKER_RETRY_BASE_S": "1"})
    proc.urls["metrics"]              # http://127.0.0.1:PORT (/metrics, /healthz, /readyz)
    hook = start_webhook(stack)       # not registered with the Stripe emulator
    hook.urls["webhook"], hook.urls["base"], hook.urls["metrics"]

`Workers` keeps the workers a test started and kills them after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Protocol

from paystep_local.polling import NotInTime, eventually

Popen = subprocess.Popen[bytes]

READY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 15.0
# A local worker's receive and batching: see `start_worker`.
BRISK: Final = {"PAYSTEP_WORKER_POLL_WAIT_S": "1", "PAYSTEP_WORKER_BATCH_DELAY_S": "0.05"}
LOOPBACK: Final = "127.0.0.1"


class StackError(RuntimeError):
    """A part of the local stack could not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, timeout_s: float = READY_TIMEOUT_S, process: Popen | None = None) -> None:
    """Wait until `url` answers at all (any HTTP status counts as up)."""

    def answers() -> bool:
        if process is not None and process.poll() is not None:
            raise StackError(
                f"{process.args!r} exited with {process.returncode} before {url} answered"
            )
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    try:
        eventually(answers, timeout_s=timeout_s, interval_s=0.1, what=f"{url} to answer")
    except NotInTime as exc:
        raise StackError(str(exc)) from exc


@dataclass
class ManagedProcess:
    name: str
    process: Popen
    log_path: Path
    log_file: IO[bytes]
    urls: dict[str, str] = field(default_factory=dict)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout_s)
        self.log_file.close()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the process group: a crash, not a shutdown."""
        self.stop(signal.SIGKILL)

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines the process wrote so far."""
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def healthy(self) -> bool:
        """Whether its metrics server answers `/healthz` with 200."""
        try:
            with urllib.request.urlopen(self.urls["metrics"] + "/healthz", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False


class Spawner(Protocol):
    def spawn(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None
    ) -> ManagedProcess: ...


def start_worker(
    stack: Spawner, env: Mapping[str, str] | None = None, *, ready_path: str | None = "/readyz"
) -> ManagedProcess:
    """A `paystep worker` with the stack's settings and `env`; waits for `ready_path`.

    It polls briskly unless `env` says otherwise: the local queues answer at once, and
    on SIGTERM a worker lets its receive in flight finish, so a 20 s long poll would
    hold every stop of the local stack for up to 20 s.
    """
    proc = _start(stack, "worker", {"metrics": _loopback(free_port())}, {**BRISK, **(env or {})})
    if ready_path is not None:
        wait_http(proc.urls["metrics"] + ready_path, process=proc.process)
    return proc


def start_webhook(
    stack: Spawner, env: Mapping[str, str] | None = None, *, port: int | None = None
) -> ManagedProcess:
    """A `paystep webhook` on `port` (a free one if None), once it answers; not registered."""
    base = _loopback(port or free_port())
    urls = {"base": base, "webhook": base + "/webhooks/stripe", "metrics": _loopback(free_port())}
    listen = {"PAYSTEP_WEBHOOK_HOST": LOOPBACK, "PAYSTEP_WEBHOOK_PORT": _port(base)}
    proc = _start(stack, "webhook", urls, {**listen, **(env or {})})
    wait_http(base + "/healthz", process=proc.process)
    return proc


def _start(
    stack: Spawner, command: str, urls: dict[str, str], env: Mapping[str, str] | None
) -> ManagedProcess:
    """`paystep <command>` on loopback, its metrics at `urls["metrics"]`."""
    proc = stack.spawn(
        command,
        [sys.executable, "-m", "paystep", command],
        env={
            "PAYSTEP_METRICS_HOST": LOOPBACK,
            "PAYSTEP_METRICS_PORT": _port(urls["metrics"]),
            **(env or {}),
        },
    )
    proc.urls = urls
    return proc


@dataclass
class Workers:
    """The workers a test started, all killed after it."""

    stack: Spawner
    started: list[ManagedProcess] = field(default_factory=list)

    def start(
        self,
        deployment: Mapping[str, Any],
        stripe_base: str,
        *,
        wait_ready: bool = True,
        **env: str,
    ) -> ManagedProcess:
        """A worker on `deployment`, its Stripe at `stripe_base` (polling briskly)."""
        proc = start_worker(
            self.stack,
            {
                "PAYSTEP_QUEUE_URL": deployment["queue_url"],
                "PAYSTEP_STATE_MACHINE_ARN": deployment["state_machine_arn"],
                "PAYSTEP_ALARM_TOPIC_ARN": deployment["alarms_topic_arn"],
                "PAYSTEP_ORDERS_TABLE": deployment["orders_table"],
                "PAYSTEP_INVENTORY_TABLE": deployment["inventory_table"],
                "PAYSTEP_CARD_ATTEMPTS_TABLE": deployment["card_attempts_table"],
                "PAYSTEP_STRIPE_API_BASE": stripe_base,
                **env,
            },
            ready_path="/readyz" if wait_ready else None,
        )
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            proc.kill()


def _loopback(port: int) -> str:
    return f"http://{LOOPBACK}:{port}"


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1]
