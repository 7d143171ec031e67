"""`paystep webhook` / `python -m webhook`: serve the Stripe webhook until SIGTERM.

Shutdown order on SIGTERM (or SIGINT): stop accepting connections, let the
requests in flight finish (up to `PAYSTEP_WEBHOOK_SHUTDOWN_GRACE_S`), close the
Step Functions client, stop the metrics port, exit 0. An event cut off by the
grace gets no 2xx, so Stripe delivers it again.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

import structlog
from aiohttp import web

from paystep_common.logging import configure_logging
from paystep_common.metrics import probe, start_metrics_server
from paystep_common.settings import load_settings
from webhook.app import READINESS, WEBHOOK_PATH, create_app
from webhook.metrics import WebhookMetrics
from webhook.settings import WebhookSettings

log = structlog.get_logger("webhook.main")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="paystep webhook", description="Serve the Stripe webhook (POST /webhooks/stripe)."
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="ask a running webhook on this host whether it is ready; exit 0 if so",
    )
    args = parser.parse_args(argv)
    settings = load_settings(WebhookSettings, "webhook")
    configure_logging(settings)
    if args.check:
        return check(settings)
    return asyncio.run(serve(settings))


async def serve(settings: WebhookSettings) -> int:
    metrics = WebhookMetrics.create()
    app = create_app(settings, metrics=metrics)
    # lingering_time=0: a request refused before its body is read (413 on a declared size,
    # 404, 405) closes its connection at once. aiohttp's default keeps reading and
    # discarding such a body for 10 s, holding a task and its buffers per connection even
    # after the peer has gone, so a flood of them grows the process by ~10 KiB each.
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=settings.webhook_shutdown_grace_s,
        lingering_time=0,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await runner.setup()  # opens the Step Functions client (cleanup_ctx)
    side: web.AppRunner | None = None
    try:
        side = await start_metrics_server(
            metrics.registry, settings.metrics_port, ready=app[READINESS].check
        )
        await web.TCPSite(runner, settings.webhook_host, settings.webhook_port).start()
        log.info(
            "webhook.started",
            port=settings.webhook_port,
            metrics_port=settings.metrics_port,
            path=WEBHOOK_PATH,
            secrets=len(settings.webhook_secrets),
            expected_mode=settings.expected_mode,
        )
        await stop.wait()
        log.info("webhook.stopping")
    finally:
        # Closes the listener, waits for the handlers in flight, then runs cleanup_ctx.
        await runner.cleanup()
        if side is not None:
            await side.cleanup()
    log.info("webhook.stopped")
    return 0


def check(settings: WebhookSettings) -> int:
    return probe(f"http://127.0.0.1:{settings.webhook_port}/readyz")
