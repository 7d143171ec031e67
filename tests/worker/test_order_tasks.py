"""The worker's order tasks: reserve (claim and hold) and release, over stubbed stores.

GIVEN an order whose claim is held by another execution
WHEN the reserve task of a new execution runs
THEN a holder that has ended (stopped, crashed before its release) is released and the
new execution claims the order; a running or unknown holder fails the task
`Order.InProgress`, and nothing is released. Invalid input fails before any write.

An ended holder's uncaptured authorisation (manual capture) is canceled with the release,
on the fake Stripe: only a `requires_capture` PaymentIntent can still be canceled, which
releases the held funds (https://docs.stripe.com/api/payment_intents/cancel); one
captured meanwhile is left to the orphan check, and a cancel Stripe fails does not undo
the release (the authorisation expires on its own,
https://docs.stripe.com/payments/place-a-hold-on-a-payment-method).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import stripe
from pydantic import BaseModel

from paystep_common.limiter import Budget
from paystep_local.fake_stripe import FakeStripe, Fault, RequestRecord
from statemachine import causes, errors
from statemachine.callbacks import CallbackResult
from statemachine.executions import Execution, NoSuchExecution
from statemachine.models import (
    ABANDONED,
    Item,
    ReleaseOrderTask,
    ReserveOrderTask,
    abandoned_authorization_key,
)
from statemachine.orders import OrderRefused, Released
from statemachine.seal import TokenKeys, new_key
from worker.errors import TaskFailure
from worker.handlers import Handlers
from worker.metrics import Metrics
from worker.stripe_api import StripeApi

NEW = "arn:aws:states:us-east-1:123456789012:execution:paystep-payment:ord_1-new"
OLD = "arn:aws:states:us-east-1:123456789012:execution:paystep-payment:ord_1-old"
REQUEST = {"order_id": "ord_1", "amount": 1000, "currency": "usd",
           "items": [{"sku": "sku_mug", "quantity": 2}]}  # fmt: skip
CANCEL = "POST /v1/payment_intents/{id}/cancel"


@dataclass
class Stubs:
    holder: str | None = OLD
    holder_status: str | None = "ABORTED"
    authorization: str | None = None
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
        return Released(order_id, 1, self.authorization)

    # Executions
    async def describe(self, execution_arn: str) -> Execution:
        if self.holder_status is None:
            raise NoSuchExecution(execution_arn)
        return Execution(execution_arn, self.holder_status)

    # Callbacks
    async def succeed(self, token: str, output: BaseModel) -> CallbackResult:
        self.succeeded.append(output)
        return CallbackResult.DELIVERED


def _handlers(stubs: Stubs, stripe_api: StripeApi | None = None) -> Handlers:
    return Handlers(
        stripe_api,  # type: ignore[arg-type]  # None: no Stripe call expected
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


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeStripe]:
    with FakeStripe().running_in_thread() as fake_stripe:
        yield fake_stripe


@pytest.fixture
def stripe_api(fake: FakeStripe) -> StripeApi:
    client = stripe.StripeClient("sk_test_orders", base_addresses={"api": fake.url})
    return StripeApi(client, Budget(account_per_s=1000, endpoint_per_s=1000), Metrics())


def _cancels(fake: FakeStripe, pi_id: str) -> list[RequestRecord]:
    key = abandoned_authorization_key(pi_id)
    return [r for r in fake.requests(CANCEL) if r.idempotency_key == key]


def _held_by_old(fake: FakeStripe, status: str) -> dict[str, Any]:
    """The ended holder's manual-capture PaymentIntent, in `status`."""
    captured = status == "succeeded"
    return fake.put_payment_intent(
        status=status,
        amount=1000,
        amount_capturable=0 if captured else 1000,
        amount_received=1000 if captured else 0,
        currency="usd",
        capture_method="manual",
        metadata={"order_id": "ord_1", "paystep_execution": OLD},
    )


async def test_an_ended_holders_authorisation_is_canceled_with_its_release(
    fake: FakeStripe, stripe_api: StripeApi
) -> None:
    pi = _held_by_old(fake, "requires_capture")
    stubs = Stubs(holder_status="ABORTED", authorization=pi["id"])

    assert await _handlers(stubs, stripe_api).reserve_order(_reserve()) == "reserved"

    assert stubs.released == [OLD] and stubs.holder == NEW
    after = fake.payment_intents[pi["id"]]
    assert (after["status"], after["amount_received"]) == ("canceled", 0)
    assert after["cancellation_reason"] == ABANDONED
    assert len(_cancels(fake, pi["id"])) == 1
    assert fake.refunds_of(pi["id"]) == []


async def test_an_ended_holders_captured_payment_is_not_touched(
    fake: FakeStripe, stripe_api: StripeApi
) -> None:
    pi = _held_by_old(fake, "succeeded")
    stubs = Stubs(holder_status="TIMED_OUT", authorization=pi["id"])

    assert await _handlers(stubs, stripe_api).reserve_order(_reserve()) == "reserved"

    assert stubs.released == [OLD]
    assert fake.payment_intents[pi["id"]]["status"] == "succeeded"
    assert _cancels(fake, pi["id"]) == []
    assert fake.refunds_of(pi["id"]) == []


async def test_a_cancel_stripe_fails_keeps_the_release_and_the_new_claim(
    fake: FakeStripe, stripe_api: StripeApi
) -> None:
    pi = _held_by_old(fake, "requires_capture")
    stubs = Stubs(holder_status="FAILED", authorization=pi["id"])
    fault = fake.add_fault(Fault(path=r"/cancel$", status=503, times=None))
    try:
        assert await _handlers(stubs, stripe_api).reserve_order(_reserve()) == "reserved"
    finally:
        fault.times = 0

    assert stubs.released == [OLD] and stubs.holder == NEW
    assert {r.status for r in _cancels(fake, pi["id"])} == {503}
    assert fake.payment_intents[pi["id"]]["status"] == "requires_capture"
