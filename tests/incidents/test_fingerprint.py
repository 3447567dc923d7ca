from __future__ import annotations

import random
import re

import pytest

from prodsentinel.incidents.fingerprint import (
    MAX_TEMPLATE_LENGTH,
    MAX_TITLE_LENGTH,
    fingerprint,
    incident_title,
    message_template,
)

REAL_WORLD: list[tuple[str, str]] = [
    # PostgreSQL / drivers
    (
        'duplicate key value violates unique constraint "users_email_key"',
        "duplicate key value violates unique constraint <str>",
    ),
    ("Key (email)=(bob@example.com) already exists.", "Key (email)=(<email>) already exists."),
    (
        'connection to server at "db.internal" (10.0.3.17), port 5432 failed: Connection refused',
        "connection to server at <str> (<ip>), port <num> failed: Connection refused",
    ),
    (
        'FATAL:  password authentication failed for user "app"',
        "FATAL: password authentication failed for user <str>",
    ),
    ("canceling statement due to statement timeout", "canceling statement due to statement timeout"),
    (
        "deadlock detected: Process 12345 waits for ShareLock on transaction 987654; "
        "blocked by process 12399.",
        "deadlock detected: Process <num> waits for ShareLock on transaction <num>; "
        "blocked by process <num>.",
    ),
    (
        "psycopg.errors.QueryCanceled: canceling statement due to lock timeout at 12:01:02",
        "psycopg.errors.QueryCanceled: canceling statement due to lock timeout at <ts>",
    ),
    # Python exceptions
    ("KeyError: 'user_id'", "KeyError: <str>"),
    (
        "ValueError: invalid literal for int() with base 10: 'abc'",
        "ValueError: invalid literal for int() with base <num>: <str>",
    ),
    (
        "TypeError: unsupported operand type(s) for +: 'int' and 'NoneType'",
        "TypeError: unsupported operand type(s) for +: <str> and <str>",
    ),
    (
        "AttributeError: 'NoneType' object has no attribute 'get'",
        "AttributeError: <str> object has no attribute <str>",
    ),
    (
        "Task exception was never retrieved: future: <Task finished name='Task-123' coro=<handler() done>",
        "Task exception was never retrieved: future: <Task finished name=<str> coro=<handler() done>",
    ),
    # HTTP clients
    ("httpx.ReadTimeout: timed out after 30.0s", "httpx.ReadTimeout: timed out after <num>s"),
    (
        "HTTPError 503 Service Unavailable for url: "
        "https://api.stripe.com/v1/charges/ch_3MtwBwLkdIwHu7ix28a3tqPa?expand=customer",
        "HTTPError <num> Service Unavailable for url: https://api.stripe.com",
    ),
    (
        "Client error '404 Not Found' for url 'https://api.github.com/repos/foo/bar'",
        "Client error <str> for url <str>",
    ),
    (
        "GET https://user:pw@payments.internal:8443/v2/orders/123 returned 502 in 1532ms",
        "GET https://payments.internal:<num> returned <num> in <num>ms",
    ),
    (
        "POST http://10.0.0.12:9000/hooks failed.",
        "POST http://<ip> failed.",
    ),
    (
        "upstream request timeout after 5000ms (request_id=req_8f3kd92jd0aX)",
        "upstream request timeout after <num>ms (request_id=req_<id>)",
    ),
    ("cus_NffrFeUfNV2Hib payment_intent requires_action", "cus_<id> payment_intent requires_action"),
    # JVM
    (
        "at com.example.orders.OrderService.process(OrderService.java:142)",
        "at com.example.orders.OrderService.process(OrderService.java:<num>)",
    ),
    (
        'java.lang.NullPointerException: Cannot invoke "String.length()" because "<local1>" is null',
        "java.lang.NullPointerException: Cannot invoke <str> because <str> is null",
    ),
    # Kubernetes
    (
        "Back-off restarting failed container api in pod "
        "api-7d9f8b6c5d-x2x4z_default(0b6e3c8a-1f2d-4e5f-9a8b-7c6d5e4f3a2b)",
        "Back-off restarting failed container api in pod api-<id>_default(<uuid>)",
    ),
    (
        "0/3 nodes are available: 3 Insufficient memory.",
        "<num>/<num> nodes are available: <num> Insufficient memory.",
    ),
    (
        'Liveness probe failed: Get "http://10.244.1.23:8080/healthz": context deadline exceeded',
        "Liveness probe failed: Get <str>: context deadline exceeded",
    ),
    (
        "OOMKilled: container exceeded memory limit 512Mi",
        "OOMKilled: container exceeded memory limit <num>Mi",
    ),
    ("worker_3 crashed with exit code 137", "worker_<num> crashed with exit code <num>"),
    # Go / Node networking
    ("dial tcp 172.17.0.2:5432: i/o timeout", "dial tcp <ip>: i/o timeout"),
    ("dial tcp 2001:db8::1:443: connect: no route to host", "dial tcp <ip>: connect: no route to host"),
    (
        "Redis connection to [::1]:6379 failed - connect ECONNREFUSED",
        "Redis connection to <ip> failed - connect ECONNREFUSED",
    ),
    ("listen on fe80::1%eth0 failed", "listen on <ip> failed"),
    (
        "panic: runtime error: index out of range [5] with length 3",
        "panic: runtime error: index out of range [<num>] with length <num>",
    ),
    # ids, timestamps, hex
    ("user 48213 not found", "user <num> not found"),
    (
        "Order 7c9e6679-7425-40de-944b-e07fc1f90ae7 failed at 2024-05-01T12:34:56.789Z",
        "Order <uuid> failed at <ts>",
    ),
    ("batch for 2024-05-01 failed at 2024-05-02 03:00:00+02:00", "batch for <ts> failed at <ts>"),
    ("Segmentation fault at address 0x7ffd5e8c9a10", "Segmentation fault at address <hex>"),
    ("trace 4bf92f3577b34da6a3ce929d0e0e4736 span 00f067aa0ba902b7 failed", "trace <hex> span <hex> failed"),
    (
        "Rate limit exceeded for user alice@example.org: 120 requests in 60 s",
        "Rate limit exceeded for user <email>: <num> requests in <num> s",
    ),
    ("JWT expired at 1714566896, now 1714570000", "JWT expired at <num>, now <num>"),
    ("Disk usage 93.5% on /dev/sda1 exceeds 90%", "Disk usage <num>% on /dev/sda1 exceeds <num>%"),
    ("float overflow: 1.5e308 * 10", "float overflow: <num> * <num>"),
    # things that must survive
    (
        "Http2ServerConnection reset by peer after 3 retries, sha256 mismatch on v2 api",
        "Http2ServerConnection reset by peer after <num> retries, sha256 mismatch on v2 api",
    ),
    ("can't connect to 'db-primary' (it's down)", "can't connect to <str> (it's down)"),
    ("std::vector and Foo::bar and cafe::add failed", "std::vector and Foo::bar and cafe::add failed"),
    ("Base64Encoder rejected input", "Base64Encoder rejected input"),
]


@pytest.mark.parametrize(("message", "expected"), REAL_WORLD, ids=[m[:40] for m, _ in REAL_WORLD])
def test_real_world_templates(message: str, expected: str) -> None:
    assert message_template(message) == expected


def test_table_is_large_enough() -> None:
    assert len(REAL_WORLD) >= 30


class TestPasses:
    def test_uuid_wins_over_hex_and_num(self) -> None:
        assert message_template("id=123e4567-e89b-12d3-a456-426614174000") == "id=<uuid>"

    def test_upper_case_uuid(self) -> None:
        assert message_template("ID 123E4567-E89B-12D3-A456-426614174000 gone") == "ID <uuid> gone"

    def test_all_digit_run_is_a_number_not_hex(self) -> None:
        assert message_template("allocated 12345678 bytes") == "allocated <num> bytes"

    def test_hex_without_digit_is_a_word(self) -> None:
        assert message_template("deadbeef accessed") == "deadbeef accessed"

    def test_hex_needs_eight_chars(self) -> None:
        assert message_template("code a1b2c3 failed") == "code a1b2c3 failed"

    def test_prefixed_hex(self) -> None:
        assert message_template("exit 0xC0000005") == "exit <hex>"

    def test_double_quotes_with_escapes(self) -> None:
        assert message_template(r'bad value "a \"quoted\" word" here') == "bad value <str> here"

    def test_backticks(self) -> None:
        assert message_template("column `orders.total` is null") == "column <str> is null"

    def test_apostrophe_in_word_is_not_a_quote(self) -> None:
        assert message_template("user's cart isn't valid") == "user's cart isn't valid"

    def test_url_user_info_is_dropped(self) -> None:
        template = message_template("fetch postgres://admin:s3cret@db:5432/app failed")
        assert "s3cret" not in template
        assert template == "fetch postgres://db:<num> failed"

    def test_url_scheme_lower_cased_and_trailing_dot_kept_outside(self) -> None:
        assert message_template("see HTTPS://Example.com.") == "see https://Example.com"

    def test_ipv4_with_port(self) -> None:
        assert message_template("peer 192.168.1.10:443 reset") == "peer <ip> reset"

    def test_ipv4_mapped_ipv6(self) -> None:
        assert message_template("blocked ::ffff:10.0.0.1 now") == "blocked <ip> now"

    def test_full_ipv6(self) -> None:
        assert message_template("at 2001:0db8:85a3:0000:0000:8a2e:0370:7334 ok") == "at <ip> ok"

    def test_timestamp_with_comma_fraction(self) -> None:
        assert message_template("at 2024-01-02 03:04:05,678 boom") == "at <ts> boom"

    def test_units_survive(self) -> None:
        assert message_template("took 1.5s, limit 500ms, 10GiB") == "took <num>s, limit <num>ms, <num>GiB"

    def test_whitespace_collapsed(self) -> None:
        assert message_template("  a\n\tb   c \r\n") == "a b c"

    def test_length_is_capped(self) -> None:
        template = message_template("word " * 1000)
        assert len(template) == MAX_TEMPLATE_LENGTH

    def test_huge_input_is_fast_and_bounded(self) -> None:
        template = message_template("x" * 5_000_000)
        assert len(template) <= MAX_TEMPLATE_LENGTH

    def test_empty(self) -> None:
        assert message_template("") == ""

    def test_idempotent_on_table(self) -> None:
        for _, expected in REAL_WORLD:
            assert message_template(expected) == expected


class TestFingerprint:
    def test_is_stable_hex(self) -> None:
        fp = fingerprint("api", "user <num> not found")
        assert re.fullmatch(r"[0-9a-f]{32}", fp)
        assert fp == fingerprint("api", "user <num> not found")

    def test_known_value(self) -> None:
        import hashlib

        expected = hashlib.blake2b(b"api\x1fboom", digest_size=16).hexdigest()
        assert fingerprint("api", "boom") == expected

    def test_different_services_differ(self) -> None:
        template = message_template("user 1 not found")
        assert fingerprint("api", template) != fingerprint("billing", template)

    def test_separator_prevents_ambiguity(self) -> None:
        assert fingerprint("a", "b c") != fingerprint("a b", "c")

    def test_different_templates_differ(self) -> None:
        assert fingerprint("api", "a") != fingerprint("api", "b")


def _random_variant(rng: random.Random) -> str:
    uid = "%08x-%04x-4%03x-a%03x-%012x" % (  # noqa: UP031 - fixed-width hex
        rng.getrandbits(32),
        rng.getrandbits(16),
        rng.getrandbits(12),
        rng.getrandbits(12),
        rng.getrandbits(48),
    )
    ip = ".".join(str(rng.randint(0, 255)) for _ in range(4))
    return (
        f"request {uid} for user {rng.randint(1, 10**9)} from {ip}:{rng.randint(1, 65535)} "
        f"failed after {rng.uniform(0, 100):.3f}s at 2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T"
        f"1{rng.randint(0, 9)}:3{rng.randint(0, 9)}:00Z "
        f"trace={rng.getrandbits(128):032x} email=u{rng.randint(1, 999)}@example.com "
        f"key='{rng.random()}' code 0x{rng.getrandbits(32):x}"
    )


class TestGroupingProperties:
    def test_messages_differing_only_in_ids_share_a_fingerprint(self) -> None:
        rng = random.Random(1234)
        variants = [_random_variant(rng) for _ in range(200)]
        assert len(set(variants)) == 200
        prints = {fingerprint("checkout", message_template(v)) for v in variants}
        assert len(prints) == 1

    def test_expected_template_of_variant(self) -> None:
        variant = _random_variant(random.Random(7))
        assert message_template(variant) == (
            "request <uuid> for user <num> from <ip> failed after <num>s at <ts> "
            "trace=<hex> email=<email> key=<str> code <hex>"
        )

    def test_numbers_only_difference(self) -> None:
        a = message_template("timeout after 30s on shard 4 (attempt 2/5)")
        b = message_template("timeout after 120s on shard 17 (attempt 5/5)")
        assert a == b

    def test_different_error_kinds_do_not_merge(self) -> None:
        a = message_template("connection refused to 10.0.0.1:5432")
        b = message_template("connection reset by 10.0.0.1:5432")
        assert a != b


class TestIncidentTitle:
    def test_format(self) -> None:
        assert incident_title("api", "user <num> not found") == "api: user <num> not found"

    def test_empty_template(self) -> None:
        assert incident_title("api", "") == "api: (empty message)"

    def test_truncated_with_ellipsis(self) -> None:
        title = incident_title("api", "x" * 1000)
        assert len(title) == MAX_TITLE_LENGTH
        assert title.endswith("…")
