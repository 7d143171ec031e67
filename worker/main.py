"""`paystep worker` / `python -m worker`: load settings once, open the clients, consume.

paystep worker            run until SIGTERM / SIGINT, exit 0 after a clean shutdown
paystep worker --check    exit 0 if the worker on this host answers /healthz (exec probe)
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import replace

import aiohttp
import stripe
import structlog

from paystep_common.clients import aws_config, aws_session, stripe_client
from paystep_common.limiter import Budget
from paystep_common.logging import configure_logging
from paystep_common.metrics import probe, start_metrics_server
from paystep_common.retry import CALLBACKS_WORKER, SQS_CONSUMER, STRIPE_WORKER
from paystep_common.settings import load_settings
from statemachine.callbacks import Callbacks
from statemachine.card_budget import CardBudget
from statemachine.executions import Executions
from statemachine.orders import Orders
from worker.alerts import Alerts
from worker.classify import Backoff, RetryPolicy
from worker.consumer import Consumer
from worker.handlers import Handlers
from worker.metrics import Metrics
from worker.queue import TaskQueue
from worker.settings import WorkerSettings
from worker.stripe_api import StripeApi

log = structlog.get_logger("paystep.worker")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="paystep worker", description="Consume the paystep task queue (SQS) into Stripe."
    )
    parser.add_argument(
        "--check", action="store_true", help="probe the local worker's /healthz and exit"
    )
    args = parser.parse_args(list(argv))
    settings = load_settings(WorkerSettings, "worker")
    configure_logging(settings)
    if args.check:
        return check(settings)
    return asyncio.run(run(settings))


def check(settings: WorkerSettings) -> int:
    return probe(f"http://127.0.0.1:{settings.metrics_port}/healthz")


async def run(settings: WorkerSettings) -> int:
    metrics = Metrics()
    session = aws_session()
    async with AsyncExitStack() as stack:
        sqs = await stack.enter_async_context(
            session.client("sqs", config=aws_config(SQS_CONSUMER))
        )
        callbacks_profile = replace(
            CALLBACKS_WORKER, max_pool_connections=settings.worker_concurrency
        )
        sfn = await stack.enter_async_context(
            session.client("stepfunctions", config=aws_config(callbacks_profile))
        )
        sns = await stack.enter_async_context(
            session.client("sns", config=aws_config(CALLBACKS_WORKER))
        )
        dynamodb = await stack.enter_async_context(
            session.client("dynamodb", config=aws_config(CALLBACKS_WORKER))
        )
        http = await stack.enter_async_context(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=settings.worker_concurrency,
                    ssl=ssl.create_default_context(cafile=stripe.ca_bundle_path),
                )
            )
        )
        client = stripe_client(settings, STRIPE_WORKER, session=http)
        limit = Budget(
            account_per_s=settings.worker_stripe_account_rate_per_s * settings.worker_stripe_share,
            endpoint_per_s=settings.worker_stripe_endpoint_rate_per_s
            * settings.worker_stripe_share,
            on_change=lambda limiter, rate: metrics.stripe_rate.labels(limiter).set(rate),
        )
        failures = metrics.callback_failures
        callbacks = Callbacks(
            sfn, on_failure=lambda action, code: failures.labels(action, code).inc()
        )
        queue = TaskQueue(
            sqs,
            settings.queue_url,
            visibility_timeout_s=settings.worker_visibility_timeout_s,
            wait_s=settings.worker_poll_wait_s,
            batch_delay_s=settings.worker_batch_delay_s,
            metrics=metrics,
        )
        consumer = Consumer(
            queue,
            Handlers(
                StripeApi(client, limit, metrics),
                callbacks,
                idempotency_horizon_s=settings.worker_idempotency_horizon_s,
                token_keys=settings.keyring,
                livemode=settings.livemode,
                executions=Executions(sfn),
                alerts=Alerts(sns, settings.alarm_topic_arn),
                requeue=queue,
                metrics=metrics,
                check_again_s=settings.worker_check_again_s,
                orders=Orders(dynamodb, settings.orders_table, settings.inventory_table),
                card_budget=CardBudget(dynamodb, settings.card_attempts_table, settings.budgets),
            ),
            callbacks,
            concurrency=settings.worker_concurrency,
            shutdown_grace_s=settings.worker_shutdown_grace_s,
            retry=RetryPolicy(
                Backoff(base_s=settings.worker_retry_base_s, max_s=settings.worker_retry_max_s)
            ),
            metrics=metrics,
        )
        runner = await start_metrics_server(
            metrics.registry,
            settings.metrics_port,
            host=settings.metrics_host,
            alive=consumer.alive,
            ready=consumer.ready,
        )
        stack.push_async_callback(runner.cleanup)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, consumer.stop)
        log.info(
            "worker.started",
            queue=settings.queue_url,
            concurrency=settings.worker_concurrency,
            metrics_port=settings.metrics_port,
        )
        await consumer.run()
    log.info("worker.stopped")
    return 0
