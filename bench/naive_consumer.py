"""The naive consumer the worker is measured against: one message at a time, all blocking.

Receive one message (sync boto3), create its PaymentIntent (sync stripe-python,
the worker's own parameters, metadata and idempotency key), delete it, repeat.
It does the same work per task as the worker, so the ratio of the two is what
concurrency, batching and the asyncio clients buy.

    python -m bench.naive_consumer --queue-url URL --stripe-base URL --duration-s 10

Prints one JSON object: tasks, elapsed_s, cpu_s, sqs_requests.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import boto3
import stripe

from statemachine.models import TASK_ADAPTER, CreatePaymentTask
from statemachine.seal import TokenKeys, new_key
from worker.handlers import payment_intent_params, payment_metadata


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.naive_consumer")
    parser.add_argument("--queue-url", required=True)
    parser.add_argument("--stripe-base", required=True)
    parser.add_argument("--duration-s", type=float, default=10.0)
    args = parser.parse_args(argv)

    sqs = boto3.client("sqs")
    client = stripe.StripeClient(
        os.environ.get("PAYSTEP_STRIPE_API_KEY", "sk_test_bench"),
        base_addresses={"api": args.stripe_base},
        max_network_retries=0,
    )
    keys = TokenKeys.parse(os.environ.get("PAYSTEP_TOKEN_KEYS") or new_key())
    tasks = requests = 0
    started, cpu_started = time.monotonic(), time.process_time()
    while time.monotonic() - started < args.duration_s:
        answer = sqs.receive_message(
            QueueUrl=args.queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=1
        )
        requests += 1
        for message in answer.get("Messages", []):
            task = TASK_ADAPTER.validate_json(message["Body"])
            assert isinstance(task, CreatePaymentTask)
            request = task.payment_request()
            sealed = payment_metadata(task, request, keys, livemode=False)
            params = payment_intent_params(task, request, sealed)
            client.v1.payment_intents.create(params, {"idempotency_key": task.idempotency_key})
            sqs.delete_message(QueueUrl=args.queue_url, ReceiptHandle=message["ReceiptHandle"])
            requests += 1
            tasks += 1
    print(
        json.dumps(
            {
                "tasks": tasks,
                "elapsed_s": time.monotonic() - started,
                "cpu_s": time.process_time() - cpu_started,
                "sqs_requests": requests,
            }
        )
    )


if __name__ == "__main__":
    main()
