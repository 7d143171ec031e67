"""Fixtures of the fault suite: a Stripe emulator and a deployment of its own per test.

Each test gets its own localstripe (its webhooks reach only this test's
endpoint, its PaymentIntents are only this test's) and a fresh deployment on the
session's moto. The processes a test starts are stopped with the stack.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from paystep_local.localstack import LocalStack
from paystep_local.processes import Workers
from tests.faults.harness import DEPLOY_ARGS, Chaos, fault_seed

SOAK = (pytest.mark.soak, pytest.mark.timeout(1800))


@pytest.fixture
def local(stack: LocalStack, tmp_path: Path) -> Iterator[LocalStack]:
    assert stack.aws_endpoint
    with LocalStack(tmp_path / "stack", aws_endpoint=stack.aws_endpoint) as own:
        own.start_stripe()
        own.deploy("--name", "f" + uuid.uuid4().hex[:10], *DEPLOY_ARGS)
        yield own


@pytest.fixture
def worker_stack(local: LocalStack) -> LocalStack:
    return local


@pytest.fixture
def chaos(local: LocalStack, workers: Workers) -> Chaos:
    return Chaos(local, workers, fault_seed())
