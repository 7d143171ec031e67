"""The embedded local stack: moto, the local Stripe and paystep's own processes, on loopback.

The local Stripe is localstripe behind `paystep_local.stripe_chaos_proxy` (Stripe's
rules, idempotency keys): `stripe_base` is the proxy, `localstripe_base` the
emulator itself, for a test that puts its own faulty proxy in front of it.

Every part is a real process started here and stopped here; nothing is left
behind when `LocalStack.stop()` runs (it is also an atexit-safe context manager).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Self

from paystep_local import processes
from paystep_local.processes import ManagedProcess, StackError, free_port, wait_http
from statemachine import metadata
from statemachine.seal import TokenKeys, new_key

__all__ = ["LOCAL_STRIPE_KEY", "LocalStack", "ManagedProcess", "StackError", "free_port"]

LOCAL_STRIPE_KEY: Final = "sk_test_paystep_local"
LOCAL_REGION: Final = "us-east-1"


def http_post(url: str, body: bytes, content_type: str) -> bytes:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": content_type}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        data: bytes = response.read()
        return data


@dataclass
class LocalStack:
    """Start the parts one by one (`start_aws`, `start_stripe`, ...) or all with `start`."""

    workdir: Path
    workers: int = 1
    aws_length_tokens: bool = True
    # How long a new PaymentIntent stays out of the local Stripe's search results, as
    # Stripe's search lags writes (see paystep_local.stripe_chaos_proxy).
    search_lag_s: float = 0.0
    webhook_secret: str = field(default_factory=lambda: "whsec_" + secrets.token_hex(16))
    # A token key of the stack's own, as `paystep keygen` makes one: every process shares it.
    token_keys: str = field(default_factory=new_key, repr=False)
    aws_endpoint: str | None = None
    stripe_base: str | None = None
    localstripe_base: str | None = None
    webhook_url: str | None = None
    deployment: dict[str, Any] | None = None
    processes: list[ManagedProcess] = field(default_factory=list)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the emulators -------------------------------------------------------------------

    def start_aws(self) -> str:
        port = free_port()
        argv = [sys.executable, "-m", "paystep_local.moto_server", "--port", str(port)]
        if not self.aws_length_tokens:
            argv.append("--short-tokens")
        proc = self.spawn("moto", argv, env={"MOTO_PORT": str(port)})
        endpoint = f"http://127.0.0.1:{port}"
        wait_http(f"{endpoint}/moto-api/", process=proc.process)
        # moto executes state machines only with this config on: it switches Step Functions
        # to a separate, executing backend, so machines created before it never execute
        # (https://docs.getmoto.org/en/latest/docs/services/stepfunctions.html).
        http_post(
            f"{endpoint}/moto-api/config",
            json.dumps({"stepfunctions": {"execute_state_machine": True}}).encode(),
            "application/json",
        )
        self.aws_endpoint = endpoint
        return endpoint

    def start_stripe(self) -> str:
        port = free_port()
        tmp = self.workdir / "localstripe"
        tmp.mkdir(parents=True, exist_ok=True)
        # localstripe rewrites a pickle in the temp folder on every change: one folder each.
        proc = self.spawn(
            "localstripe",
            [
                sys.executable,
                "-m",
                "paystep_local.localstripe_cards",
                "--port",
                str(port),
                "--from-scratch",
            ],
            env={"TMPDIR": str(tmp)},
        )
        localstripe = f"http://127.0.0.1:{port}"
        wait_http(f"{localstripe}/v1/customers", process=proc.process)
        self.localstripe_base = localstripe
        # paystep talks to the local Stripe in front of it: Stripe's rules and idempotency
        # keys, which localstripe lacks (see paystep_local.stripe_chaos_proxy).
        port = free_port()
        proc = self.spawn(
            "stripe",
            [
                sys.executable,
                "-m",
                "paystep_local.stripe_chaos_proxy",
                "--upstream",
                localstripe,
                "--port",
                str(port),
                "--search-lag-s",
                str(self.search_lag_s),
            ],
        )
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/v1/customers", process=proc.process)
        self.stripe_base = base
        return base

    def register_webhook(self, url: str, webhook_id: str = "paystep") -> None:
        """Tell localstripe where to deliver signed events."""
        assert self.stripe_base, "start_stripe() first"
        body = urllib.parse.urlencode({"url": url, "secret": self.webhook_secret}).encode()
        http_post(
            f"{self.stripe_base}/_config/webhooks/{webhook_id}",
            body,
            "application/x-www-form-urlencoded",
        )
        self.webhook_url = url

    # -- paystep itself ------------------------------------------------------------------

    def deploy(self, *extra_args: str) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-m", "paystep", "deploy", "--output", "json", *extra_args],
            env=self.env(),
            capture_output=True,
            check=False,
            timeout=120,
        )
        if result.returncode != 0:
            raise StackError(f"paystep deploy failed: {result.stderr.decode()[-2000:]}")
        self.deployment = json.loads(result.stdout)
        return self.deployment

    def env(self, **extra: str) -> dict[str, str]:
        """The environment paystep's processes (and `aws`, `paystep pay`) need."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PAYSTEP_", "AWS_"))
        }
        env.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION=LOCAL_REGION,
            PAYSTEP_LOG_FORMAT=os.environ.get("PAYSTEP_LOG_FORMAT", "json"),
        )
        if self.aws_endpoint:
            env["AWS_ENDPOINT_URL"] = self.aws_endpoint
        if self.stripe_base:
            env["PAYSTEP_STRIPE_API_KEY"] = LOCAL_STRIPE_KEY
            env["PAYSTEP_STRIPE_API_BASE"] = self.stripe_base
        env["PAYSTEP_WEBHOOK_SECRETS"] = self.webhook_secret
        env["PAYSTEP_TOKEN_KEYS"] = self.token_keys
        if self.deployment:
            env["PAYSTEP_QUEUE_URL"] = self.deployment["queue_url"]
            env["PAYSTEP_STATE_MACHINE_ARN"] = self.deployment["state_machine_arn"]
            env["PAYSTEP_ALARM_TOPIC_ARN"] = self.deployment["alarms_topic_arn"]
            env["PAYSTEP_ORDERS_TABLE"] = self.deployment["orders_table"]
            env["PAYSTEP_INVENTORY_TABLE"] = self.deployment["inventory_table"]
            env["PAYSTEP_NOTIFICATIONS_TOPIC_ARN"] = self.deployment["notifications_topic_arn"]
            env["PAYSTEP_CARD_ATTEMPTS_TABLE"] = self.deployment["card_attempts_table"]
        env.update(extra)
        return env

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """Point this process's AWS SDK and paystep settings at the stack, then restore."""
        saved = dict(os.environ)
        os.environ.update(
            {k: v for k, v in self.env().items() if k.startswith(("AWS_", "PAYSTEP_"))}
        )
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def exports(self) -> Iterator[str]:
        """`export` lines for another terminal."""
        base = set(os.environ.items())
        for key, value in sorted(self.env().items()):
            if (key, value) not in base and key.startswith(("AWS_", "PAYSTEP_")):
                yield f"export {key}={value}"

    def read_token(self, payment_intent: Mapping[str, Any]) -> str | None:
        """The task token a PaymentIntent (as a dict) of this stack carries, opened as the
        webhook opens it: with the stack's key and the PaymentIntent's own data."""
        return metadata.read_token(
            TokenKeys.parse(self.token_keys),
            payment_intent["metadata"],
            amount=payment_intent["amount"],
            currency=payment_intent["currency"],
            livemode=bool(payment_intent.get("livemode", False)),
        )

    def start_webhook(self) -> ManagedProcess:
        """One webhook process, registered with localstripe as the event endpoint."""
        proc = processes.start_webhook(self)
        self.register_webhook(proc.urls["webhook"])
        return proc

    def start_worker(self) -> ManagedProcess:
        return processes.start_worker(self, ready_path="/healthz")

    def start(self, *deploy_args: str) -> Self:
        """The whole stack: emulators, deployment, the webhook, `workers` workers."""
        self.start_aws()
        self.start_stripe()
        self.deploy(*deploy_args)
        self.start_webhook()
        for _ in range(self.workers):
            self.start_worker()
        return self

    def services(self, name: str) -> list[ManagedProcess]:
        return [proc for proc in self.processes if proc.name == name]

    # -- processes -----------------------------------------------------------------------

    def spawn(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / f"{name}-{len(self.processes)}.log"
        log_file = log_path.open("wb")
        full_env = {**self.env(), **(env or {})}
        process = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,
        )
        managed = ManagedProcess(name, process, log_path, log_file)
        self.processes.append(managed)
        return managed

    def stop(self) -> None:
        """Stop everything, newest first (services before the emulators they use)."""
        while self.processes:
            self.processes.pop().stop()
