"""Notices to the customer that the webhook publishes: a payment waiting for them.

A decline only the customer can fix (`ask_customer`: authenticate, correct or
replace the card) leaves the execution waiting on the same PaymentIntent. The
customer is told what to do, with the PaymentIntent's id so a front end can bring
them back to confirm it. Published to the stack's notifications topic (where the
state machine's `payment_declined` notices go) at least once: a redelivered event
or a replay by reconcile publishes it again, with the same `dedupe_key` (the
declined charge) for the consumer to drop the repeat.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Protocol

import structlog
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict

from statemachine.declines import CustomerAction

log = structlog.get_logger("webhook.notices")

NOTICE_TYPE: Literal["payment_action_required"] = "payment_action_required"


class NoticeError(Exception):
    """The notice could not be published; a redelivery of the event can try again."""


class ActionRequired(BaseModel):
    """`payment_action_required`: the customer must act before the payment can go on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["payment_action_required"] = NOTICE_TYPE
    order_id: str | None
    execution_id: str | None
    payment_intent_id: str
    action: CustomerAction
    reason: str
    dedupe_key: str


class CustomerNotices(Protocol):
    async def publish(self, notice: ActionRequired) -> None: ...


class TopicNotices:
    """Publishes to one SNS topic over an injected aioboto3 `sns` client."""

    def __init__(self, sns_client: Any, topic_arn: str) -> None:
        self._sns = sns_client
        self._topic_arn = topic_arn

    async def publish(self, notice: ActionRequired) -> None:
        try:
            await self._sns.publish(
                TopicArn=self._topic_arn,
                Subject="Payment needs your action",
                Message=json.dumps(notice.model_dump(), separators=(",", ":")),
                MessageAttributes={"type": {"DataType": "String", "StringValue": notice.type}},
            )
        except (BotoCoreError, ClientError) as exc:
            raise NoticeError(f"publish failed: {exc}") from exc
        log.info("notice.published", notice=notice.type, action=notice.action)
