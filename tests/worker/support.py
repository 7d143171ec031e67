"""Helpers of the worker tests: fast retries, queue reads, the settings of `--check`."""

from __future__ import annotations

from typing import Any

from paystep_local.localstack import LOCAL_STRIPE_KEY
from paystep_local.processes import ManagedProcess
from statemachine.card_budget import Card, Recorded

FAST_RETRIES = {
    "PAYSTEP_WORKER_RETRY_BASE_S": "1",
    "PAYSTEP_WORKER_RETRY_MAX_S": "2",
}


def worker_env(deployment: dict[str, Any], proc: ManagedProcess) -> dict[str, str]:
    """The settings a second command needs to reach a running worker (`--check`)."""
    return {
        "PAYSTEP_QUEUE_URL": deployment["queue_url"],
        "PAYSTEP_ALARM_TOPIC_ARN": deployment["alarms_topic_arn"],
        "PAYSTEP_ORDERS_TABLE": deployment["orders_table"],
        "PAYSTEP_INVENTORY_TABLE": deployment["inventory_table"],
        "PAYSTEP_CARD_ATTEMPTS_TABLE": deployment["card_attempts_table"],
        "PAYSTEP_STRIPE_API_KEY": LOCAL_STRIPE_KEY,
        "PAYSTEP_METRICS_PORT": proc.urls["metrics"].rsplit(":", 1)[1],
    }


def queue_counts(sqs: Any, url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue; exact on moto."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def queue_empty(sqs: Any, url: str) -> bool:
    return queue_counts(sqs, url) == (0, 0)


def execution_status(sfn: Any, arn: str) -> dict[str, Any]:
    described: dict[str, Any] = sfn.describe_execution(executionArn=arn)
    return described


class UnlimitedCards:
    """A card budget that refuses nothing: for handlers whose tests are not about it."""

    async def record_decline(self, card: Card, attempt: str) -> Recorded:
        return Recorded(room_for_another=True, attempts_in_longest_window=0)

    async def reserve(self, card: Card, attempt: str) -> bool:
        return True
