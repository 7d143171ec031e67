"""The side port of every long-running process: Prometheus metrics and probes.

`/metrics`, `/healthz` (the process is alive and its loop turns) and `/readyz`
(it can do its job; each service passes its own check). Metrics are served on
this port only. The worker has no other port, so Kubernetes probes it here. The
webhook answers `/healthz` and `/readyz` on its public port too (`webhook.app`),
and Kubernetes probes it there, so a pod whose public listener stops answering
is restarted and taken out of the Service. Neither port is reachable from
outside the cluster: the ingress routes `/webhooks/stripe` alone.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

Check = Callable[[], Awaitable[bool]]


def callback_failures(registry: CollectorRegistry) -> Counter:
    """SendTask* calls Step Functions did not take (a closed task is not one), by action and
    error code: the same name in every process that resumes executions, so one alert reads
    them all."""
    return Counter(
        "paystep_callback_failures",
        "Callbacks Step Functions did not take after the SDK's retries (a closed task is not "
        "one), by action and error code.",
        ["action", "code"],
        registry=registry,
    )


async def _always() -> bool:
    return True


def metrics_app(
    registry: CollectorRegistry, *, alive: Check = _always, ready: Check = _always
) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    def probe(check: Check) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(_: web.Request) -> web.Response:
            ok = await check()
            return web.json_response({"ok": ok}, status=200 if ok else 503)

        return handler

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", probe(alive))
    app.router.add_get("/readyz", probe(ready))
    return app


async def start_metrics_server(
    registry: CollectorRegistry,
    port: int,
    *,
    host: str = "0.0.0.0",
    alive: Check = _always,
    ready: Check = _always,
) -> web.AppRunner:
    """Serve metrics and probes on `port`; the caller awaits `runner.cleanup()`."""
    runner = web.AppRunner(metrics_app(registry, alive=alive, ready=ready), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def probe(url: str, timeout_s: float = 5.0) -> int:
    """Exit status of a `--check` command: 0 when `url` answers 200, else 1."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1
