"""`paystep pay`: start one payment execution, optionally following it to the end."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from typing import IO, Any, Final

from botocore.exceptions import ClientError
from pydantic import ValidationError

from paystep_common.clients import aws_config, aws_session
from paystep_common.retry import CONTROL_PLANE
from statemachine.models import PaymentRequest, describe_validation_error

POLL_INTERVAL_S: Final = 0.5
TERMINAL: Final = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"})


class PayError(Exception):
    """The payment could not be started; the message says why."""


def build_request(
    *,
    input_json: str | None,
    order_id: str | None,
    amount: str | None,
    currency: str | None,
    customer: str | None,
    payment_method: str | None,
    receipt_email: str | None,
    items: Sequence[str],
    metadata: Sequence[str],
    capture_method: str | None = None,
    capture_deadline_s: str | None = None,
) -> PaymentRequest:
    """Validate the input locally with the contract's own model before anything starts."""
    if input_json is not None:
        try:
            raw: Any = json.loads(input_json)
        except json.JSONDecodeError as exc:
            raise PayError(f"--input: not JSON ({exc.msg} at character {exc.pos})") from exc
    else:
        raw = {"order_id": order_id, "amount": _integer("--amount", amount), "currency": currency}
        optional = {
            "customer": customer,
            "payment_method": payment_method,
            "receipt_email": receipt_email,
            "capture_method": capture_method,
            "capture_deadline_s": _integer(
                "--capture-deadline-s", capture_deadline_s, "a whole number of seconds"
            ),
        }
        raw.update({key: value for key, value in optional.items() if value is not None})
        if items:
            raw["items"] = [_item(spec) for spec in items]
        if metadata:
            raw["metadata"] = dict(_pair("--metadata", spec) for spec in metadata)
    try:
        return PaymentRequest.model_validate(raw)
    except ValidationError as exc:
        raise PayError(f"invalid payment input: {describe_validation_error(exc)}") from exc


def _integer(
    flag: str, value: str | None, expected: str = "an integer in the currency's minor unit"
) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise PayError(f"{flag}: expected {expected}, got {value!r}") from None


def _pair(flag: str, spec: str) -> tuple[str, str]:
    key, sep, value = spec.partition("=")
    if not sep or not key:
        raise PayError(f"{flag}: expected KEY=VALUE, got {spec!r}")
    return key, value


def _item(spec: str) -> dict[str, Any]:
    sku, quantity = _pair("--item", spec)
    return {"sku": sku, "quantity": _integer(f"--item {sku}", quantity)}


async def pay(
    request: PaymentRequest,
    *,
    state_machine_arn: str,
    execution_name: str | None,
    wait: bool,
    out: IO[str] = sys.stdout,
) -> int:
    """Start the execution; with `wait`, print each state and end with output or error.

    The execution is named after the order: Step Functions makes a repeated start
    with the same name and input idempotent while it runs, so one order attempt is
    one execution.
    """
    name = execution_name or request.order_id
    async with aws_session().client("stepfunctions", config=aws_config(CONTROL_PLANE)) as sfn:
        try:
            started = await sfn.start_execution(
                stateMachineArn=state_machine_arn,
                name=name,
                input=request.model_dump_json(exclude_none=True, exclude_defaults=True),
            )
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code == "ExecutionAlreadyExists":
                raise PayError(
                    f"an execution named {name!r} already exists with another input or has "
                    "ended; start a new attempt with --execution-name"
                ) from exc
            raise PayError(f"StartExecution failed: {code}: {exc}") from exc
        arn: str = started["executionArn"]
        print(
            json.dumps({"execution_arn": arn, "order_id": request.order_id}), file=out, flush=True
        )
        if not wait:
            return 0
        return await follow(sfn, arn, out)


async def follow(sfn: Any, execution_arn: str, out: IO[str]) -> int:
    """Print states as the execution enters them; 0 only when it SUCCEEDED."""
    seen = 0
    while True:
        described = await sfn.describe_execution(executionArn=execution_arn)
        history = await _history(sfn, execution_arn)
        for event in history[seen:]:
            entered = event.get("stateEnteredEventDetails")
            if entered:
                print(f"  -> {entered['name']}", file=out, flush=True)
        seen = len(history)
        status = described["status"]
        if status in TERMINAL:
            break
        await asyncio.sleep(POLL_INTERVAL_S)
    if status == "SUCCEEDED":
        print(json.dumps(json.loads(described.get("output", "null")), indent=2), file=out)
        return 0
    error = described.get("error", status)
    cause = described.get("cause", "")
    print(f"{status}: {error}: {cause}", file=out)
    return 1


async def _history(sfn: Any, execution_arn: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    paginator = sfn.get_paginator("get_execution_history")
    async for page in paginator.paginate(executionArn=execution_arn):
        events.extend(page["events"])
    return events
