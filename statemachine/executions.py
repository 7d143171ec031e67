"""What became of an execution, read from Step Functions (`DescribeExecution`).

The money rule asks one question of an execution: has it ended, and with which
payment kept. The payment of a SUCCEEDED execution is the `payment` of its output
(the `Paid` state); a FAILED, TIMED_OUT or ABORTED one keeps none.
https://docs.aws.amazon.com/step-functions/latest/apireference/API_DescribeExecution.html
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from botocore.exceptions import ClientError

ENDED: Final = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"})


class NoSuchExecution(Exception):
    """Step Functions does not know the execution (another region or account, or purged)."""


@dataclass(frozen=True, slots=True)
class Execution:
    arn: str
    status: str
    kept_payment_intent_id: str | None = None
    """The PaymentIntent in the output of a SUCCEEDED execution."""

    @property
    def ended(self) -> bool:
        # PENDING_REDRIVE (a failed execution being redriven) has not ended: it goes on.
        return self.status in ENDED


class Executions:
    """`DescribeExecution` over an injected aioboto3 `stepfunctions` client."""

    def __init__(self, sfn_client: Any) -> None:
        self._sfn = sfn_client

    async def describe(self, execution_arn: str) -> Execution:
        try:
            described = await self._sfn.describe_execution(executionArn=execution_arn)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ExecutionDoesNotExist":
                raise NoSuchExecution(execution_arn) from exc
            raise
        status = str(described["status"])
        kept = None
        if status == "SUCCEEDED":
            kept = _payment_intent_of(described.get("output"))
        return Execution(execution_arn, status, kept)


def _payment_intent_of(output: str | None) -> str | None:
    try:
        payment = json.loads(output or "{}").get("payment") or {}
    except (ValueError, AttributeError):
        return None
    value = payment.get("payment_intent_id") if isinstance(payment, dict) else None
    return value if isinstance(value, str) else None
