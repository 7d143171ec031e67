"""The local stack's moto keeps what the fault scenarios rely on.

An outcome can reach moto between its SQS send and the moment it arms the
task's heartbeat (a worker failing invalid input answers in milliseconds, and
more so on a loaded machine): the execution must still take it at once, as AWS
does, instead of waiting for the heartbeat to time out.
"""

from __future__ import annotations

import threading

import pytest
from moto.stepfunctions.parser.asl.eval.callback.callback import (
    CallbackEndpoint,
    CallbackOutcomeFailure,
)

from paystep_local import moto_server


@pytest.fixture(autouse=True)
def early_outcomes_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """The moto server's patch, applied here; moto's own method is restored afterwards."""
    monkeypatch.setattr(
        CallbackEndpoint, "setup_heartbeat_endpoint", CallbackEndpoint.setup_heartbeat_endpoint
    )
    moto_server._keep_early_outcomes()


def test_an_outcome_sent_before_the_heartbeat_is_armed_ends_the_wait() -> None:
    endpoint = CallbackEndpoint("token")
    endpoint.notify(CallbackOutcomeFailure("token", "Payment.InvalidInput", "amount"))

    heartbeat = endpoint.setup_heartbeat_endpoint(heartbeat_seconds=2)

    assert heartbeat.clear_and_wait() is True, "the wait slept until the heartbeat timed out"
    assert isinstance(endpoint.get_outcome(), CallbackOutcomeFailure)


def test_an_outcome_sent_while_the_heartbeat_waits_still_wakes_it() -> None:
    endpoint = CallbackEndpoint("token")
    heartbeat = endpoint.setup_heartbeat_endpoint(heartbeat_seconds=30)
    later = threading.Timer(
        0.2, endpoint.notify, args=(CallbackOutcomeFailure("token", "Payment.Declined", "x"),)
    )
    later.start()

    assert heartbeat.clear_and_wait() is True
    later.join()
