"""Sign webhook bodies exactly as Stripe does, with stripe-python's own helper.

`Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "t.body">`, one `v1`
per active secret during a rotation.
https://docs.stripe.com/webhooks#verify-manually
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import stripe


def body_of(event: Mapping[str, Any]) -> bytes:
    # Stripe sends pretty-printed JSON; the exact bytes are what gets signed.
    return json.dumps(event, indent=2).encode()


def signature_header(
    body: bytes | str, secrets: str | Sequence[str], timestamp: int | None = None
) -> str:
    """The header Stripe would send for `body`: one `v1=` per secret, as in a rotation."""
    text = body.decode() if isinstance(body, bytes) else body
    at = int(time.time()) if timestamp is None else timestamp
    names = [secrets] if isinstance(secrets, str) else list(secrets)
    signatures = [
        stripe.WebhookSignature.generate_signature_header(text, secret, timestamp=at).split(",")[1]
        for secret in names
    ]
    return ",".join([f"t={at}", *signatures])


def signed(
    event: Mapping[str, Any], secrets: str | Sequence[str], timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a delivery of `event`."""
    body = body_of(event)
    return body, {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": signature_header(body, secrets, timestamp),
    }
