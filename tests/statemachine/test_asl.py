"""The ASL document: valid for statelint, every Resource a real integration, sane timeouts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from statemachine import errors
from statemachine.asl import Resources, Tunables, load_definition, placeholders, render

KNOWN_INTEGRATIONS = {
    "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
    "arn:aws:states:::dynamodb:updateItem",
    "arn:aws:states:::sns:publish",
}
RESOURCES = Resources(
    TaskQueueUrl="https://sqs.us-east-1.amazonaws.com/1/q",
    OrdersTable="orders",
    ReceiptsTopicArn="arn:aws:sns:us-east-1:1:receipts",
    NotificationsTopicArn="arn:aws:sns:us-east-1:1:notifications",
)


def _states(machine: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, state, its state machine) for every state, nested ones included."""
    for name, state in machine["States"].items():
        yield name, state, machine
        for branch in state.get("Branches", []):
            yield from _states(branch)
        if "ItemProcessor" in state:
            yield from _states(state["ItemProcessor"])


def test_statelint_accepts_the_definition() -> None:
    statelint = shutil.which("statelint", path=str(Path(sys.executable).parent)) or shutil.which(
        "statelint"
    )
    assert statelint, "statelint is a dev dependency: pip install -e '.[dev]'"
    path = resources.files("statemachine").joinpath("payment.asl.json")
    rendered = subprocess.run([statelint, str(path)], capture_output=True, text=True, check=False)
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr


def test_every_resource_is_a_known_integration() -> None:
    used = {state["Resource"] for _, state, _ in _states(load_definition()) if "Resource" in state}
    assert used == KNOWN_INTEGRATIONS


def test_every_transition_targets_a_state_of_its_own_machine() -> None:
    for name, state, machine in _states(load_definition()):
        targets = [state.get("Next"), state.get("Default")]
        targets += [c["Next"] for c in state.get("Choices", []) + state.get("Catch", [])]
        for target in filter(None, targets):
            assert target in machine["States"], f"{name} -> {target}"


def test_waits_for_a_token_always_have_a_timeout() -> None:
    for name, state, _ in _states(load_definition()):
        if state.get("Resource", "").endswith(".waitForTaskToken"):
            assert "TimeoutSecondsPath" in state or "TimeoutSeconds" in state, name


def test_heartbeat_is_below_timeout_in_the_rendered_definition() -> None:
    rendered = json.loads(render(RESOURCES))
    config = rendered["States"]["Init"]["Parameters"]["config"]
    wait = rendered["States"]["CreatePayment"]
    assert wait["HeartbeatSecondsPath"] == "$.config.payment_heartbeat_s"
    assert wait["TimeoutSecondsPath"] == "$.config.payment_timeout_s"
    assert config["payment_heartbeat_s"] < config["payment_timeout_s"]
    # Bank debits settle in up to 14 business days.
    assert config["payment_timeout_s"] >= 14 * 86_400 * 7 // 5


def test_tunables_refuse_heartbeat_not_below_timeout() -> None:
    with pytest.raises(ValueError, match="must be below payment_timeout_s"):
        Tunables(payment_timeout_s=100, payment_heartbeat_s=100)


def test_render_fills_every_placeholder_and_applies_tunables() -> None:
    assert placeholders(load_definition()) == set(Resources.model_fields)
    text = render(RESOURCES, Tunables(max_attempts=5, retry_backoff_s=7, payment_heartbeat_s=None))
    assert "${" not in text
    rendered = json.loads(text)
    init = rendered["States"]["Init"]["Parameters"]
    assert init["config"]["max_attempts"] == 5 and init["retry_wait_s"] == 7
    assert "HeartbeatSecondsPath" not in rendered["States"]["CreatePayment"]
    assert "payment_heartbeat_s" not in init["config"]


def test_every_error_an_execution_can_end_with_is_a_contract_error() -> None:
    """One Fail state ends every failed execution with the error in `$.error`; each name the
    definition puts there itself (a Pass's `Error`) is in the contract."""
    states = list(_states(load_definition()))
    fails = [state for _, state, _ in states if state["Type"] == "Fail"]
    assert fails and all(
        (state.get("ErrorPath"), state.get("CausePath")) == ("$.error.Error", "$.error.Cause")
        for state in fails
    ), fails
    named = {
        state["Parameters"]["Error"]
        for _, state, _ in states
        if state["Type"] == "Pass" and "Error" in state.get("Parameters", {})
    }
    assert {errors.TIMED_OUT, errors.ALREADY_PAID, errors.UNFULFILLABLE} <= named
    assert named <= errors.CONTRACT_ERRORS
