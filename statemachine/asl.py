"""The one ASL document of the payment flow and how it is filled in at deploy.

`payment.asl.json` is the single source: `paystep deploy`, the tests and the
CloudFormation template all use it. Resource ARNs are `${Name}` placeholders
(the CloudFormation `DefinitionSubstitutions` convention); tunables are the
values the `Init` state writes into the execution's data, so they live in one
place and every state reads them through `...Path` fields.
"""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from typing import Any, Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFINITION_FILE: Final = "payment.asl.json"
PLACEHOLDER: Final = re.compile(r"\$\{([A-Za-z][A-Za-z0-9]*)\}")
STEP_FUNCTIONS_MAX_TIMEOUT_S: Final = 365 * 24 * 3600  # a Standard execution lasts at most a year


class Resources(BaseModel):
    """What the placeholders of the definition stand for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    TaskQueueUrl: str
    OrdersTable: str
    ReceiptsTopicArn: str
    NotificationsTopicArn: str


class Tunables(BaseModel):
    """Deploy-time settings of the flow (the `Init` state's values)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=3, ge=1, le=20)
    retry_backoff_s: int = Field(default=60, ge=0, le=86_400)
    # Bank debits take up to 14 business days to settle: three weeks by default.
    payment_timeout_s: int = Field(default=21 * 86_400, ge=1, le=STEP_FUNCTIONS_MAX_TIMEOUT_S)
    # `paystep reconcile --heartbeat` keeps a long `processing` payment alive; None waits
    # for the timeout alone.
    payment_heartbeat_s: int | None = Field(default=4 * 86_400, ge=1)
    worker_task_timeout_s: int = Field(default=86_400, ge=1, le=STEP_FUNCTIONS_MAX_TIMEOUT_S)
    # After a timeout, a payment still `processing` is asked about again this often.
    settlement_poll_s: int = Field(default=6 * 3600, ge=1, le=STEP_FUNCTIONS_MAX_TIMEOUT_S)

    @model_validator(mode="after")
    def _heartbeat_below_timeout(self) -> Self:
        if self.payment_heartbeat_s is not None and (
            self.payment_heartbeat_s >= self.payment_timeout_s
        ):
            raise ValueError(
                f"payment_heartbeat_s ({self.payment_heartbeat_s}) must be below "
                f"payment_timeout_s ({self.payment_timeout_s})"
            )
        return self


def load_definition() -> dict[str, Any]:
    """The definition as stored, placeholders and defaults included."""
    text = resources.files("statemachine").joinpath(DEFINITION_FILE).read_text("utf-8")
    definition: dict[str, Any] = json.loads(text)
    return definition


def placeholders(definition: dict[str, Any]) -> set[str]:
    return set(PLACEHOLDER.findall(json.dumps(definition)))


def render(resources_: Resources, tunables: Tunables | None = None) -> str:
    """The definition with its placeholders filled and tunables applied, as JSON text."""
    tunables = tunables or Tunables()
    definition = _substitute(load_definition(), resources_.model_dump())
    init = definition["States"]["Init"]["Parameters"]
    init["retry_wait_s"] = tunables.retry_backoff_s
    config = init["config"]
    config["max_attempts"] = tunables.max_attempts
    config["payment_timeout_s"] = tunables.payment_timeout_s
    config["worker_task_timeout_s"] = tunables.worker_task_timeout_s
    config["settlement_poll_s"] = tunables.settlement_poll_s
    if tunables.payment_heartbeat_s is None:
        del config["payment_heartbeat_s"]
        del definition["States"]["CreatePayment"]["HeartbeatSecondsPath"]
    else:
        config["payment_heartbeat_s"] = tunables.payment_heartbeat_s
    return json.dumps(definition, indent=2, sort_keys=True)


def _substitute(node: Any, values: dict[str, str]) -> Any:
    if isinstance(node, str):
        return PLACEHOLDER.sub(lambda match: values[match.group(1)], node)
    if isinstance(node, dict):
        return {key: _substitute(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_substitute(value, values) for value in node]
    return copy.copy(node)
