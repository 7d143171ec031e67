"""Fixtures shared by every layer of tests.

`stack` is one real local stack per test session (moto in server mode with Step
Functions execution on, localstripe), started as processes. `deploy_fresh`
deploys paystep under a new name so each test gets its own queue, tables and
state machine on that shared stack. `workers` starts `paystep worker` processes
on `worker_stack` (the session's stack unless a suite gives its own) and kills
them after the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from paystep_local.localstack import LocalStack
from paystep_local.processes import Workers

Deployer = Callable[..., dict[str, Any]]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("stack")) as local:
        local.start_aws()
        local.start_stripe()
        # In-process clients (aioboto3, boto3) of the tests talk to the same stack.
        with local.environment():
            yield local


@pytest.fixture(scope="session")
def deploy_fresh(stack: LocalStack) -> Deployer:
    """`deploy_fresh(--max-attempts=...)`: a new, isolated paystep deployment."""

    def deploy(*args: str) -> dict[str, Any]:
        name = "t" + uuid.uuid4().hex[:10]
        return stack.deploy("--name", name, *args)

    return deploy


@pytest.fixture
def worker_stack(stack: LocalStack) -> LocalStack:
    return stack


@pytest.fixture
def workers(worker_stack: LocalStack) -> Iterator[Workers]:
    started = Workers(worker_stack)
    yield started
    started.stop_all()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
