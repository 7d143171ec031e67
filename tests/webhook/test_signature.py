"""Signature checks on their own: one error per failure mode, with Stripe's own signing."""

from __future__ import annotations

import time

import pytest

from paystep_local.signing import signature_header
from webhook import signature

SECRET = "whsec_" + "c3" * 16
OTHER = "whsec_" + "d4" * 16
BODY = b'{"id": "evt_1", "object": "event"}'


def test_a_body_signed_with_the_secret_is_returned_as_text() -> None:
    assert signature.verify(BODY, signature_header(BODY, SECRET), [SECRET], 300) == BODY.decode()


def test_any_configured_secret_may_match() -> None:
    header = signature_header(BODY, SECRET)

    assert signature.verify(BODY, header, [OTHER, SECRET], 300) == BODY.decode()


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (None, signature.MissingSignature),
        ("", signature.MissingSignature),
        ("t=abc,v1=00", signature.MalformedSignatureHeader),
        ("v1=00", signature.MalformedSignatureHeader),
        pytest.param(
            f"t={int(time.time())}", signature.MalformedSignatureHeader, id="timestamp-only"
        ),
        pytest.param(
            f"t={int(time.time())},v0=00", signature.MalformedSignatureHeader, id="v0-only"
        ),
    ],
)
def test_headers_that_cannot_be_checked_are_refused(
    header: str | None, error: type[signature.SignatureError]
) -> None:
    with pytest.raises(error):
        signature.verify(BODY, header, [SECRET], 300)


def test_another_secret_is_a_mismatch() -> None:
    with pytest.raises(signature.SignatureMismatch):
        signature.verify(BODY, signature_header(BODY, OTHER), [SECRET], 300)


def test_a_changed_body_is_a_mismatch() -> None:
    with pytest.raises(signature.SignatureMismatch):
        signature.verify(BODY + b" ", signature_header(BODY, SECRET), [SECRET], 300)


def test_an_old_signature_is_stale_even_when_genuine() -> None:
    header = signature_header(BODY, SECRET, int(time.time()) - 301)

    with pytest.raises(signature.StaleTimestamp):
        signature.verify(BODY, header, [SECRET], 300)


def test_a_replayed_old_signature_with_a_fresh_timestamp_is_a_mismatch() -> None:
    old = signature_header(BODY, SECRET, int(time.time()) - 3600)
    forged = f"t={int(time.time())}," + old.split(",", 1)[1]

    with pytest.raises(signature.SignatureMismatch):
        signature.verify(BODY, forged, [SECRET], 300)
