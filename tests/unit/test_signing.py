"""Webhook signatures: what a receiver checks (``core.signing``)."""

from __future__ import annotations

import hashlib
import hmac

from superollama.core.signing import sign, signature_header, verify_signature

SECRET = "whsec_0123456789abcdef"
BODY = b'{"id":"evt_1","type":"model.pull"}'


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, BODY) == expected
    assert signature_header(SECRET, BODY, 1700000000) == f"t=1700000000,v1={expected}"


def test_a_receiver_accepts_only_the_right_secret_body_and_a_fresh_time() -> None:
    header = signature_header(SECRET, BODY, 1700000000)
    assert verify_signature(SECRET, BODY, header, now=1700000000 + 299)
    assert not verify_signature(SECRET, BODY, header, now=1700000000 + 301)  # a replay, later
    assert not verify_signature(SECRET, BODY, header, now=1700000000 - 301)
    assert not verify_signature("whsec_another-secret", BODY, header, now=1700000000)
    assert not verify_signature(SECRET, BODY + b"\n", header, now=1700000000)
    rotated = f"{header},v1={sign('whsec_the-old-secret', 1700000000, BODY)}"  # several v1: any may match
    assert verify_signature(SECRET, BODY, rotated, now=1700000000)


def test_malformed_headers_are_refused_not_raised() -> None:
    for header in ("", "v1=abc", "t=soon,v1=abc", "t=1700000000", "garbage"):
        assert not verify_signature(SECRET, BODY, header, now=1700000000)
