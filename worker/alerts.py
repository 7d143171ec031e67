"""Alerts to the operators: the stack's alarm topic (SNS), for money a person should know of.

Every refund paystep makes is one: a payment taken for an order that does not keep
it (a second payment, a declined attempt paid after all, a payment that arrived
after its execution ended, a mismatch, fulfilment that failed). A refund Stripe
refuses is one too, and a person must act on it. The message carries the ids and
the amount, no card data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict

log = structlog.get_logger("paystep.worker")

AlertType = Literal["payment_refunded", "refund_failed"]


class RefundAlert(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: AlertType
    reason: str
    order_id: str | None
    execution_id: str
    payment_intent_id: str
    amount: int | None = None
    currency: str | None = None
    refund_id: str | None = None
    refund_status: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Refunding:
    """Which payment a refund is for, and why: what every refund alert names."""

    payment_intent_id: str
    order_id: str | None
    execution_id: str
    reason: str

    def alert(self, type_: AlertType, **details: str | int | None) -> RefundAlert:
        return RefundAlert(
            type=type_,
            reason=self.reason,
            order_id=self.order_id,
            execution_id=self.execution_id,
            payment_intent_id=self.payment_intent_id,
            **details,  # type: ignore[arg-type]
        )


SUBJECTS: dict[AlertType, str] = {
    "payment_refunded": "paystep: payment refunded",
    "refund_failed": "paystep: refund failed, a person must act",
}


class Alerts:
    """Publishes to one SNS topic over an injected aioboto3 `sns` client."""

    def __init__(self, sns_client: Any, topic_arn: str) -> None:
        self._sns = sns_client
        self._topic_arn = topic_arn

    async def publish(self, alert: RefundAlert) -> None:
        await self._sns.publish(
            TopicArn=self._topic_arn,
            Subject=SUBJECTS[alert.type],
            Message=json.dumps(alert.model_dump(exclude_none=True), separators=(",", ":")),
            MessageAttributes={"type": {"DataType": "String", "StringValue": alert.type}},
        )
        log.warning("alert.published", alert=alert.type, reason=alert.reason)
