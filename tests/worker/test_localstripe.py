"""The worker against localstripe itself: a real PaymentIntent carrying the task token.

localstripe has no Search API, so this path keeps to a fresh message (no search).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import stripe

from paystep_local.localstack import LOCAL_STRIPE_KEY, LocalStack
from paystep_local.polling import eventually
from paystep_local.processes import Workers
from statemachine.models import PaymentOutcome, dump_json
from tests.support.aws import start, wait_done


def test_a_real_payment_intent_carries_the_token_in_its_metadata(
    stack: LocalStack, deployed: dict[str, Any], workers: Workers, aws: tuple[Any, Any]
) -> None:
    sfn, _ = aws
    assert stack.stripe_base is not None
    worker = workers.start(deployed, stack.stripe_base)
    order_id = f"ord_{uuid.uuid4().hex[:10]}"
    arn = start(
        sfn,
        deployed["state_machine_arn"],
        {
            "order_id": order_id,
            "amount": 2500,
            "currency": "eur",
            "payment_method": "pm_card_visa",
            "metadata": {"campaign": "winter"},
        },
    )
    created = eventually(
        lambda: [e for e in worker.log_events() if e["event"] == "payment_intent.created"],
        what="the worker created the PaymentIntent",
    )
    client = stripe.StripeClient(LOCAL_STRIPE_KEY, base_addresses={"api": stack.stripe_base})
    intent = client.v1.payment_intents.retrieve(created[0]["payment_intent"])
    assert (intent.amount, intent.currency, intent.status) == (2500, "eur", "succeeded")
    metadata = intent.metadata.to_dict()
    assert metadata["campaign"] == "winter"
    assert metadata["order_id"] == order_id
    assert metadata["paystep_execution"] == arn
    assert metadata["paystep_attempt"] == "1"
    token = stack.read_token(intent.to_dict())
    assert token is not None and len(token) >= 1000
    # The token stored at Stripe is the execution's own: it resumes the wait.
    outcome = PaymentOutcome(
        payment_intent_id=intent.id, status="succeeded", amount_received=2500, currency="eur"
    )
    sfn.send_task_success(taskToken=token, output=dump_json(outcome))
    done = wait_done(sfn, arn)
    assert done["status"] == "SUCCEEDED", done
    assert json.loads(done["output"])["payment"]["payment_intent_id"] == intent.id
