"""Sealing the task token: AES-SIV bound to its payment, keys that rotate.

Rules (statemachine/seal.py): the seal opens only with the associated data it was made
with (execution, attempt, amount, currency, mode); it is deterministic; the first key
of PAYSTEP_TOKEN_KEYS seals and every key opens; a key is never quoted in an error.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statemachine.seal import Binding, Damaged, Mismatch, TokenKeys, UnknownKey, new_key

OLD, NEW = new_key("old"), new_key("new")
BINDING = Binding("arn:aws:states:us-east-1:123456789012:execution:m:ord_1", "1", 2599, "eur", True)
TOKEN = "AAAAKgAAAAIAAAAA" + "x" * 1000


@given(token=st.text(min_size=1, max_size=2048))
def test_seal_then_open_gives_the_token_back(token: str) -> None:
    keys = TokenKeys.parse(NEW)
    assert keys.open(keys.seal(token, BINDING), BINDING) == token


def test_sealing_is_deterministic() -> None:
    """Rule: a redelivered create must send byte-identical metadata."""
    keys = TokenKeys.parse(NEW)
    assert keys.seal(TOKEN, BINDING) == keys.seal(TOKEN, BINDING)
    assert keys.seal(TOKEN, BINDING).startswith("v1.new.")


@pytest.mark.parametrize(
    "changed",
    [
        {"amount": 50},
        {"currency": "usd"},
        {"execution": BINDING.execution + "x"},
        {"attempt": "2"},
        {"attempt": "01"},
        {"livemode": False},
    ],
)
def test_another_payment_cannot_open_the_seal(changed: dict[str, object]) -> None:
    """Rule: a copy onto a PaymentIntent whose amount, currency, execution, attempt or mode
    differ is a mismatch, never the token."""
    keys = TokenKeys.parse(NEW)
    sealed = keys.seal(TOKEN, BINDING)
    with pytest.raises(Mismatch):
        keys.open(sealed, dataclasses.replace(BINDING, **changed))  # type: ignore[arg-type]


def test_a_rotated_out_key_still_opens_while_listed_second() -> None:
    """Rule: the first key seals, every key opens (rotation: add the new key first)."""
    sealed_before = TokenKeys.parse(OLD).seal(TOKEN, BINDING)
    rotated = TokenKeys.parse(f"{NEW},{OLD}")
    assert rotated.open(sealed_before, BINDING) == TOKEN
    assert rotated.seal(TOKEN, BINDING).startswith("v1.new.")
    with pytest.raises(UnknownKey):
        TokenKeys.parse(NEW).open(sealed_before, BINDING)


@pytest.mark.parametrize(
    "sealed",
    ["", "v1", "v1.new", "v2.new.AAAA", "v1.new.A²AA", "v1.new.AAAA", "v1.new.AA=A", "v1.new. "],
)
def test_text_that_is_no_sealed_token_is_damaged(sealed: str) -> None:
    with pytest.raises(Damaged):
        TokenKeys.parse(NEW).open(sealed, BINDING)


def test_a_changed_character_is_a_mismatch() -> None:
    keys = TokenKeys.parse(NEW)
    sealed = keys.seal(TOKEN, BINDING)
    flipped = sealed[:-5] + ("A" if sealed[-5] != "A" else "B") + sealed[-4:]
    with pytest.raises(Mismatch):
        keys.open(flipped, BINDING)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "at least one"),
        ("nokey", "kid:base64key"),
        ("a b:AAAA", "kid:base64key"),
        ("k:not base64!", "not base64"),
        ("k:AAAA", "3 bytes, expected 64"),
        (f"{NEW},{NEW}", "listed twice"),
    ],
)
def test_bad_key_lists_are_refused_without_quoting_a_key(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as raised:
        TokenKeys.parse(text)
    assert NEW.split(":")[1] not in str(raised.value)


def test_keys_never_show_in_a_repr() -> None:
    assert NEW.split(":")[1] not in repr(TokenKeys.parse(NEW))
