"""Error-message templates and incident fingerprints (pure, no I/O).

Every ERROR/CRITICAL log and ERROR span is grouped into an incident by
``fingerprint(service, template)``. The template must be stable across
occurrences of "the same" error, so everything that varies per request is
replaced by a placeholder. The passes run in a fixed order because earlier
patterns are more specific than later ones (a UUID is also a run of hex
digits, an IP is also four numbers, a timestamp is also a few numbers):

1. quoted values ``'...'``, ``"..."``, `` `...` `` -> ``<str>`` (an apostrophe
   inside a word, as in ``can't``, is not a quote);
2. URLs -> ``scheme://host[:port]``: user info, path, query and fragment are
   dropped. Paths carry ids and slugs that would split one failing dependency
   into thousands of incidents; the host is what identifies the dependency.
   An IP-literal host then becomes ``<ip>`` and a port ``<num>`` in later passes;
3. UUIDs -> ``<uuid>``;
4. ISO-8601 dates/timestamps and bare ``HH:MM:SS`` times -> ``<ts>``;
5. e-mail addresses -> ``<email>``;
6. IPv6 (bracketed or bare, needs a digit and ``::`` or eight groups) and
   IPv4, each with an optional ``:port`` -> ``<ip>``;
7. Kubernetes pod-name suffixes (``api-7d9f8b6c5d-x2x4z``) -> ``api-<id>``;
8. hex: ``0x...`` or a run of >= 8 hex digits holding at least one digit
   *and* one letter -> ``<hex>`` (an all-digit run is a number, and a
   hex-only word such as ``deadbeef`` without digits is left alone);
9. random-looking tokens -> ``<id>``: an alphanumeric run of >= 10 chars with
   a digit whose character class (lower/upper/digit) changes at least every
   third character (``NffrFeUfNV2Hib``, ``8f3kd92jd0a``), which keeps
   CamelCase names such as ``Http2ServerConnection`` intact;
10. numbers (ints, decimals, exponents) not glued to a preceding letter or
    digit -> ``<num>``; a trailing unit survives (``500ms`` -> ``<num>ms``),
    ``_`` counts as a separator (``worker_3`` -> ``worker_<num>``) but a
    letter does not (``sha256``, ``v2`` and ``http2`` stay);
11. whitespace collapsed, the result capped at ``MAX_TEMPLATE_LENGTH``.

Span names go through ``message_template`` as well (``GET /users/42``).
"""

from __future__ import annotations

import hashlib
import itertools
import re

__all__ = [
    "MAX_TEMPLATE_LENGTH",
    "MAX_TITLE_LENGTH",
    "fingerprint",
    "incident_title",
    "message_template",
]

MAX_TEMPLATE_LENGTH = 500
MAX_TITLE_LENGTH = 200
# Messages can carry whole tracebacks or payloads; only the head matters for
# grouping, and bounding the input bounds the regex work per message.
_MAX_INPUT_LENGTH = 8192

_QUOTED = re.compile(
    r"""(?<![\w'"`])'(?:[^'\\\n]|\\.)*'(?!\w)"""
    r"""|(?<![\w"])"(?:[^"\\\n]|\\.)*\""""
    r"""|`[^`\n]*`"""
)
_URL = re.compile(
    r"\b(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]{1,15})://"
    r"(?:[^\s/?#@<>]*@)?"  # user info: dropped (may hold credentials)
    r"(?P<host>\[[0-9a-fA-F:.%\w]+\](?::\d+)?|[^\s/?#<>,;:)\]]+(?::(?:\d{1,5}|<num>))?)"
    r"(?P<rest>[/?#][^\s<>]*)?"
)
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_TIMESTAMP = re.compile(
    r"\b\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:\s?(?:Z|[+-]\d{2}:?\d{2})\b|Z)?)?"
    r"|(?<![\w:.])\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?(?![\w:])"
)
_EMAIL = re.compile(r"\b[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IPV6_BRACKETED = re.compile(r"\[[0-9a-fA-F:.]*:[0-9a-fA-F:.]*(?:%\w+)?\](?::\d{1,5})?")
_IPV6 = re.compile(
    r"(?<![\w:.])"
    r"(?=[0-9a-fA-F:.]*\d)"  # at least one digit: rules out words like cafe::add
    r"(?=[0-9a-fA-F:.]*::|(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4})"
    r"(?:(?:[0-9a-fA-F]{0,4}:){1,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9a-fA-F]{1,4})|(?:[0-9a-fA-F]{1,4}:){1,7}:)"
    r"(?:%\w+)?"
    r"(?!\w)(?!:[0-9a-fA-F])"
)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?(?![\w.]*\d)")
# ReplicaSet pod names: <deployment>-<pod-template-hash>-<5 char suffix>, both from
# Kubernetes' vowel-free "safe" alphabet, so ordinary words rarely match.
_K8S_POD_SUFFIX = re.compile(
    r"(?<=[a-z0-9])-[bcdfghjklmnpqrstvwxz2456789]{6,10}-[bcdfghjklmnpqrstvwxz2456789]{5}(?![A-Za-z0-9])"
)
_HEX_PREFIXED = re.compile(r"\b0[xX][0-9a-fA-F]+\b")
_HEX_RUN = re.compile(
    r"(?<![A-Za-z0-9])(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}(?![A-Za-z0-9])"
)
_TOKEN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9]{10,}(?![A-Za-z0-9])")
_NUMBER = re.compile(r"(?<![A-Za-z0-9])\d+(?:\.\d+)?(?:[eE][-+]?\d+(?![A-Za-z]))?")
_WHITESPACE = re.compile(r"\s+")


def _url(match: re.Match[str]) -> str:
    host = match.group("host").rstrip(".")
    return f"{match.group('scheme').lower()}://{host}"


def _char_class(char: str) -> int:
    if char.isdigit():
        return 0
    return 1 if char.islower() else 2


def _random_token(match: re.Match[str]) -> str:
    token = match.group(0)
    if not any(c.isdigit() for c in token) or token.isdigit():
        return token
    changes = sum(1 for a, b in itertools.pairwise(token) if _char_class(a) != _char_class(b))
    # Random base62/base36 ids switch class roughly every other character;
    # identifiers and words (CamelCase, "Base64Encoder") switch rarely.
    return "<id>" if changes * 3 >= len(token) else token


def message_template(message: str) -> str:
    """Reduce ``message`` to the template that identifies its kind of error."""
    text = message[:_MAX_INPUT_LENGTH]
    text = _QUOTED.sub("<str>", text)
    text = _URL.sub(_url, text)
    text = _UUID.sub("<uuid>", text)
    text = _TIMESTAMP.sub("<ts>", text)
    text = _EMAIL.sub("<email>", text)
    text = _IPV6_BRACKETED.sub("<ip>", text)
    text = _IPV6.sub("<ip>", text)
    text = _IPV4.sub("<ip>", text)
    text = _K8S_POD_SUFFIX.sub("-<id>", text)
    text = _HEX_PREFIXED.sub("<hex>", text)
    text = _HEX_RUN.sub("<hex>", text)
    text = _TOKEN.sub(_random_token, text)
    text = _NUMBER.sub("<num>", text)
    text = _WHITESPACE.sub(" ", text).strip()
    return text[:MAX_TEMPLATE_LENGTH]


def fingerprint(service_name: str, template: str) -> str:
    """Stable 32-char hex key grouping occurrences into one incident.

    The unit separator keeps ``("a", "b c")`` and ``("a b", "c")`` apart.
    BLAKE2b-128 is not for security here, only a short collision-free id.
    """
    payload = f"{service_name}\x1f{template}".encode()
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def incident_title(service_name: str, template: str) -> str:
    """Human title ``"<service>: <template>"``, shortened with an ellipsis."""
    title = f"{service_name}: {template or '(empty message)'}"
    if len(title) > MAX_TITLE_LENGTH:
        title = title[: MAX_TITLE_LENGTH - 1].rstrip() + "…"
    return title
