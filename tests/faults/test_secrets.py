"""Secrets stay secret: every log line of a whole run, searched for tokens and keys.

GIVEN a stack of its own (moto issuing AWS-length task tokens, localstripe, the
webhook and two workers logging at debug level)
WHEN the demo's payments run (card, decline with retries, bank debit, customer
confirming later, invalid input, refund), a delivery is lost and reconciled,
and poison messages carrying a token reach the worker
THEN no log file under the stack's folder holds a task token or any 20 characters
in a row of one (so no 40-character chunk either), the Stripe secret key, or
a webhook signing secret.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import boto3
import pytest

from paystep.demo import DEMO_DEPLOY_ARGS, DEMO_MAX_ATTEMPTS
from paystep_local.delivery_sink import DeliverySink, about_payment_intent
from paystep_local.localstack import LOCAL_STRIPE_KEY, LocalStack
from paystep_local.polling import eventually, eventually_async
from paystep_local.processes import Workers
from paystep_local.scenarios import Stack, demo_scenarios, run
from tests.faults.harness import reconcile, start_webhook, start_worker
from tests.worker.support import queue_counts

BLOCK: Final = 20
# Task tokens are base64 text; a leak shows as a run of these characters.
TOKEN_RUN: Final = re.compile(rf"[A-Za-z0-9+/=_-]{{{BLOCK},}}")
STRIPE_KEY: Final = re.compile(r"\b[sr]k_(?:test|live)_[A-Za-z0-9_]+")
DEBUG: Final = {"PAYSTEP_LOG_LEVEL": "debug"}


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """A whole stack of its own: every line under its folder belongs to this run."""
    saved = dict(os.environ)
    with LocalStack(tmp_path / "stack") as local:
        local.start_aws()
        local.start_stripe()
        local.deploy(*DEMO_DEPLOY_ARGS)
        os.environ.update(
            {k: v for k, v in local.env().items() if k.startswith(("AWS_", "PAYSTEP_"))}
        )
        try:
            yield local
        finally:
            os.environ.clear()
            os.environ.update(saved)


def _tokens(state_machine_arn: str) -> set[str]:
    """Every task token the state machine issued, from its executions' histories."""
    sfn = boto3.client("stepfunctions")
    tokens: set[str] = set()
    for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=state_machine_arn):
        for execution in page["executions"]:
            history = sfn.get_execution_history(
                executionArn=execution["executionArn"], maxResults=1000
            )
            for event in history["events"]:
                details = event.get("taskScheduledEventDetails")
                body = json.loads(details["parameters"]).get("MessageBody") if details else None
                if isinstance(body, dict) and "task_token" in body:
                    tokens.add(body["task_token"])
    return tokens


def _leaks(text: str, blocks: dict[str, int]) -> set[int]:
    """Indexes of the tokens that have a block in `text`.

    Blocks are each token cut at every 20th character: any 40 characters of a token
    in a row contain a whole block, so a chunk of 40 or more cannot go unseen.
    """
    found: set[int] = set()
    for match in TOKEN_RUN.finditer(text):
        run_text = match.group()
        for start in range(len(run_text) - BLOCK + 1):
            index = blocks.get(run_text[start : start + BLOCK])
            if index is not None:
                found.add(index)
    return found


def test_no_log_line_holds_a_token_a_key_or_a_signing_secret(own_stack: LocalStack) -> None:
    local = own_stack
    assert local.deployment and local.stripe_base and local.aws_endpoint
    webhook = start_webhook(local, env=DEBUG)
    local.register_webhook(webhook.urls["webhook"])
    workers = Workers(local)
    try:
        for _ in range(2):
            start_worker(workers, local.stripe_base, DEBUG)
        poison_token = "POISON" + uuid.uuid4().hex * 40
        sqs = boto3.client("sqs")
        for body in (
            json.dumps({"type": "create_payment", "task_token": poison_token}),
            json.dumps({"type": "refund_payment", "task_token": poison_token, "order_id": "#"}),
        ):
            sqs.send_message(QueueUrl=local.deployment["queue_url"], MessageBody=body)

        async def payments() -> list[str]:
            assert local.deployment and local.stripe_base
            async with Stack(local.deployment, local.stripe_base, LOCAL_STRIPE_KEY) as clients:
                results = await asyncio.gather(
                    *(run(clients, s) for s in demo_scenarios(DEMO_MAX_ATTEMPTS))
                )
                return [f"{r.scenario}: {p}" for r in results for p in r.problems]

        assert asyncio.run(payments()) == []
        # A delivery lost while no webhook listens, then replayed by reconciliation.
        webhook.kill()
        with DeliverySink() as sink:
            local.register_webhook(sink.url)
            lost = asyncio.run(_lost_payment(local, sink))
        recovered = reconcile(local)
        eventually(
            lambda: queue_counts(sqs, local.deployment["dead_letter_queue_url"])[0] == 2,  # type: ignore[index]
            timeout_s=120,
            what="the poison messages dead-lettered",
        )
    finally:
        workers.stop_all()
    assert recovered["callbacks_sent"] >= 1
    ended = boto3.client("stepfunctions").describe_execution(executionArn=lost)["status"]
    assert ended in ("RUNNING", "SUCCEEDED"), ended

    tokens = sorted(_tokens(local.deployment["state_machine_arn"]) | {poison_token})
    blocks = {
        token[start : start + BLOCK]: index
        for index, token in enumerate(tokens)
        for start in range(0, len(token) - BLOCK + 1, BLOCK)
    }
    logs = sorted(local.workdir.glob("*.log"))
    lines = 0
    findings: list[str] = []
    for path in logs:
        text = path.read_text(errors="replace")
        lines += text.count("\n")
        leaked = _leaks(text, blocks)
        if leaked:
            findings.append(f"{path.name}: {len(leaked)} task tokens")
        keys = set(STRIPE_KEY.findall(text))
        if LOCAL_STRIPE_KEY in text:
            keys.add(LOCAL_STRIPE_KEY)
        if keys:
            findings.append(f"{path.name}: Stripe keys {sorted(keys)}")
        if "whsec_" in text or local.webhook_secret in text:
            findings.append(f"{path.name}: a webhook signing secret")
    print(
        f"[faults] secrets: log files {len(logs)} ({', '.join(p.name for p in logs)}), "
        f"lines {lines}, tokens searched {len(tokens)} (chars {min(map(len, tokens))}-"
        f"{max(map(len, tokens))}), reconciled {recovered['callbacks_sent']}, "
        f"findings {findings or 'none'}"
    )
    assert findings == []


async def _lost_payment(local: LocalStack, sink: DeliverySink) -> str:
    """A card payment whose success event reached only `sink`: delivered, and lost."""
    assert local.deployment and local.stripe_base
    async with Stack(local.deployment, local.stripe_base, LOCAL_STRIPE_KEY) as clients:
        order_id = f"ord_lost_{uuid.uuid4().hex[:8]}"
        arn = await clients.start(
            {"order_id": order_id, "amount": 1999, "currency": "usd",
             "payment_method": "pm_card_visa"}
        )  # fmt: skip
        intents = await eventually_async(
            lambda: clients.payment_intents_of(order_id),
            timeout_s=60,
            interval_s=0.25,
            what=f"the PaymentIntent of {order_id}",
        )
        await asyncio.to_thread(
            sink.wait_for,
            about_payment_intent(intents[0]["id"], "succeeded"),
            what=f"the success of {intents[0]['id']} delivered to nobody",
        )
        return arn
