"""Payments to look at again: a `check_payment` task on the worker's queue.

A `payment_intent.succeeded` whose task is already closed is money that may have
no order to keep it: a declined attempt the customer paid after all, a payment
after the execution timed out, was stopped or was paid by another PaymentIntent.
Or it is the execution's own payment, reported twice. The webhook cannot tell
(it reads no execution and holds no Stripe key that could refund): it hands the
payment to the worker, which keeps it or refunds it.
"""

from __future__ import annotations

from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from statemachine.models import CheckPaymentTask, dump_json


class CheckError(Exception):
    """The check could not be queued; a redelivery of the event can try again."""


class PaymentChecks(Protocol):
    async def check(self, task: CheckPaymentTask) -> None: ...


class QueueChecks:
    """Sends checks to the task queue over an injected aioboto3 `sqs` client."""

    def __init__(self, sqs_client: Any, queue_url: str) -> None:
        self._sqs = sqs_client
        self._queue_url = queue_url

    async def check(self, task: CheckPaymentTask) -> None:
        try:
            await self._sqs.send_message(QueueUrl=self._queue_url, MessageBody=dump_json(task))
        except (BotoCoreError, ClientError) as exc:
            raise CheckError(f"send_message failed: {exc}") from exc
