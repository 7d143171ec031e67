"""The worker's order tasks: reserve (claim and hold) and release, over stubbed stores.

GIVEN an order whose claim is held by another execution
WHEN the reserve task of a new execution runs
THEN a holder that has ended (stopped, crashed before its release) is released and the
new execution claims the order; a running or unknown holder fails the task
`Order.InProgress`, and nothing is released. Invalid input fails before any write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel

from statemachine import causes, errors
from statemachine.callbacks import CallbackResult
from statemachine.executions import Execution, NoSuchExecution
from statemachine.models import Item, ReleaseOrderTask, ReserveOrderTask
from statemachine.orders import OrderRefused, Released
from statemachine.seal import TokenKeys, new_key
from worker.errors import TaskFailure
from worker.handlers import Handlers

NEW = "arn:aws:states:us-east-1:123456789012:execution:paystep-payment:ord_1-new"
OLD = "arn:aws:states:us-east-1:123456789012:execution:paystep-payment:ord_1-old"
REQUEST = {"order_id": "ord_1", "amount": 1000, "currency": "usd",
           "items": [{"sku": "sku_mug", "quantity": 2}]}  # fmt: skip


@dataclass
class Stubs:
    holder: str | None = OLD
    holder_status: str | None = "ABORTED"
    released: list[str] = field(default_factory=list)
    reserved: list[tuple[str, tuple[Item, ...]]] = field(default_factory=list)
    succeeded: list[BaseModel] = field(default_factory=list)

    # Orders
    async def reserve(
        self, execution_id: str, order_id: str, items: tuple[Item, ...], now: str
    ) -> bool:
        if self.holder not in (None, execution_id):
            raise OrderRefused(causes.in_progress(order_id, self.holder), holder=self.holder)
        self.holder = execution_id
        self.reserved.append((execution_id, items))
        return True

    async def release(self, execution_id: str, order_id: str) -> Released | None:
        if self.holder != execution_id:
            return None
        self.holder = None
        self.released.append(execution_id)
        return Released(order_id, 1)

    # Executions
    async def describe(self, execution_arn: str) -> Execution:
        if self.holder_status is None:
            raise NoSuchExecution(execution_arn)
        return Execution(execution_arn, self.holder_status)

    # Callbacks
    async def succeed(self, token: str, output: BaseModel) -> CallbackResult:
        self.succeeded.append(output)
        return CallbackResult.DELIVERED


def _handlers(stubs: Stubs) -> Handlers:
    return Handlers(
        None,  # type: ignore[arg-type]  # no Stripe call in an order task
        stubs,  # type: ignore[arg-type]
        idempotency_horizon_s=0,
        token_keys=TokenKeys.parse(new_key()),
        livemode=False,
        executions=stubs,  # type: ignore[arg-type]
        alerts=None,  # type: ignore[arg-type]
        requeue=None,  # type: ignore[arg-type]
        metrics=None,  # type: ignore[arg-type]
        check_again_s=0,
        orders=stubs,  # type: ignore[arg-type]
        card_budget=None,  # type: ignore[arg-type]  # no decline in an order task
    )


def _reserve(request: Any = REQUEST) -> ReserveOrderTask:
    return ReserveOrderTask(
        type="reserve_order",
        task_token="t" * 200,
        execution_id=NEW,
        started_at="2026-11-30T01:00:00Z",
        request=request,
    )


@pytest.mark.parametrize("status", ["ABORTED", "FAILED", "TIMED_OUT"])
async def test_a_claim_left_by_an_ended_execution_is_released_then_claimed(status: str) -> None:
    stubs = Stubs(holder_status=status)
    assert await _handlers(stubs).reserve_order(_reserve()) == "reserved"
    assert stubs.released == [OLD]
    assert stubs.holder == NEW and stubs.reserved[0][0] == NEW
    assert stubs.succeeded[0].model_dump() == {"claimed": True, "items": 1}


@pytest.mark.parametrize("status", ["RUNNING", "PENDING_REDRIVE", None], ids=str)
async def test_a_claim_of_a_running_or_unknown_execution_fails_in_progress(
    status: str | None,
) -> None:
    stubs = Stubs(holder_status=status)
    with pytest.raises(TaskFailure) as failed:
        await _handlers(stubs).reserve_order(_reserve())
    assert failed.value.failure.error == errors.IN_PROGRESS
    assert causes.parse(failed.value.failure.cause)["claimed_by"] == OLD
    assert (stubs.released, stubs.reserved, stubs.holder) == ([], [], OLD)


async def test_invalid_items_fail_as_invalid_input_before_any_write() -> None:
    stubs = Stubs(holder=None)
    twice = {**REQUEST, "items": [{"sku": "sku_mug", "quantity": 1}] * 2}
    with pytest.raises(TaskFailure) as failed:
        await _handlers(stubs).reserve_order(_reserve(twice))
    assert failed.value.failure.error == errors.INVALID_INPUT
    assert "sku_mug" in failed.value.failure.cause and "twice" in failed.value.failure.cause
    assert stubs.reserved == []


async def test_release_of_an_input_without_an_order_id_releases_nothing() -> None:
    stubs = Stubs(holder=NEW)
    task = ReleaseOrderTask(
        type="release_order", task_token="t" * 200, execution_id=NEW, request={"amount": -5}
    )
    assert await _handlers(stubs).release_order(task) == "nothing_held"
    assert stubs.released == [] and stubs.holder == NEW
    assert stubs.succeeded[0].model_dump() == {"released": False, "items": 0}
