"""The task token ⇄ Stripe metadata codec.

A task token runs to 2048 characters; a Stripe metadata value holds 500. The token
is split over `paystep_token_0`, `paystep_token_1`, ... with the number of parts
in `paystep_token_parts` (https://docs.stripe.com/api/metadata). Decoding checks
the shape of the set, not its content: a part count that is not 1 to
`MAX_TOKEN_KEYS`, or a missing or empty part, is a `TokenCodecError` rather than a
shorter token. A part whose text was changed or cut, a count lowered to match
fewer parts, or parts beyond the count pass unnoticed; the token reassembled from
them is wrong, and Step Functions answers `InvalidToken` or `TaskDoesNotExist` to
its callback
(https://docs.aws.amazon.com/step-functions/latest/apireference/API_SendTaskSuccess.html).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from statemachine.models import (
    STRIPE_METADATA_KEY_MAX_CHARS,
    STRIPE_METADATA_MAX_KEYS,
    STRIPE_METADATA_VALUE_MAX_CHARS,
)

MAX_TOKEN_CHARS: Final = (
    2048  # https://docs.aws.amazon.com/step-functions/latest/apireference/API_SendTaskSuccess.html
)
CHUNK_CHARS: Final = STRIPE_METADATA_VALUE_MAX_CHARS
MAX_TOKEN_KEYS: Final = -(-MAX_TOKEN_CHARS // CHUNK_CHARS)
PARTS_KEY: Final = "paystep_token_parts"
CHUNK_KEY_PREFIX: Final = "paystep_token_"

assert len(f"{CHUNK_KEY_PREFIX}{MAX_TOKEN_KEYS - 1}") <= STRIPE_METADATA_KEY_MAX_CHARS
assert len(PARTS_KEY) <= STRIPE_METADATA_KEY_MAX_CHARS


class TokenCodecError(ValueError):
    """The token cannot be stored in, or read back from, the metadata."""


def encode_token(token: str, metadata: Mapping[str, str] | None = None) -> dict[str, str]:
    """`metadata` plus the token split over chunk keys; raises if it cannot fit."""
    if not token:
        raise TokenCodecError("task token is empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenCodecError(
            f"task token is {len(token)} characters, at most {MAX_TOKEN_CHARS} fit"
        )
    merged = dict(metadata or {})
    clashing = sorted(key for key in merged if key == PARTS_KEY or key.startswith(CHUNK_KEY_PREFIX))
    if clashing:
        raise TokenCodecError(f"metadata already uses the token keys {clashing}")
    chunks = [token[i : i + CHUNK_CHARS] for i in range(0, len(token), CHUNK_CHARS)]
    if len(merged) + len(chunks) + 1 > STRIPE_METADATA_MAX_KEYS:
        raise TokenCodecError(
            f"metadata has {len(merged)} keys; the token needs {len(chunks) + 1} more "
            f"and Stripe allows {STRIPE_METADATA_MAX_KEYS}"
        )
    for index, chunk in enumerate(chunks):
        merged[f"{CHUNK_KEY_PREFIX}{index}"] = chunk
    merged[PARTS_KEY] = str(len(chunks))
    return merged


def decode_token(metadata: Mapping[str, str] | None) -> str | None:
    """The token stored by `encode_token`, `None` when the metadata carries none.

    Raises `TokenCodecError` when the metadata carries a token that is incomplete.
    """
    if not metadata or PARTS_KEY not in metadata:
        return None
    raw_parts = metadata[PARTS_KEY]
    if not raw_parts.isdigit() or not 1 <= int(raw_parts) <= MAX_TOKEN_KEYS:
        raise TokenCodecError(f"{PARTS_KEY} is {raw_parts[:10]!r}, expected 1-{MAX_TOKEN_KEYS}")
    chunks = []
    for index in range(int(raw_parts)):
        chunk = metadata.get(f"{CHUNK_KEY_PREFIX}{index}")
        if not chunk:
            raise TokenCodecError(f"token part {index} of {raw_parts} is missing")
        chunks.append(chunk)
    return "".join(chunks)
