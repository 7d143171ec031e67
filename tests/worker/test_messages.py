"""decode(): a typed task, or PoisonMessage that never carries the token."""

from __future__ import annotations

import json

import pytest

from paystep_common.logging import token_hash
from statemachine.models import CreatePaymentTask
from worker.errors import PoisonMessage
from worker.leases import Leases
from worker.messages import decode
from worker.queue import Message

TOKEN = "T" * 2048


def message(body: str, *, receive_count: int = 1, handle: str = "rh-1") -> Message:
    return Message("m-1", handle, body, receive_count, 1_700_000_000.0)


def create_body(**overrides: object) -> str:
    body = {
        "type": "create_payment",
        "task_token": TOKEN,
        "execution_id": "arn:aws:states:us-east-1:1:execution:m:e",
        "state": "CreatePayment",
        "attempt": 1,
        "request": {"order_id": "o1", "amount": 1000, "currency": "usd"},
    }
    return json.dumps({**body, **overrides})


def test_decodes_a_task() -> None:
    task = decode(message(create_body()))
    assert isinstance(task, CreatePaymentTask)
    assert task.task_token == TOKEN


def test_message_attributes_are_read() -> None:
    raw = {
        "MessageId": "m",
        "ReceiptHandle": "r",
        "Body": "{}",
        "Attributes": {"ApproximateReceiveCount": "3", "SentTimestamp": "1700000000123"},
    }
    parsed = Message.from_sqs(raw)
    assert parsed.receive_count == 3
    assert parsed.sent_at_s == pytest.approx(1_700_000_000.123)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json at all", "body is not JSON"),
        ('{"type": "create_payment"}', "task_token"),
        ('{"type": "launch_rocket", "task_token": "x"}', "not a paystep task"),
        ("[1, 2]", "not a paystep task"),
    ],
)
def test_poison(body: str, reason: str) -> None:
    with pytest.raises(PoisonMessage) as caught:
        decode(message(body))
    assert reason in caught.value.reason


def test_poison_names_the_token_by_hash_only() -> None:
    secret = "SECRET-TOKEN-" + "x" * 40
    with pytest.raises(PoisonMessage) as caught:
        decode(message(create_body(task_token=secret, attempt="first")))
    assert caught.value.token_hash == token_hash(secret)
    assert secret not in str(caught.value)


def test_leases_come_due_at_half_the_visibility_and_restart() -> None:
    now = [0.0]
    leases = Leases(60, clock=lambda: now[0])
    held = message("{}")
    leases.hold(held)
    now[0] = 29.0
    assert leases.due() == []
    now[0] = 31.0
    assert leases.due() == [held]
    assert leases.due() == []
    leases.settle(held)
    now[0] = 1000.0
    assert leases.due() == []
    assert leases.release_all() == []
