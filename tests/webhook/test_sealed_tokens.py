"""The webhook's mapping against metadata it did not write, or wrote for another payment.

Rules (webhook/mapping.py, webhook/app.py): a token opens only with the associated data
of the PaymentIntent carrying it; a mismatch, a damaged token, an unknown key or an
execution of another state machine is ignored (2xx), counted, and sends nothing; no
metadata makes the mapping raise anything but `MalformedEvent` for an unreadable object.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statemachine.callbacks import CallbackResult
from statemachine.metadata import TOKEN_CHUNK_PREFIX, TOKEN_PARTS_KEY
from statemachine.seal import TokenKeys, new_key
from tests.webhook.conftest import (
    KEYS,
    FakeBudget,
    FakeChecks,
    FakeNotices,
    Waiting,
    Webhook,
    describe,
    event,
    in_thread,
    payment_intent,
    reader_for,
    start_waiting,
    wait_done,
)
from tests.webhook.test_mapping import FakeCallbacks
from webhook.events import MalformedEvent, parse_event
from webhook.mapping import Ignore, IgnoreReason, Plan, Result, TokenReader, handle_event, plan

TOKEN = "AAAAKgAAAAIAAAAA" + "t" * 1400
WAITING = Waiting("arn:aws:states:us-east-1:123456789012:execution:m:ord_1", "ord_1", TOKEN, 1)
READER = reader_for(WAITING)


def decide(pi: dict[str, Any], *, livemode: bool = False) -> Plan | Ignore:
    return plan(parse_event(event("payment_intent.succeeded", pi, livemode=livemode)), READER)


def copied(**fields: Any) -> dict[str, Any]:
    """Another PaymentIntent carrying the real one's metadata, as an account user could make."""
    return payment_intent(None, metadata=payment_intent(WAITING)["metadata"], **fields)


def test_the_payment_it_was_sealed_for_opens_the_token() -> None:
    decision = decide(payment_intent(WAITING))
    assert isinstance(decision, Plan) and decision.token == TOKEN


def test_metadata_copied_onto_another_amount_is_a_mismatch() -> None:
    """Rule: a copy onto a PaymentIntent of 50 cents never resumes a 19.99 order."""
    decision = decide(copied(amount=50))
    assert isinstance(decision, Ignore) and decision.reason is IgnoreReason.MISMATCH


def test_metadata_copied_onto_another_currency_or_mode_is_a_mismatch() -> None:
    assert decide(copied(currency="jpy")).reason is IgnoreReason.MISMATCH  # type: ignore[union-attr]
    assert decide(copied(), livemode=True).reason is IgnoreReason.MISMATCH  # type: ignore[union-attr]


def test_an_attempt_or_execution_changed_beside_the_token_is_a_mismatch() -> None:
    pi = payment_intent(WAITING)
    pi["metadata"]["paystep_attempt"] = "2"
    assert decide(pi).reason is IgnoreReason.MISMATCH  # type: ignore[union-attr]
    pi = payment_intent(WAITING)
    pi["metadata"]["paystep_execution"] += "x"
    assert decide(pi).reason is IgnoreReason.MISMATCH  # type: ignore[union-attr]


def test_a_token_sealed_under_a_key_no_longer_listed_is_ignored() -> None:
    reader = TokenReader(TokenKeys.parse(new_key("other")), READER.state_machine_arn)
    evt = event("payment_intent.succeeded", payment_intent(WAITING))
    assert plan(parse_event(evt), reader).reason is IgnoreReason.UNKNOWN_KEY  # type: ignore[union-attr]


def test_a_rotated_key_list_still_opens_tokens_sealed_before() -> None:
    """Rule: rotation adds the new key first and keeps the old one listed."""
    reader = TokenReader(
        TokenKeys((*TokenKeys.parse(new_key("new")).keys, *KEYS.keys)), READER.state_machine_arn
    )
    evt = event("payment_intent.succeeded", payment_intent(WAITING))
    assert plan(parse_event(evt), reader).token == TOKEN  # type: ignore[union-attr]


def test_an_execution_of_another_state_machine_is_ignored() -> None:
    """Rule: another deployment on the same Stripe account is not ours to resume (no 503 loop)."""
    other = Waiting("arn:aws:states:us-east-1:123456789012:execution:theirs:o", "o", TOKEN, 1)
    decision = decide(payment_intent(other))
    assert isinstance(decision, Ignore) and decision.reason is IgnoreReason.OTHER_STATE_MACHINE


async def test_an_ignored_mismatch_sends_no_callback() -> None:
    callbacks = FakeCallbacks()
    evt = event("payment_intent.succeeded", copied(amount=50))
    outcome = await handle_event(evt, callbacks, READER, FakeChecks(), FakeNotices(), FakeBudget())  # type: ignore[arg-type]
    assert (outcome.result, outcome.reason) == (Result.IGNORED, IgnoreReason.MISMATCH)
    assert callbacks.calls == []


def _damage(metadata: dict[str, str], how: str, data: st.DataObject) -> dict[str, str]:
    damaged = dict(metadata)
    count = int(damaged[TOKEN_PARTS_KEY])
    index = data.draw(st.integers(0, count - 1))
    chunk = f"{TOKEN_CHUNK_PREFIX}{index}"
    if how == "count":
        damaged[TOKEN_PARTS_KEY] = data.draw(
            st.one_of(
                st.sampled_from(["²", "\u0661", "0", "99", "", "-1", "1.0"]), st.text(max_size=4)
            )
        )
    elif how == "missing":
        del damaged[chunk]
    elif how == "truncated":
        damaged[chunk] = damaged[chunk][: data.draw(st.integers(0, len(damaged[chunk]) - 1))]
    elif how == "reordered" and count > 1:
        other = f"{TOKEN_CHUNK_PREFIX}{(index + 1) % count}"
        damaged[chunk], damaged[other] = damaged[other], damaged[chunk]
    elif how == "junk":
        damaged[chunk] = data.draw(st.text(max_size=500))
    return damaged


@settings(max_examples=300, suppress_health_check=list(HealthCheck), deadline=None)
@given(
    how=st.sampled_from(["count", "missing", "truncated", "reordered", "junk"]),
    data=st.data(),
)
async def test_damaged_token_metadata_is_ignored_never_an_exception(
    how: str, data: st.DataObject
) -> None:
    """Rule: non-ASCII digits, missing, truncated, reordered chunks: ignored, nothing sent."""
    pi = payment_intent(WAITING)
    pi["metadata"] = _damage(pi["metadata"], how, data)
    callbacks = FakeCallbacks(CallbackResult.DELIVERED)
    try:
        outcome = await handle_event(
            event("payment_intent.succeeded", pi),
            callbacks,  # type: ignore[arg-type]
            READER,
            FakeChecks(),
            FakeNotices(),
            FakeBudget(),
        )
    except MalformedEvent:
        return
    if outcome.result is Result.IGNORED:
        assert callbacks.calls == []
        assert outcome.reason in {
            IgnoreReason.DAMAGED_TOKEN,
            IgnoreReason.MISMATCH,
            IgnoreReason.UNKNOWN_KEY,
            IgnoreReason.NO_TOKEN,
        }
    else:  # a no-op damage (a count drawn equal to the real one)
        assert [token for _, token, _ in callbacks.calls] == [TOKEN]


# -- through the app, on the local stack ---------------------------------------------------


async def test_a_copy_on_another_amount_never_resumes_and_the_real_payment_then_completes(
    deployment: dict[str, Any], webhook: Webhook
) -> None:
    """Rule: a copy of one PaymentIntent's metadata on another amount is a mismatch, answered
    2xx and counted; the execution keeps waiting, and its own PaymentIntent completes it."""
    waiting = await in_thread(start_waiting, deployment)
    real = payment_intent(waiting)
    copy = payment_intent(None, amount=50, metadata=real["metadata"])

    status, answer = await webhook.deliver(event("payment_intent.succeeded", copy))

    assert (status, answer) == (200, {"outcome": "ignored", "reason": "mismatch"})
    assert webhook.metric("paystep_webhook_mismatches_total") == 1
    assert (await in_thread(describe, waiting.execution_arn))["status"] == "RUNNING"

    status, answer = await webhook.deliver(event("payment_intent.succeeded", real))

    assert (status, answer["outcome"]) == (200, "delivered")
    done = await in_thread(wait_done, waiting.execution_arn)
    assert done["status"] == "SUCCEEDED"
    payment = json.loads(done["output"])["payment"]
    assert (payment["payment_intent_id"], payment["amount_received"]) == (real["id"], 1999)


async def test_an_event_of_another_deployment_is_answered_2xx_and_counted(
    deploy_fresh: Any, webhook: Webhook
) -> None:
    """Rule: another state machine's execution is ignored with 2xx, not 503 for days."""
    theirs = await in_thread(deploy_fresh)
    waiting = await in_thread(start_waiting, theirs)

    status, answer = await webhook.deliver(
        event("payment_intent.succeeded", payment_intent(waiting))
    )

    assert (status, answer) == (200, {"outcome": "ignored", "reason": "other_state_machine"})
    assert webhook.metric("paystep_webhook_ignored_total", reason="other_state_machine") == 1
    assert (await in_thread(describe, waiting.execution_arn))["status"] == "RUNNING"
