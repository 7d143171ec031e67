"""The task token sealed to its payment: deterministic authenticated encryption.

Stripe metadata is readable by every dashboard user, restricted key, data export
and other webhook endpoint of the account, and writable by anyone who may edit a
PaymentIntent. So the token travels sealed with AES-SIV (RFC 5297,
https://www.rfc-editor.org/rfc/rfc5297) under a key of `PAYSTEP_TOKEN_KEYS`, with
the PaymentIntent's execution, attempt, amount, currency and mode as associated
data: the sealed value opens only on the PaymentIntent it was made for, so a copy
onto a PaymentIntent of another amount (or execution, attempt, currency, mode)
cannot resume anything.

SIV is deterministic: the same token, binding and key give the same sealed value.
That is required, not a weakness here: a redelivered create must send
byte-identical parameters, or Stripe answers `idempotency_error` to the reused
key (https://docs.stripe.com/api/idempotent_requests). A token is never sealed
twice for different bindings, so determinism reveals nothing.

The sealed value is `v1.<kid>.<base64url>`; the key id says which key opens it,
so keys rotate: the first key of `PAYSTEP_TOKEN_KEYS` seals, every key opens.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

VERSION: Final = "v1"
KEY_BYTES: Final = 64  # AES-256-SIV: two 256-bit keys, one for S2V, one for CTR
TAG_BYTES: Final = 16  # the synthetic IV, prepended to the ciphertext
KID_MAX_CHARS: Final = 16
_KID: Final = re.compile(rf"[A-Za-z0-9_-]{{1,{KID_MAX_CHARS}}}")
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]+")
# Tells this use of a key from any other it might be put to.
_PURPOSE: Final = b"paystep task token v1"


class SealError(ValueError):
    """A sealed token that cannot be opened; the subclass says why."""


class Damaged(SealError):
    """Not a sealed token: wrong shape, not base64url, parts missing."""


class UnknownKey(SealError):
    """Sealed under a key id that `PAYSTEP_TOKEN_KEYS` does not hold (any more)."""


class Mismatch(SealError):
    """The key is known but the seal does not open: another PaymentIntent, or changed text."""


@dataclass(frozen=True)
class Binding:
    """What a sealed token is bound to: the PaymentIntent it was made for.

    `attempt` is the text written in the metadata, so `01` and `1` differ.
    """

    execution: str
    attempt: str
    amount: int
    currency: str
    livemode: bool

    def associated_data(self) -> list[bytes]:
        # One AES-SIV component each (S2V keeps them apart, no separator can be forged).
        return [
            _PURPOSE,
            _utf8(self.execution),
            _utf8(self.attempt),
            str(self.amount).encode(),
            _utf8(self.currency),
            b"live" if self.livemode else b"test",
        ]


@dataclass(frozen=True)
class TokenKeys:
    """The keys of `PAYSTEP_TOKEN_KEYS`: the first seals, every one opens."""

    keys: tuple[tuple[str, bytes], ...] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("no token key")

    @classmethod
    def parse(cls, text: str) -> TokenKeys:
        """`kid:base64key,kid:base64key`; the messages never quote a key."""
        keys: list[tuple[str, bytes]] = []
        for index, item in enumerate(part.strip() for part in text.split(",")):
            if not item:
                continue
            kid, colon, encoded = item.partition(":")
            if not colon or not _KID.fullmatch(kid):
                raise ValueError(
                    f"key {index + 1}: expected kid:base64key, the kid 1-{KID_MAX_CHARS} "
                    "characters of A-Z a-z 0-9 _ -"
                )
            try:
                key = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"key {kid!r}: not base64") from None
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {kid!r}: {len(key)} bytes, expected {KEY_BYTES}")
            if any(kid == known for known, _ in keys):
                raise ValueError(f"key {kid!r} is listed twice")
            keys.append((kid, key))
        if not keys:
            raise ValueError("expected at least one kid:base64key")
        return cls(tuple(keys))

    @property
    def sealing_kid(self) -> str:
        return self.keys[0][0]

    def seal(self, token: str, binding: Binding) -> str:
        """`v1.<kid>.<base64url>`, the same for the same token, binding and key."""
        kid, key = self.keys[0]
        sealed = AESSIV(key).encrypt(_utf8(token), binding.associated_data())
        encoded = base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()
        return f"{VERSION}.{kid}.{encoded}"

    def open(self, sealed: str, binding: Binding) -> str:
        """The token; raises `Damaged`, `UnknownKey` or `Mismatch`."""
        version, _, rest = sealed.partition(".")
        kid, _, encoded = rest.partition(".")
        if version != VERSION or not _BASE64URL.fullmatch(encoded):
            raise Damaged(f"not a {VERSION} sealed token")
        key = dict(self.keys).get(kid)
        if key is None:
            raise UnknownKey(f"no key {kid[:KID_MAX_CHARS]!r}")
        try:
            data = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError):
            raise Damaged("not base64url") from None
        if len(data) <= TAG_BYTES:
            raise Damaged("too short to be sealed")
        try:
            plain = AESSIV(key).decrypt(data, binding.associated_data())
        except InvalidTag:
            raise Mismatch("the seal does not open for this PaymentIntent") from None
        return plain.decode("utf-8", "surrogatepass")


def sealed_chars(token_chars: int, kid_chars: int = KID_MAX_CHARS) -> int:
    """The length of a sealed ASCII token of `token_chars`, at most."""
    encoded = -(-(token_chars + TAG_BYTES) * 4 // 3)  # base64 without padding
    return len(VERSION) + 1 + kid_chars + 1 + encoded


def new_key(kid: str | None = None) -> str:
    """A fresh `kid:base64key` for `PAYSTEP_TOKEN_KEYS`."""
    kid = kid or "k" + secrets.token_hex(4)
    if not _KID.fullmatch(kid):
        raise ValueError(f"kid: 1-{KID_MAX_CHARS} characters of A-Z a-z 0-9 _ -")
    return f"{kid}:{base64.b64encode(AESSIV.generate_key(KEY_BYTES * 8)).decode()}"


def _utf8(text: str) -> bytes:
    # Metadata comes from JSON, which can carry lone surrogates: encode them rather than fail.
    return text.encode("utf-8", "surrogatepass")
