"""The task token survives the trip through Stripe metadata, exactly, or fails loudly."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statemachine.codec import (
    CHUNK_CHARS,
    MAX_TOKEN_CHARS,
    PARTS_KEY,
    TokenCodecError,
    decode_token,
    encode_token,
)
from statemachine.models import (
    MAX_CALLER_METADATA_KEYS,
    STRIPE_METADATA_KEY_MAX_CHARS,
    STRIPE_METADATA_MAX_KEYS,
    STRIPE_METADATA_VALUE_MAX_CHARS,
)

BASE64 = string.ascii_letters + string.digits + "+/="
tokens = st.text(alphabet=BASE64, min_size=1, max_size=MAX_TOKEN_CHARS)
caller_metadata = st.dictionaries(
    st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=20).filter(
        lambda key: not key.startswith("paystep_")
    ),
    st.text(max_size=STRIPE_METADATA_VALUE_MAX_CHARS),
    max_size=MAX_CALLER_METADATA_KEYS,
)


@given(token=tokens, metadata=caller_metadata)
def test_round_trip_is_exact_and_fits_stripe_limits(token: str, metadata: dict[str, str]) -> None:
    encoded = encode_token(token, metadata)
    assert decode_token(encoded) == token
    assert len(encoded) <= STRIPE_METADATA_MAX_KEYS
    assert all(len(key) <= STRIPE_METADATA_KEY_MAX_CHARS for key in encoded)
    assert all(len(value) <= STRIPE_METADATA_VALUE_MAX_CHARS for value in encoded.values())
    assert {k: v for k, v in encoded.items() if k in metadata} == metadata, "caller keys kept"


@given(token=tokens)
def test_chunks_are_as_few_as_possible(token: str) -> None:
    encoded = encode_token(token)
    assert int(encoded[PARTS_KEY]) == -(-len(token) // CHUNK_CHARS)


def test_metadata_without_a_token_decodes_to_none() -> None:
    assert decode_token({"order_id": "ord_1"}) is None
    assert decode_token(None) is None


def test_missing_chunk_is_an_error_not_a_shorter_token() -> None:
    encoded = encode_token("A" * 1200)
    del encoded["paystep_token_1"]
    with pytest.raises(TokenCodecError, match="part 1 of 3 is missing"):
        decode_token(encoded)


@pytest.mark.parametrize("parts", ["0", "6", "x", "-1"])
def test_bad_part_count_is_an_error(parts: str) -> None:
    with pytest.raises(TokenCodecError, match=PARTS_KEY):
        decode_token({PARTS_KEY: parts, "paystep_token_0": "abc"})


def test_too_long_token_is_refused() -> None:
    with pytest.raises(TokenCodecError, match="2049 characters, at most 2048"):
        encode_token("A" * 2049)


def test_full_metadata_leaves_no_room_and_says_so() -> None:
    full = {f"k{i}": "v" for i in range(STRIPE_METADATA_MAX_KEYS - 2)}
    with pytest.raises(TokenCodecError, match="Stripe allows 50"):
        encode_token("A" * 1500, full)


def test_metadata_that_already_has_token_keys_is_refused() -> None:
    with pytest.raises(TokenCodecError, match="already uses the token keys"):
        encode_token("abc", {"paystep_token_0": "x"})
