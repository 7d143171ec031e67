"""Verify `Stripe-Signature` on the raw body, before anything else reads it.

Stripe signs `"{t}.{body}"` with HMAC-SHA256 under the endpoint's secret; during
a secret rotation it sends one `v1=` signature per active secret, and we accept
the body when any configured secret matches any of them. The checks are
stripe-python's own; this module only adds one exception per failure mode so
that each is counted and answered alike.
https://docs.stripe.com/webhooks#verify-events
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import stripe


class SignatureError(Exception):
    """The request is not a fresh event signed by Stripe with one of our secrets."""

    reason: ClassVar[str] = "invalid"


class MissingSignature(SignatureError):
    reason = "missing_header"


class MalformedSignatureHeader(SignatureError):
    reason = "malformed_header"


class SignatureMismatch(SignatureError):
    reason = "mismatch"


class StaleTimestamp(SignatureError):
    reason = "stale_timestamp"


class NotUtf8(SignatureError):
    reason = "not_utf8"


def verify(body: bytes, header: str | None, secrets: Sequence[str], tolerance_s: int) -> str:
    """The body as text once its signature checks out; raises a `SignatureError`."""
    if not header:
        raise MissingSignature("no Stripe-Signature header")
    if not _well_formed(header):
        raise MalformedSignatureHeader("Stripe-Signature needs t=<int> and v1=<hex>")
    try:
        # Stripe signs the text of the body: decode once, not once per secret.
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotUtf8("body is not UTF-8") from exc
    matching = next((s for s in secrets if _signed_with(text, header, s)), None)
    if matching is None:
        raise SignatureMismatch("no signature matches a configured secret")
    # The signature is authentic, so the only check left to fail is the age of `t`.
    try:
        stripe.WebhookSignature.verify_header(text, header, matching, tolerance_s)
    except stripe.SignatureVerificationError as exc:
        raise StaleTimestamp(f"signed more than {tolerance_s} s ago") from exc
    return text


def _signed_with(text: str, header: str, secret: str) -> bool:
    try:
        stripe.WebhookSignature.verify_header(text, header, secret, None)
    except stripe.SignatureVerificationError:
        return False
    return True


def _well_formed(header: str) -> bool:
    if not header.isascii():
        # Stripe's header is digits and hex. hmac.compare_digest raises TypeError on any
        # other character rather than answering "no match".
        return False
    has_timestamp = has_v1 = False
    for item in header.split(","):
        key, _, value = item.partition("=")
        if key == "t":
            has_timestamp = value.isdigit()
        elif key == "v1" and value:
            has_v1 = True
    return has_timestamp and has_v1
