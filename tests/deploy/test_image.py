"""The image, built with podman and run the way Kubernetes runs it.

Slow: the first run on a machine makes the base image with debootstrap (about 40 s)
and downloads the locked dependencies; later runs reuse both from PAYSTEP_PODMAN_ROOT.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any, Final

import pytest

from paystep_local.localstack import LOCAL_STRIPE_KEY, LocalStack, free_port
from statemachine.seal import new_key
from tests.deploy.conftest import Manifest, one
from tests.deploy.podman import Container, Podman

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TAG: Final = "localhost/paystep:test"
FAKE_AWS: Final = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}
# Well-formed names of resources no test here reaches.
NO_QUEUE_URL: Final = "https://sqs.us-east-1.amazonaws.com/000000000000/paystep-tasks"
NO_ALARM_TOPIC_ARN: Final = "arn:aws:sns:us-east-1:000000000000:paystep-alarms"
NO_NOTIFICATIONS_TOPIC_ARN: Final = "arn:aws:sns:us-east-1:000000000000:paystep-notifications"


@pytest.fixture(scope="module")
def podman() -> Podman:
    return Podman.create()


@pytest.fixture(scope="module")
def image(podman: Podman) -> Iterator[str]:
    podman.ensure_base_image()
    podman.build(TAG)
    yield TAG


def inspect(podman: Podman, image: str) -> dict[str, Any]:
    result = podman("image", "inspect", image)
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)[0]
    return found


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_image_runs_paystep_as_non_root(podman: Podman, image: str) -> None:
    found = inspect(podman, image)
    assert found["Config"]["Entrypoint"] == ["paystep"]
    assert found["Config"]["User"] == "10001:10001"
    assert found["Healthcheck"]["Test"][0] == "CMD"  # podman lists it beside Config
    result = podman("run", "--rm", "--read-only", image, "--help")
    assert result.returncode == 0, result.stderr
    assert "worker" in result.stdout and "webhook" in result.stdout


def test_webhook_container_answers_healthz(podman: Podman, image: str) -> None:
    http_port, metrics_port = free_port(), free_port()
    env = {
        **FAKE_AWS,
        "PAYSTEP_WEBHOOK_SECRETS": "whsec_x",
        "PAYSTEP_TOKEN_KEYS": new_key(),
        "PAYSTEP_STATE_MACHINE_ARN": "arn:aws:states:us-east-1:000000000000:stateMachine:paystep",
        "PAYSTEP_QUEUE_URL": NO_QUEUE_URL,
        "PAYSTEP_NOTIFICATIONS_TOPIC_ARN": NO_NOTIFICATIONS_TOPIC_ARN,
        "PAYSTEP_CARD_ATTEMPTS_TABLE": "paystep-card-attempts",
    }
    with podman.container(
        image, ["webhook"], env=env, publish={http_port: 8080, metrics_port: 9090}
    ) as webhook:
        status, body = webhook.wait_http(f"http://127.0.0.1:{http_port}/healthz")
        assert status == 200, body
        assert get(f"http://127.0.0.1:{metrics_port}/healthz")[0] == 200
        status, metrics = get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and b"# TYPE" in metrics
        # The image's own HEALTHCHECK, run the way the engine would.
        result = podman("healthcheck", "run", webhook.name)
        assert result.returncode == 0, result.stdout + result.stderr + webhook.logs()
        assert webhook.stop() == 0, webhook.logs()


def test_worker_container_is_healthy_against_the_local_stack(
    podman: Podman, image: str, stack: LocalStack
) -> None:
    deployment = stack.deploy("--name", f"img{int(time.time())}")
    metrics_port = free_port()
    env = {
        key: value
        for key, value in stack.env().items()
        if key.startswith(("AWS_", "PAYSTEP_")) and key != "PAYSTEP_WEBHOOK_SECRETS"
    }
    env.update(
        PAYSTEP_QUEUE_URL=deployment["queue_url"],
        PAYSTEP_ALARM_TOPIC_ARN=deployment["alarms_topic_arn"],
        PAYSTEP_ORDERS_TABLE=deployment["orders_table"],
        PAYSTEP_INVENTORY_TABLE=deployment["inventory_table"],
        PAYSTEP_CARD_ATTEMPTS_TABLE=deployment["card_attempts_table"],
        PAYSTEP_METRICS_PORT=str(metrics_port),
        PAYSTEP_WORKER_CONCURRENCY="4",
        PAYSTEP_WORKER_SHUTDOWN_GRACE_S="5",
    )
    # Host network: the local stack listens on this machine's loopback.
    with podman.container(image, ["worker"], env=env, host_network=True) as worker:
        status, body = worker.wait_http(f"http://127.0.0.1:{metrics_port}/healthz")
        assert status == 200, body
        deadline = time.monotonic() + 30
        while (ready := get(f"http://127.0.0.1:{metrics_port}/readyz"))[0] != 200:
            assert time.monotonic() < deadline, f"/readyz {ready}:\n{worker.logs()}"
            time.sleep(0.5)
        result = podman("healthcheck", "run", worker.name)
        assert result.returncode == 0, result.stdout + result.stderr + worker.logs()
        assert worker.stop() == 0, worker.logs()


def test_worker_container_says_so_when_its_queue_is_unreachable(podman: Podman, image: str) -> None:
    closed = free_port()  # nothing listens here
    metrics_port = free_port()
    env = {
        **FAKE_AWS,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}",
        "PAYSTEP_QUEUE_URL": f"http://127.0.0.1:{closed}/000000000000/paystep-tasks",
        "PAYSTEP_ALARM_TOPIC_ARN": NO_ALARM_TOPIC_ARN,
        "PAYSTEP_ORDERS_TABLE": "paystep-orders",
        "PAYSTEP_INVENTORY_TABLE": "paystep-inventory",
        "PAYSTEP_CARD_ATTEMPTS_TABLE": "paystep-card-attempts",
        "PAYSTEP_STRIPE_API_KEY": "sk_test_x",
        "PAYSTEP_TOKEN_KEYS": new_key(),
        "PAYSTEP_METRICS_PORT": str(metrics_port),
    }
    with podman.container(image, ["worker"], env=env, host_network=True) as worker:
        deadline = time.monotonic() + 30
        while True:
            running, code = worker.state()
            logs = worker.logs()
            if not running:
                # Giving up is fine; giving up silently, or with only a traceback, is not.
                assert code != 0, logs
                assert "queue" in logs.lower() or "sqs" in logs.lower(), logs
                assert "Traceback" not in logs, logs
                return
            if "sqs" in logs.lower() and "fail" in logs.lower():
                # Still up and retrying: alive, not ready, and the log names the problem.
                assert get(f"http://127.0.0.1:{metrics_port}/healthz")[0] == 200, logs
                assert get(f"http://127.0.0.1:{metrics_port}/readyz")[0] != 200, logs
                return
            assert time.monotonic() < deadline, f"no word about the queue in 30 s:\n{logs}"
            time.sleep(0.5)


@contextlib.contextmanager
def pushgateway() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """A stand-in Pushgateway on this machine: its URL and the (path, body) it received."""
    received: list[tuple[str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        # PUT replaces the job's group, POST only the metrics pushed (reconcile's: a failed
        # run keeps the last success's timestamp); both answer 202.
        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            received.append((self.path, self.rfile.read(length)))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def confirmed_payment_intent(stripe_base: str) -> str:
    """A PaymentIntent paid at localstripe, so the window holds at least one event."""
    body = urllib.parse.urlencode(
        {"amount": 1999, "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}
    ).encode()
    request = urllib.request.Request(f"{stripe_base}/v1/payment_intents", data=body)
    auth = base64.b64encode(f"{LOCAL_STRIPE_KEY}:".encode()).decode()
    request.add_header("Authorization", f"Basic {auth}")
    with urllib.request.urlopen(request, timeout=10) as response:
        found: str = json.loads(response.read())["id"]
    return found


def wait_exit(container: Container, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        running, code = container.state()
        if not running:
            return code
        assert time.monotonic() < deadline, (
            f"still running after {timeout_s} s:\n{container.logs()}"
        )
        time.sleep(0.5)


def test_reconcile_container_runs_the_cronjobs_command(
    podman: Podman, image: str, stack: LocalStack, manifests: dict[str, list[Manifest]]
) -> None:
    """The CronJob's exact arguments, in the image, locked down as the pod is."""
    cron = one(manifests["prod"], "CronJob", "reconcile")
    [spec] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    stack.deploy("--name", f"rec{int(time.time())}")
    assert stack.stripe_base
    confirmed_payment_intent(stack.stripe_base)
    env = {
        key: value
        for key, value in stack.env().items()
        if key.startswith(("AWS_", "PAYSTEP_")) and key != "PAYSTEP_WEBHOOK_SECRETS"
    }
    with pushgateway() as (url, received):
        env["PAYSTEP_PUSHGATEWAY_URL"] = url
        with podman.container(image, spec["args"], env=env, host_network=True) as job:
            code = wait_exit(job)
            logs = job.logs()
    assert code == 0, logs
    assert "Traceback" not in logs, logs
    done = [json.loads(line) for line in logs.splitlines() if '"reconcile.done"' in line]
    assert len(done) == 1, logs
    assert done[0]["events_seen"] >= 1 and done[0]["errors"] == 0, done
    [(path, body)] = received
    assert path == "/metrics/job/paystep-reconcile"
    assert b"paystep_reconcile_last_run_timestamp_seconds" in body
    assert b"paystep_reconcile_last_success_timestamp_seconds" in body
