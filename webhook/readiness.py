"""`/readyz`: can this process reach Step Functions? Cached, so probes stay cheap."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from botocore.exceptions import BotoCoreError, ClientError

log = structlog.get_logger("webhook.readiness")


class Readiness:
    """One cheap Step Functions call at most every `cache_s` seconds."""

    def __init__(self, sfn_client: Any, cache_s: float) -> None:
        self._sfn = sfn_client
        self._cache_s = cache_s
        self._lock = asyncio.Lock()
        self._checked_at = float("-inf")
        self._ready = False

    async def check(self) -> bool:
        async with self._lock:
            if time.monotonic() - self._checked_at >= self._cache_s:
                self._ready = await self._probe()
                self._checked_at = time.monotonic()
            return self._ready

    async def _probe(self) -> bool:
        try:
            await self._sfn.list_state_machines(maxResults=1)
        except (BotoCoreError, ClientError) as exc:
            log.warning("webhook.not_ready", error=type(exc).__name__, detail=str(exc)[:200])
            return False
        return True
