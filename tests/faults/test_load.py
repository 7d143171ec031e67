"""Load: the webhook process under 50 concurrent connections, on loopback, against moto.

GIVEN the real webhook process calling moto's Step Functions
WHEN 50 keep-alive connections send events back to back for the run's duration:
70 % signed `payment_intent.succeeded` carrying an AWS-length token of a task
that is closed (a duplicate: one SendTaskSuccess each, answered TaskTimedOut /
InvalidToken), 15 % signed events it ignores, 15 % with a bad signature
THEN every answer is the one its kind expects (200 / 200 / 400), no request
fails, and the process's memory stays flat. Latency percentiles are printed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import boto3
import pytest

from paystep_local.localstack import LocalStack
from paystep_local.signing import signature_header
from statemachine.metadata import payment_intent_metadata
from statemachine.seal import Binding, TokenKeys
from tests.faults.conftest import SOAK
from tests.faults.harness import rss_kib, start_webhook

CONNECTIONS: Final = 50
DISTINCT_EVENTS: Final = 600
WARMUP_S: Final = 3.0
RSS_GROWTH_LIMIT_KIB: Final = 16 * 1024


@pytest.fixture
def bare(stack: LocalStack, tmp_path: Path) -> Iterator[LocalStack]:
    assert stack.aws_endpoint
    with LocalStack(tmp_path / "stack", aws_endpoint=stack.aws_endpoint) as own:
        yield own


def _token() -> str:
    length = 1000 + secrets.randbelow(1049)
    return base64.b64encode(secrets.token_bytes(length)).decode()[:length]


MACHINE = "arn:aws:states:us-east-1:123456789012:stateMachine:load"


def _deliveries(secret: str, keys: TokenKeys) -> list[tuple[str, bytes, dict[str, str], int]]:
    """(kind, body, headers, expected status), signed now: well inside the 300 s tolerance."""
    made = []
    for index in range(DISTINCT_EVENTS):
        slot = index % 20
        kind = "duplicate" if slot < 14 else ("ignored" if slot < 17 else "unsigned")
        obj = {
            "id": f"pi_load{index}",
            "object": "payment_intent" if kind != "ignored" else "charge",
            "status": "succeeded",
            "amount": 1999,
            "amount_received": 1999,
            "currency": "usd",
            # Sealed for this PaymentIntent: opened, then already closed at Step Functions.
            "metadata": payment_intent_metadata(
                keys,
                _token(),
                Binding(
                    f"{MACHINE.replace('stateMachine', 'execution')}:{index}",
                    "1",
                    1999,
                    "usd",
                    False,
                ),
                order_id=f"ord_load{index}",
            ),
        }
        event = {
            "id": f"evt_load{index}",
            "object": "event",
            "type": "payment_intent.succeeded" if kind != "ignored" else "charge.succeeded",
            "livemode": False,
            "created": int(time.time()),
            "data": {"object": obj},
        }
        body = json.dumps(event, indent=2).encode()
        header = signature_header(body, secret)
        if kind == "unsigned":
            header = header[:-4] + "0000"
        headers = {"Content-Type": "application/json; charset=utf-8", "Stripe-Signature": header}
        made.append((kind, body, headers, 400 if kind == "unsigned" else 200))
    return made


@dataclass
class Load:
    url: str
    deliveries: list[tuple[str, bytes, dict[str, str], int]]
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    async def run(self, duration_s: float, record: bool) -> int:
        connector = aiohttp.TCPConnector(limit=CONNECTIONS)
        timeout = aiohttp.ClientTimeout(total=30)
        sent = 0
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            deadline = time.monotonic() + duration_s

            async def connection(offset: int) -> None:
                nonlocal sent
                index = offset
                while time.monotonic() < deadline:
                    kind, body, headers, expected = self.deliveries[index % len(self.deliveries)]
                    index += CONNECTIONS
                    started = time.perf_counter()
                    try:
                        async with session.post(self.url, data=body, headers=headers) as answer:
                            await answer.read()
                            status = answer.status
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        self.errors[type(exc).__name__] += 1
                        continue
                    sent += 1
                    if not record:
                        continue
                    self.latencies_s.append(time.perf_counter() - started)
                    self.statuses[f"{kind} {status}"] += 1
                    if status != expected:
                        self.errors[f"{kind} answered {status}"] += 1

            await asyncio.gather(*(connection(n) for n in range(CONNECTIONS)))
        return sent


@pytest.mark.parametrize("duration_s", [10.0, pytest.param(60.0, marks=SOAK)])
def test_fifty_connections_get_no_errors_and_memory_stays_flat(
    bare: LocalStack, duration_s: float
) -> None:
    webhook = start_webhook(
        bare,
        env={
            "PAYSTEP_STATE_MACHINE_ARN": MACHINE,
            "PAYSTEP_QUEUE_URL": _queue(),
            "PAYSTEP_NOTIFICATIONS_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:none",
            "PAYSTEP_CARD_ATTEMPTS_TABLE": "none",
        },
    )
    keys = TokenKeys.parse(bare.token_keys)
    load = Load(webhook.urls["webhook"], _deliveries(bare.webhook_secret, keys))
    asyncio.run(load.run(WARMUP_S, record=False))
    rss_before = rss_kib(webhook)
    begun = time.monotonic()
    sent = asyncio.run(load.run(duration_s, record=True))
    elapsed_s = time.monotonic() - begun
    rss_after = rss_kib(webhook)

    cuts = statistics.quantiles(load.latencies_s, n=100)
    print(
        f"[faults] load {CONNECTIONS} connections x {duration_s:.0f} s: requests {sent}, "
        f"{sent / elapsed_s:.0f}/s, p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms, "
        f"max {max(load.latencies_s) * 1000:.1f} ms, answers {dict(sorted(load.statuses.items()))}, "
        f"errors {dict(load.errors) or 0}, RSS {rss_before} -> {rss_after} KiB"
    )
    assert load.errors == Counter()
    assert webhook.process.poll() is None
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB, f"RSS {rss_before} -> {rss_after} KiB"


def _queue() -> str:
    """A task queue of the test's own: a success on a closed task is sent there to check."""
    url: str = boto3.client("sqs").create_queue(QueueName=f"tasks-{uuid.uuid4().hex[:12]}")[
        "QueueUrl"
    ]
    return url
