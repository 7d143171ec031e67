"""What reconcile reads before it acts: paged listings, each paced by `CallRates`.

- Stripe's events of a window (https://docs.stripe.com/api/events/list: `created`
  filter, `limit` up to 100, `starting_after`; events are kept 30 days), one listing
  per type, the types listed at once;
- the PaymentIntents of one execution, through the Search API, for an execution
  still running whose events are older than the window
  (https://docs.stripe.com/search: searchable within about a minute, so never used
  for what the window's listing holds);
- the executions still RUNNING (any age), and the statuses of those started in the
  window: `ListExecutions` pages of up to 1,000, newest first
  (https://docs.aws.amazon.com/step-functions/latest/apireference/API_ListExecutions.html),
  never one `DescribeExecution` per execution.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import stripe
import structlog

from statemachine.metadata import execution_query
from webhook.call_rates import Call, CallRates
from webhook.events import MalformedEvent, StripeEvent, parse_event

log = structlog.get_logger("paystep.reconcile")

# https://docs.stripe.com/api/pagination: at most 100 objects a page.
STRIPE_PAGE_LIMIT: Final = 100
# https://docs.aws.amazon.com/step-functions/latest/apireference/API_ListExecutions.html
EXECUTIONS_PAGE_LIMIT: Final = 1000


async def list_events(
    client: stripe.StripeClient, since_ts: int, types: Sequence[str], rates: CallRates
) -> list[StripeEvent]:
    """Every event of `types` created at or after `since_ts`, oldest first.

    One listing per type with `type=` (an exact name works everywhere; `types[]`
    and wildcards are not universal); an unreadable event is logged and passed.
    """
    found: dict[str, StripeEvent] = {}

    async def one_type(event_type: str) -> None:
        params = {"type": event_type, "created": {"gte": since_ts}}
        async for raw in _pages(client, params, rates):
            try:
                event = parse_event(raw)
            except MalformedEvent as exc:
                log.warning("reconcile.event_unreadable", event_id=raw.get("id"), error=str(exc))
                continue
            found[event.id] = event

    await asyncio.gather(*(one_type(t) for t in types))
    return sorted(found.values(), key=lambda event: (event.created, event.id))


async def _pages(
    client: stripe.StripeClient, params: dict[str, Any], rates: CallRates
) -> AsyncIterator[dict[str, Any]]:
    after: str | None = None
    while True:
        page_params = {**params, "limit": STRIPE_PAGE_LIMIT}
        if after:
            page_params["starting_after"] = after
        await rates.take(Call.STRIPE_LIST)
        page = await client.v1.events.list_async(page_params)  # type: ignore[arg-type]
        for item in page.data:
            yield item.to_dict()
        if not page.has_more or not page.data:
            return
        after = page.data[-1].id


async def payment_intents_of(
    client: stripe.StripeClient, execution_arn: str, rates: CallRates
) -> list[dict[str, Any]]:
    """The PaymentIntents of every attempt of one execution, newest first."""
    await rates.take(Call.STRIPE_SEARCH)
    found = await client.v1.payment_intents.search_async(
        {"query": execution_query(execution_arn), "limit": STRIPE_PAGE_LIMIT}
    )
    return [pi.to_dict() for pi in found.data]


async def running_executions(sfn: Any, state_machine_arn: str, rates: CallRates) -> set[str]:
    """Every execution of the state machine still RUNNING, whatever its age."""
    running: set[str] = set()
    async for execution in _executions(sfn, rates, stateMachineArn=state_machine_arn,
                                       statusFilter="RUNNING"):  # fmt: skip
        running.add(str(execution["executionArn"]))
    return running


async def statuses_since(
    sfn: Any, state_machine_arn: str, since_ts: int, rates: CallRates
) -> dict[str, str]:
    """Status of every execution started at or after `since_ts` (the listing is newest first,
    so it stops at the first older one)."""
    statuses: dict[str, str] = {}
    async for execution in _executions(sfn, rates, stateMachineArn=state_machine_arn):
        if execution["startDate"].timestamp() < since_ts:
            break
        statuses[str(execution["executionArn"])] = str(execution["status"])
    return statuses


async def _executions(sfn: Any, rates: CallRates, **params: str) -> AsyncIterator[dict[str, Any]]:
    token: str | None = None
    while True:
        await rates.take(Call.LIST_EXECUTIONS)
        page = await sfn.list_executions(
            **params, maxResults=EXECUTIONS_PAGE_LIMIT, **({"nextToken": token} if token else {})
        )
        for execution in page.get("executions", []):
            yield execution
        token = page.get("nextToken")
        if not token:
            return
