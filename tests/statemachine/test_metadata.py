"""The metadata wire format: the ids and the sealed token, within Stripe's limits.

Rules (statemachine/metadata.py, https://docs.stripe.com/metadata): 50 keys, 40-character
names, 500-character values; the token is never readable in metadata; reading back
refuses anything but the parts the worker wrote, never a shorter or wrong token.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statemachine.metadata import (
    ATTEMPT_KEY,
    EXECUTION_KEY,
    MAX_CALLER_KEYS,
    MAX_TOKEN_CHARS,
    ORDER_KEY,
    STRIPE_METADATA_KEY_MAX_CHARS,
    STRIPE_METADATA_MAX_KEYS,
    STRIPE_METADATA_VALUE_MAX_CHARS,
    TOKEN_PARTS_KEY,
    MetadataError,
    attempt_query,
    order_query,
    payment_intent_metadata,
    read_token,
)
from statemachine.seal import Binding, Damaged, TokenKeys, new_key

KEYS = TokenKeys.parse(new_key("k1"))
BINDING = Binding(
    "arn:aws:states:us-east-1:123456789012:execution:m:ord_1", "1", 1999, "usd", False
)
BASE64 = string.ascii_letters + string.digits + "+/="
tokens = st.text(alphabet=BASE64, min_size=1, max_size=MAX_TOKEN_CHARS)
caller_metadata = st.dictionaries(
    st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=20).filter(
        lambda key: not key.startswith("paystep_") and key != "order_id"
    ),
    st.text(max_size=STRIPE_METADATA_VALUE_MAX_CHARS),
    max_size=MAX_CALLER_KEYS,
)


def write(token: str = "A" * 1200, **caller: str) -> dict[str, str]:
    return payment_intent_metadata(KEYS, token, BINDING, order_id="ord_1", caller=caller)


def read(metadata: dict[str, str]) -> str | None:
    return read_token(KEYS, metadata, amount=1999, currency="usd", livemode=False)


@given(token=tokens, metadata=caller_metadata)
def test_round_trip_is_exact_and_fits_stripe_limits(token: str, metadata: dict[str, str]) -> None:
    """Rule: Stripe's limits hold for any token and the most caller keys paystep accepts."""
    written = payment_intent_metadata(KEYS, token, BINDING, order_id="ord_1", caller=metadata)
    assert read(written) == token
    assert len(written) <= STRIPE_METADATA_MAX_KEYS
    assert all(len(key) <= STRIPE_METADATA_KEY_MAX_CHARS for key in written)
    assert all(len(value) <= STRIPE_METADATA_VALUE_MAX_CHARS for value in written.values())
    assert {k: v for k, v in written.items() if k in metadata} == metadata, "caller keys kept"


@given(token=st.text(alphabet=BASE64, min_size=32, max_size=MAX_TOKEN_CHARS))
def test_no_token_is_readable_in_the_metadata(token: str) -> None:
    """Rule: the task token never stands in metadata in plain text, whole or in part."""
    joined = "".join(write(token).values())
    assert all(token[i : i + 32] not in joined for i in range(0, len(token) - 31, 32))


def test_the_same_payment_writes_byte_identical_metadata() -> None:
    """Rule: a redelivered create sends the same parameters, or Stripe answers
    idempotency_error (https://docs.stripe.com/api/idempotent_requests)."""
    assert list(write().items()) == list(write().items())


def test_the_ids_stay_readable_for_search_and_dashboards() -> None:
    written = write()
    assert (written[ORDER_KEY], written[EXECUTION_KEY], written[ATTEMPT_KEY]) == (
        "ord_1",
        BINDING.execution,
        "1",
    )


def test_metadata_without_a_token_reads_none() -> None:
    assert read({"order_id": "ord_1"}) is None


def test_missing_chunk_is_damaged_not_a_shorter_token() -> None:
    written = write()
    del written["paystep_token_1"]
    with pytest.raises(Damaged, match="missing"):
        read(written)


def test_a_chunk_beyond_the_count_is_damaged() -> None:
    written = write()
    written[TOKEN_PARTS_KEY] = str(int(written[TOKEN_PARTS_KEY]) - 1)
    with pytest.raises(Damaged, match="beyond"):
        read(written)


@pytest.mark.parametrize("parts", ["0", "7", "x", "-1", "²", "\u0661", " 1", "1\n", "", "007"])
def test_a_part_count_that_is_not_ascii_digits_in_range_is_damaged(parts: str) -> None:
    """Rule: '²'.isdigit() is True and int('²') raises; only ASCII digits are a count."""
    written = write()
    written[TOKEN_PARTS_KEY] = parts
    with pytest.raises(Damaged, match=TOKEN_PARTS_KEY):
        read(written)


def test_too_long_token_is_refused() -> None:
    with pytest.raises(MetadataError, match="2049 characters, at most 2048"):
        write("A" * 2049)


def test_caller_metadata_and_the_sealed_token_past_50_keys_is_refused_clearly() -> None:
    """Rule: refuse clearly when the sealed token and the caller's keys exceed 50."""
    full = {f"k{i}": "v" for i in range(STRIPE_METADATA_MAX_KEYS - 5)}
    with pytest.raises(MetadataError, match="Stripe allows 50"):
        payment_intent_metadata(KEYS, "A" * 2048, BINDING, order_id="ord_1", caller=full)


def test_metadata_that_already_has_paystep_keys_is_refused() -> None:
    with pytest.raises(MetadataError, match="reserved"):
        write(paystep_token_0="x")


def test_the_search_query_escapes_quotes_and_backslashes() -> None:
    """https://docs.stripe.com/search#query-fields-for-payment-intents"""
    assert attempt_query("a'b\\c", 2) == (
        "metadata['paystep_execution']:'a\\'b\\\\c' AND metadata['paystep_attempt']:'2'"
    )


def test_the_order_query_finds_every_attempt_of_the_order_escaped_alike() -> None:
    assert order_query("ord_1") == "metadata['order_id']:'ord_1'"
    assert order_query("a'b\\c") == "metadata['order_id']:'a\\'b\\\\c'"
