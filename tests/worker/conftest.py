"""Fixtures of the worker tests: a fake Stripe per test, real `paystep worker` processes.

The fake Stripe serves from its own thread, so tests can use blocking boto3 and
sleep without stalling it; workers are real processes on the session's moto.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from paystep_local.fake_stripe import FakeStripe
from paystep_local.localstack import LocalStack
from tests.conftest import Deployer


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    with FakeStripe().running_in_thread() as fake:
        yield fake


@pytest.fixture
def deployed(deploy_fresh: Deployer) -> dict[str, Any]:
    """A deployment of the test's own, with the default settings."""
    return deploy_fresh()


@pytest.fixture(scope="session")
def aws(stack: LocalStack) -> tuple[Any, Any]:
    """Step Functions and SQS clients on the session's moto."""
    return boto3.client("stepfunctions"), boto3.client("sqs")
