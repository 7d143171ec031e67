"""How fast `paystep reconcile` may call Stripe and Step Functions: one pacer per quota.

Reconcile shares every quota it draws on with the services that answer customers
(the worker's creates, the webhook's callbacks), so it takes a bounded share of each,
set in `ReconcileSettings`, never the whole:

- Stripe: 100 requests/s per account in live mode, 25 in test mode, about 25/s per
  endpoint, and 20 read requests/s for the Search API
  (https://docs.stripe.com/rate-limits);
- Step Functions, per account and region, as token buckets
  (https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html#service-limits-api-action-throttling-general):
  SendTaskSuccess/Failure/Heartbeat refill 500/s in US East (N. Virginia), US West
  (Oregon) and Europe (Ireland) and 300/s elsewhere; the read APIs far less:
  ListExecutions 5/s (bucket 200) there and 2/s (bucket 100) elsewhere,
  DescribeExecution 15/s (bucket 300) and 10/s (bucket 250), GetExecutionHistory
  20/s (bucket 400).

A call waits for its turn (`await rates.take(kind)`); the pacer is the worker's
(`paystep_common.limiter.Pacer`) at a fixed rate, which after a pause lets two calls
go together (every bucket above holds far more): the SDKs' own retries ride out a
throttle that another caller of the same quota caused.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Mapping

from paystep_common.limiter import Pacer


class Call(enum.StrEnum):
    STRIPE_LIST = "stripe_list"
    STRIPE_SEARCH = "stripe_search"
    SEND_TASK = "send_task"
    LIST_EXECUTIONS = "list_executions"
    DESCRIBE_EXECUTION = "describe_execution"


# A Stripe search is a Stripe request too: it waits for the account's pacer as well.
_ALSO: Mapping[Call, tuple[Call, ...]] = {Call.STRIPE_SEARCH: (Call.STRIPE_LIST,)}


class CallRates:
    """One pacer per kind of call; `take(kind)` returns once the call may start."""

    def __init__(
        self,
        per_s: Mapping[Call, float],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._pacers = {
            kind: Pacer(max_per_s=rate, min_per_s=rate, clock=clock) for kind, rate in per_s.items()
        }
        self._turns = {kind: asyncio.Lock() for kind in per_s}
        self._sleep = sleep
        self.taken: dict[Call, int] = dict.fromkeys(per_s, 0)

    async def take(self, kind: Call) -> None:
        for each in (kind, *_ALSO.get(kind, ())):
            pacer = self._pacers[each]
            async with self._turns[each]:
                while (delay := pacer.wait()) > 0:
                    await self._sleep(delay)
                pacer.start(waited=False)
        self.taken[kind] += 1
