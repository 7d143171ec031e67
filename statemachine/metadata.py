"""The wire format of a PaymentIntent's metadata: the one place that writes and reads it.

The worker writes, beside the caller's own keys:

- `order_id`, `paystep_execution`, `paystep_attempt`: which payment this is, in
  plain text (dashboards and the Search API read them);
- the task token, sealed to this PaymentIntent (`statemachine.seal`) and split
  over `paystep_token_0`, `paystep_token_1`, ... with the number of parts in
  `paystep_token_parts`: a sealed token runs to 2,772 characters, a value holds 500.

Stripe allows 50 keys, key names of 40 characters and values of 500
(https://docs.stripe.com/metadata); `paystep_` keys and `order_id` are paystep's.
The webhook and reconciliation read the token back with the associated data
taken from the PaymentIntent that carries it; anything but a token sealed for
exactly that PaymentIntent is refused with a `SealError` saying why, never a
wrong token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from statemachine.seal import Binding, Damaged, TokenKeys, sealed_chars

# https://docs.stripe.com/metadata: 50 keys, names up to 40 characters, values up to 500.
STRIPE_METADATA_MAX_KEYS: Final = 50
STRIPE_METADATA_KEY_MAX_CHARS: Final = 40
STRIPE_METADATA_VALUE_MAX_CHARS: Final = 500

# The payment's ids, in plain text: dashboards and the Search API read them.
ORDER_KEY: Final = "order_id"
EXECUTION_KEY: Final = "paystep_execution"
ATTEMPT_KEY: Final = "paystep_attempt"
# Every key of paystep's own but order_id: refused in the caller's metadata.
RESERVED_PREFIX: Final = "paystep_"

MAX_TOKEN_CHARS: Final = (
    2048  # https://docs.aws.amazon.com/step-functions/latest/apireference/API_SendTaskSuccess.html
)
# The sealed token: its parts, and how many there are.
TOKEN_CHUNK_PREFIX: Final = "paystep_token_"
CHUNK_CHARS: Final = STRIPE_METADATA_VALUE_MAX_CHARS
TOKEN_PARTS_KEY: Final = "paystep_token_parts"
MAX_TOKEN_KEYS: Final = -(-sealed_chars(MAX_TOKEN_CHARS) // CHUNK_CHARS)
# order_id, execution, attempt, the chunks and their count: what is left is the caller's.
RESERVED_KEYS: Final = 3 + MAX_TOKEN_KEYS + 1
MAX_CALLER_KEYS: Final = STRIPE_METADATA_MAX_KEYS - RESERVED_KEYS
_PART_COUNT: Final = re.compile(r"[0-9]{1,2}")  # ASCII digits: '²'.isdigit() is True

assert len(f"{TOKEN_CHUNK_PREFIX}{MAX_TOKEN_KEYS - 1}") <= STRIPE_METADATA_KEY_MAX_CHARS
assert len(TOKEN_PARTS_KEY) <= STRIPE_METADATA_KEY_MAX_CHARS


class MetadataError(ValueError):
    """The metadata cannot be written: it would not fit, or it uses paystep's keys."""


def is_reserved(key: str) -> bool:
    return key == ORDER_KEY or key.startswith(RESERVED_PREFIX)


def payment_intent_metadata(
    keys: TokenKeys,
    token: str,
    binding: Binding,
    *,
    order_id: str,
    caller: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The caller's metadata, the payment's ids and the sealed token; raises `MetadataError`.

    Deterministic: the same arguments give the same metadata, key order included.
    """
    merged = dict(caller or {})
    clashing = sorted(key for key in merged if is_reserved(key))
    if clashing:
        raise MetadataError(f"keys {clashing} are reserved for paystep")
    if not token:
        raise MetadataError("the task token is empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise MetadataError(f"the task token is {len(token)} characters, at most {MAX_TOKEN_CHARS}")
    for name, value in (("order id", order_id), ("execution id", binding.execution)):
        if len(value) > STRIPE_METADATA_VALUE_MAX_CHARS:
            raise MetadataError(
                f"the {name} is {len(value)} characters, Stripe holds "
                f"{STRIPE_METADATA_VALUE_MAX_CHARS}"
            )
    sealed = keys.seal(token, binding)
    chunks = [sealed[i : i + CHUNK_CHARS] for i in range(0, len(sealed), CHUNK_CHARS)]
    needed = 3 + len(chunks) + 1
    if len(merged) + needed > STRIPE_METADATA_MAX_KEYS:
        raise MetadataError(
            f"{len(merged)} keys of the caller's and {needed} of paystep's "
            f"(the sealed token takes {len(chunks) + 1}); Stripe allows {STRIPE_METADATA_MAX_KEYS}"
        )
    merged[ORDER_KEY] = order_id
    merged[EXECUTION_KEY] = binding.execution
    merged[ATTEMPT_KEY] = binding.attempt
    for index, chunk in enumerate(chunks):
        merged[f"{TOKEN_CHUNK_PREFIX}{index}"] = chunk
    merged[TOKEN_PARTS_KEY] = str(len(chunks))
    return merged


def read_token(
    keys: TokenKeys, metadata: Mapping[str, str], *, amount: int, currency: str, livemode: bool
) -> str | None:
    """The token sealed for the PaymentIntent these describe, `None` if it carries none.

    Raises `Damaged` when the parts do not make one sealed value (a count that is
    not 1 to `MAX_TOKEN_KEYS` in ASCII digits, a part missing, empty, or beyond the
    count), `UnknownKey` or `Mismatch` when it does but does not open here.
    """
    if TOKEN_PARTS_KEY not in metadata:
        return None
    raw_parts = metadata[TOKEN_PARTS_KEY]
    if not _PART_COUNT.fullmatch(raw_parts) or not 1 <= int(raw_parts) <= MAX_TOKEN_KEYS:
        raise Damaged(f"{TOKEN_PARTS_KEY} is {raw_parts[:10]!r}, expected 1-{MAX_TOKEN_KEYS}")
    count = int(raw_parts)
    chunks = [metadata.get(f"{TOKEN_CHUNK_PREFIX}{index}") for index in range(count)]
    if not all(chunks):
        raise Damaged(f"a token part of {count} is missing or empty")
    if f"{TOKEN_CHUNK_PREFIX}{count}" in metadata:
        raise Damaged(f"a token part beyond the {count} counted")
    execution, attempt = metadata.get(EXECUTION_KEY), metadata.get(ATTEMPT_KEY)
    if not execution or not attempt:
        raise Damaged(f"{EXECUTION_KEY} or {ATTEMPT_KEY} is missing")
    binding = Binding(execution, attempt, amount, currency, livemode)
    return keys.open("".join(chunk for chunk in chunks if chunk), binding)


def attempt_query(execution_id: str, attempt: int) -> str:
    """Search query for the PaymentIntents of one attempt of one execution.

    https://docs.stripe.com/search#query-fields-for-payment-intents: `metadata['key']:'value'`,
    quotes and backslashes escaped with a backslash.
    """
    return f"{execution_query(execution_id)} AND metadata['{ATTEMPT_KEY}']:'{attempt}'"


def execution_query(execution_id: str) -> str:
    """Search query for the PaymentIntents of every attempt of one execution."""
    return f"metadata['{EXECUTION_KEY}']:'{_quote(execution_id)}'"


def order_query(order_id: str) -> str:
    """Search query for every PaymentIntent paystep created for `order_id`, any execution."""
    return f"metadata['{ORDER_KEY}']:'{_quote(order_id)}'"


def ids(metadata: Mapping[str, str]) -> dict[str, str]:
    """The payment's ids in `metadata`, named for a log line (never the token)."""
    named = {"order_id": ORDER_KEY, "execution": EXECUTION_KEY, "attempt": ATTEMPT_KEY}
    return {name: metadata[key] for name, key in named.items() if key in metadata}


def sealed_value(metadata: Mapping[str, str]) -> str:
    """The token parts as they stand, joined: for a hash in a log line, never opened."""
    return "".join(
        value
        for key, value in sorted(metadata.items())
        if key.startswith(TOKEN_CHUNK_PREFIX) and key != TOKEN_PARTS_KEY
    )


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")
