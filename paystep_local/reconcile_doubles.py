"""Reconcile over the fast fakes: its services wired to a fake Stripe and a fake Step Functions.

The reconcile benchmark and its tests call `webhook.reconcile.reconcile_with` with
these: the real Stripe client and the real aioboto3 Step Functions client, pointed
at `paystep_local.fake_stripe` and `paystep_local.fake_sfn` (so every call crosses
HTTP and the SDKs as in production), and in memory what is not measured here: the
checkpoint item, the open claims (none), the check queue, the customers' topic
and the card budget.

`Payments` makes the fakes' contents: executions of one state machine with their
task tokens, and for each a PaymentIntent sealed as the worker seals it, with the
events Stripe would have emitted.
"""

from __future__ import annotations

import contextlib
import copy
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import stripe

from paystep_common.clients import aws_session
from statemachine.card_budget import Card, Recorded
from statemachine.metadata import payment_intent_metadata
from statemachine.models import CheckPaymentTask
from statemachine.orders import Claim, Released
from statemachine.seal import Binding, TokenKeys
from webhook.call_rates import CallRates
from webhook.checkpoint import Memory
from webhook.mapping import TokenReader
from webhook.notices import ActionRequired
from webhook.reconcile import PacedCallbacks, Services

REGION: Final = "us-east-1"
ACCOUNT: Final = "123456789012"
STATE_MACHINE_ARN: Final = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:paystep-payment"
# The final event of a payment's PaymentIntent, by its status at Stripe.
EVENT_OF: Final = {
    "succeeded": "payment_intent.succeeded",
    "processing": "payment_intent.processing",
    "canceled": "payment_intent.canceled",
    "requires_payment_method": "payment_intent.payment_failed",
}


class MemoryCheckpoints:
    """The checkpoint item, in memory."""

    def __init__(self) -> None:
        self.saved: Memory | None = None

    async def load(self) -> Memory:
        return copy.deepcopy(self.saved) if self.saved is not None else Memory()

    async def save(self, memory: Memory) -> None:
        self.saved = copy.deepcopy(memory)


class NoClaims:
    """An orders table with no open claim."""

    async def open_claims(self) -> AsyncIterator[Claim]:
        none: tuple[Claim, ...] = ()
        for claim in none:
            yield claim

    async def release(self, execution_id: str, order_id: str) -> Released | None:
        return None

    async def authorization(self, execution_id: str, order_id: str) -> str | None:
        return None


@dataclass
class Recorder:
    """The checks, notices and declines reconcile hands on."""

    checks: list[CheckPaymentTask] = field(default_factory=list)
    notices: list[ActionRequired] = field(default_factory=list)

    async def check(self, task: CheckPaymentTask) -> None:
        self.checks.append(task)

    async def publish(self, notice: ActionRequired) -> None:
        self.notices.append(notice)

    async def record_decline(self, card: Card, attempt: str) -> Recorded:
        return Recorded(room_for_another=True, attempts_in_longest_window=1)


@dataclass
class Payments:
    """Executions and their PaymentIntents, in the shapes the two fakes load."""

    keys: TokenKeys
    executions: list[dict[str, Any]] = field(default_factory=list)
    intents: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        *,
        status: str,
        pi_status: str,
        created: int,
        attempt: int = 1,
        amount: int = 1999,
        token: str | None = None,
    ) -> tuple[str, str]:
        """One execution (`status`) whose attempt's PaymentIntent is `pi_status`; its ARN and
        the PaymentIntent's id. A `token` starting `closed-` is one the fake says is closed."""
        name = "ord_" + secrets.token_hex(8)
        arn = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:paystep-payment:{name}"
        # As long as a real one: the sealed metadata's size is what Stripe carries.
        token = token or "tok-" + secrets.token_hex(400)
        binding = Binding(arn, str(attempt), amount, "usd", False)
        pi_id = "pi_" + secrets.token_hex(12)
        metadata = payment_intent_metadata(self.keys, token, binding, order_id=name)
        self.executions.append(
            {
                "arn": arn,
                "stateMachineArn": STATE_MACHINE_ARN,
                "status": status,
                "startDate": created - 1,
                "token": token,
                "output": json.dumps({"payment": {"payment_intent_id": pi_id}}),
            }
        )
        intent: dict[str, Any] = {
            "id": pi_id,
            "amount": amount,
            "amount_received": amount if pi_status == "succeeded" else 0,
            "currency": "usd",
            "status": pi_status,
            "metadata": metadata,
            "created": created,
            "latest_charge": "ch_" + secrets.token_hex(12) if pi_status == "succeeded" else None,
        }
        if pi_status == "requires_payment_method":
            intent["last_payment_error"] = {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.",
                "charge": "ch_" + secrets.token_hex(12),
            }
        if pi_status == "canceled":
            intent["cancellation_reason"] = "abandoned"
        self.intents.append({"intent": intent, "events": [EVENT_OF[pi_status]]})
        return arn, pi_id


@asynccontextmanager
async def services(
    stripe_url: str, sfn_url: str, keys: TokenKeys, rates: CallRates, recorder: Recorder
) -> AsyncIterator[tuple[Services, MemoryCheckpoints]]:
    """Reconcile's services against the two fakes; the checkpoint store is yielded too."""
    http = stripe.AIOHTTPClient()
    client = stripe.StripeClient(
        "sk_test_fake", base_addresses={"api": stripe_url}, http_client=http, max_network_retries=3
    )
    checkpoints = MemoryCheckpoints()
    async with (
        aws_session().client(
            "stepfunctions",
            endpoint_url=sfn_url,
            region_name=REGION,
            aws_access_key_id="fake",
            aws_secret_access_key="fake",
        ) as sfn,
        contextlib.AsyncExitStack() as closing,
    ):
        closing.push_async_callback(http.close_async)
        yield (
            Services(
                stripe=client,
                sfn=sfn,
                callbacks=PacedCallbacks(sfn, rates),
                orders=NoClaims(),
                checkpoints=checkpoints,
                checks=recorder,
                notices=recorder,
                budget=recorder,
                reader=TokenReader(keys, STATE_MACHINE_ARN),
                rates=rates,
            ),
            checkpoints,
        )
