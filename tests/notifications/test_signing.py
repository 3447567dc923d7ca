from __future__ import annotations

import hashlib
import hmac
import uuid

import pytest

from prodsentinel.notifications.signing import (
    SIGNATURE_HEADER,
    delivery_headers,
    signature,
    verify,
)

SECRET = "whsec_test_secret"
TS = 1714566896
BODY = b'{"event_type":"ALERT_FIRING","labels":{"service":"api"}}'


def reference(secret: str, ts: int, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), str(ts).encode() + b"." + body, hashlib.sha256).hexdigest()


class TestSignature:
    def test_matches_independent_hmac(self) -> None:
        assert signature(SECRET, TS, BODY) == reference(SECRET, TS, BODY)

    def test_fixed_vector(self) -> None:
        # HMAC-SHA256(key="key", msg="1.") as computed by `printf 1. | openssl dgst -sha256 -hmac key`
        assert signature("key", 1, b"") == "sha256=" + hmac.new(b"key", b"1.", hashlib.sha256).hexdigest()
        assert signature("key", 1, b"") == (
            "sha256=53123bc365c2fe4bee48bc5cc6cd6c19699147d43513154ed34277c7c063e80f"
        )

    def test_shape(self) -> None:
        value = signature(SECRET, TS, BODY)
        assert value.startswith("sha256=")
        assert len(value) == len("sha256=") + 64

    @pytest.mark.parametrize(
        ("secret", "ts", "body"),
        [("other", TS, BODY), (SECRET, TS + 1, BODY), (SECRET, TS, BODY + b" ")],
    )
    def test_any_change_changes_signature(self, secret: str, ts: int, body: bytes) -> None:
        assert signature(secret, ts, body) != signature(SECRET, TS, BODY)

    def test_unicode_secret(self) -> None:
        assert signature("clé-секрет", TS, BODY) == reference("clé-секрет", TS, BODY)


class TestDeliveryHeaders:
    def test_with_secret(self) -> None:
        delivery_id = uuid.UUID("0b6e3c8a-1f2d-4e5f-9a8b-7c6d5e4f3a2b")
        headers = delivery_headers(
            delivery_id=delivery_id, event_id="evt-1", timestamp=TS, body=BODY, secret=SECRET
        )
        assert headers == {
            "Content-Type": "application/json",
            "X-ProdSentinel-Delivery-Id": "0b6e3c8a-1f2d-4e5f-9a8b-7c6d5e4f3a2b",
            "X-ProdSentinel-Event-Id": "evt-1",
            "X-ProdSentinel-Timestamp": str(TS),
            "X-ProdSentinel-Signature": reference(SECRET, TS, BODY),
        }

    @pytest.mark.parametrize("secret", [None, ""])
    def test_without_secret_no_signature(self, secret: str | None) -> None:
        headers = delivery_headers(delivery_id="d", event_id="e", timestamp=TS, body=BODY, secret=secret)
        assert SIGNATURE_HEADER not in headers
        assert set(headers) == {
            "Content-Type",
            "X-ProdSentinel-Delivery-Id",
            "X-ProdSentinel-Event-Id",
            "X-ProdSentinel-Timestamp",
        }

    def test_all_values_are_strings(self) -> None:
        headers = delivery_headers(
            delivery_id=uuid.uuid4(), event_id=uuid.uuid4(), timestamp=TS, body=BODY, secret=SECRET
        )
        assert all(isinstance(v, str) for v in headers.values())

    def test_round_trip_with_verify(self) -> None:
        headers = delivery_headers(delivery_id="d", event_id="e", timestamp=TS, body=BODY, secret=SECRET)
        assert verify(SECRET, headers["X-ProdSentinel-Timestamp"], BODY, headers[SIGNATURE_HEADER])


class TestVerify:
    def test_valid(self) -> None:
        assert verify(SECRET, TS, BODY, reference(SECRET, TS, BODY))

    def test_wrong_secret(self) -> None:
        assert not verify("nope", TS, BODY, reference(SECRET, TS, BODY))

    def test_tampered_body(self) -> None:
        assert not verify(SECRET, TS, BODY.replace(b"api", b"apj"), reference(SECRET, TS, BODY))

    def test_replayed_with_new_timestamp(self) -> None:
        assert not verify(SECRET, TS + 60, BODY, reference(SECRET, TS, BODY))

    @pytest.mark.parametrize("header", [None, "", "sha256=", "sha1=abc", "garbage"])
    def test_missing_or_malformed_header(self, header: str | None) -> None:
        assert not verify(SECRET, TS, BODY, header)

    def test_bare_hex_without_prefix_rejected(self) -> None:
        bare = reference(SECRET, TS, BODY).removeprefix("sha256=")
        assert not verify(SECRET, TS, BODY, bare)

    def test_bad_timestamp_string(self) -> None:
        assert not verify(SECRET, "soon", BODY, reference(SECRET, TS, BODY))

    def test_empty_secret_never_verifies(self) -> None:
        assert not verify("", TS, BODY, reference("", TS, BODY))

    def test_tolerance(self) -> None:
        sig = reference(SECRET, TS, BODY)
        assert verify(SECRET, TS, BODY, sig, now=TS + 300)
        assert verify(SECRET, TS, BODY, sig, now=TS - 300)
        assert not verify(SECRET, TS, BODY, sig, now=TS + 301)
        assert verify(SECRET, TS, BODY, sig, now=TS + 10, tolerance_seconds=10)
        assert not verify(SECRET, TS, BODY, sig, now=TS + 11, tolerance_seconds=10)
