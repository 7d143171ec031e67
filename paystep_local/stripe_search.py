"""Stripe's search of PaymentIntents (`GET /v1/payment_intents/search`), for the local doubles.

The fake Stripe (its own state) and the local Stripe in front of localstripe (which
has no Search API) both answer a search here, so a query Stripe refuses is refused
in both, and one that matches finds the same PaymentIntents.

The part of the query language paystep uses
(https://docs.stripe.com/search#search-query-language): clauses `metadata['key']:'value'`
and `field:'value'` (exact match on a PaymentIntent's query field,
https://docs.stripe.com/search#query-fields-for-payment-intents), quotes and
backslashes in a value escaped with a backslash, clauses joined by `AND`. Anything
else (`OR`, negation, comparisons, other fields) is a 400 `invalid_request_error`,
as Stripe answers a query it cannot run. Results come newest first in Stripe's
`search_result` shape, paged by `limit` (1 to 100) and the `page` cursor a result's
`next_page` gives.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from paystep_local.stripe_rules import StripeFailure, invalid

SEARCH_URL: Final = "/v1/payment_intents/search"
# https://docs.stripe.com/search#query-fields-for-payment-intents: the exact-match fields.
FIELDS: Final = frozenset({"amount", "currency", "customer", "status"})
# https://docs.stripe.com/api/payment_intents/search: `limit` between 1 and 100, default 10.
DEFAULT_LIMIT: Final = 10
MAX_LIMIT: Final = 100

_QUOTED: Final = r"(?:[^'\\]|\\.)*"
_CLAUSE: Final = re.compile(
    rf"\s*(?:metadata\['(?P<key>{_QUOTED})'\]|(?P<field>[a-z_.]+))\s*:\s*"
    rf"(?:'(?P<quoted>{_QUOTED})'|(?P<bare>[^\s'\\]+))\s*"
)
_AND: Final = re.compile(r"AND\s+")


@dataclass(frozen=True)
class Clause:
    """`metadata['key']:'value'` (`field` is `metadata`) or `field:'value'`."""

    field: str
    value: str
    key: str | None = None

    def matches(self, found: Mapping[str, Any]) -> bool:
        if self.key is not None:
            metadata = found.get("metadata") or {}
            return bool(metadata.get(self.key) == self.value)
        actual = found.get(self.field)
        return actual is not None and str(actual) == self.value


@dataclass(frozen=True)
class Query:
    """Clauses joined by `AND`."""

    clauses: tuple[Clause, ...]

    def matches(self, found: Mapping[str, Any]) -> bool:
        return all(clause.matches(found) for clause in self.clauses)


def parse(text: object) -> Query:
    """The query of a search request, or Stripe's refusal."""
    if not isinstance(text, str) or not text.strip():
        raise invalid("Missing required param: query.", param="query", code="parameter_missing")
    clauses: list[Clause] = []
    position = 0
    while True:
        match = _CLAUSE.match(text, position)
        if match is None:
            raise _unsupported(f"Invalid search query at position {position}: {text[position:]!r}")
        clauses.append(_clause(match))
        position = match.end()
        if position == len(text):
            return Query(tuple(clauses))
        joined = _AND.match(text, position)
        if joined is None:
            raise _unsupported(
                f"Invalid search query at position {position}: {text[position:]!r} "
                "(the local Stripe joins clauses with AND only)"
            )
        position = joined.end()


def search(objects: Iterable[Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
    """Stripe's `search_result` for a request's `query`, `limit` and `page` over `objects`,
    given oldest first (the order they were created in)."""
    query = parse(params.get("query"))
    limit = _limit(params.get("limit"))
    # Newest first; among those created in the same second, the later one first.
    found = sorted(
        (dict(o) for o in reversed(list(objects)) if query.matches(o)),
        key=lambda o: -int(o.get("created") or 0),
    )
    start = _start(found, params.get("page"))
    page = found[start : start + limit]
    has_more = len(found) > start + limit
    return {
        "object": "search_result",
        "data": page,
        "has_more": has_more,
        "next_page": page[-1]["id"] if has_more else None,
        "url": SEARCH_URL,
    }


def _clause(match: re.Match[str]) -> Clause:
    value = _unescape(match["quoted"] if match["quoted"] is not None else match["bare"])
    if match["key"] is not None:
        return Clause("metadata", value, key=_unescape(match["key"]))
    if match["field"] not in FIELDS:
        raise _unsupported(
            f"Field `{match['field']}` is an unsupported search field for resource "
            "`payment_intents`. See "
            "https://docs.stripe.com/search#query-fields-for-payment-intents for a list of "
            "supported fields."
        )
    return Clause(match["field"], value)


def _limit(raw: object) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not isinstance(raw, str | int) or not str(raw).isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise invalid(
            f"This value must be between 1 and {MAX_LIMIT}.",
            param="limit",
            code="parameter_invalid_integer",
        )
    return int(raw)


def _start(found: list[dict[str, Any]], page: object) -> int:
    """Where the page after the `page` cursor (the last id of the page before) starts."""
    if page in (None, ""):
        return 0
    for index, candidate in enumerate(found):
        if candidate["id"] == page:
            return index + 1
    raise invalid("Invalid page cursor.", param="page")


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _unsupported(message: str) -> StripeFailure:
    return invalid(message, param="query")
