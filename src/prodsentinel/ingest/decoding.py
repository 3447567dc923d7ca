"""Ingest body handling: read with a limit, gunzip with a limit, decode JSON / array / NDJSON in one pass.

Hand-written rather than Litestar's ``data:`` parameter because Litestar decodes the body untyped and then
converts it leniently (two passes, ``"7"`` accepted as 7; STACK_FACTS §7). Here the raw bytes go straight
into a cached strict ``msgspec.json.Decoder`` for the item type, and every failure maps to the SPEC §3
error body: 400 malformed, 413 too large / too many, 415 unsupported type or encoding, 422 invalid item
(with the item index and the field path inside the item).

Nesting: msgspec decodes recursively and raises ``RecursionError`` once a body nests deeper than the
interpreter's recursion budget (about 950 levels, depending on the stack at the call). Such a body is
refused whole as a 400, like any text the parser cannot take (RFC 8259 §9 lets a parser limit depth):
msgspec cannot tell where in it the depth ran out, so neither can we. Depth that *does* decode is
bounded per item where it is stored (``attributes``: ``ingest.services.MAX_ATTRIBUTE_DEPTH``).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import msgspec

from prodsentinel.lib.errors import (
    BadRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    ValidationError,
    not_utf8,
)

__all__ = (
    "TOO_DEEP",
    "BodyFormat",
    "ItemError",
    "body_format",
    "decode_items",
    "decompress",
    "invalid_items",
    "read_body",
)

T = TypeVar("T")
BodyFormat = Literal["json", "ndjson"]

_JSON_TYPES = frozenset({"", "application/json", "text/json"})
_NDJSON_TYPES = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)
_GZIP = frozenset({"gzip", "x-gzip"})
_IDENTITY = frozenset({"", "identity"})
_MSGSPEC_ERROR = re.compile(r"^(?P<message>.*) - at `(?P<path>\$[^`]*)`$", re.DOTALL)
_MISSING_FIELD = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_INDEX_PREFIX = re.compile(r"^\$\[(?P<index>\d+)\]")
_WHITESPACE = b" \t\r\n"
TOO_DEEP = "The JSON body nests arrays and objects too deeply to be decoded; nothing was stored."


@dataclass(frozen=True, slots=True)
class ItemError:
    """One invalid item: ``index`` in the batch, ``path`` inside the item (``$.field``)."""

    index: int
    path: str
    message: str


def invalid_items(errors: list[ItemError]) -> ValidationError:
    """The atomic-batch 422: nothing is stored, every known problem is listed."""
    first = errors[0]
    return ValidationError(
        f"Invalid item at index {first.index} ({first.path}: {first.message}); nothing was stored.",
        extra={"errors": [{"index": e.index, "path": e.path, "message": e.message} for e in errors]},
    )


async def read_body(chunks: AsyncIterator[bytes], *, limit: int, content_length: int | None) -> bytes:
    """The raw body, refused with 413 as soon as it exceeds ``limit`` (never buffered beyond it)."""
    if content_length is not None and content_length > limit:
        raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def decompress(body: bytes, content_encoding: str, *, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip, possibly multi-member) without inflating more than ``limit`` bytes.

    A gzip bomb stops at ``limit + 1`` output bytes and becomes a 413; a corrupt stream is a 400.
    """
    encoding = content_encoding.strip().lower()
    if encoding in _IDENTITY:
        return body
    if encoding not in _GZIP:
        raise UnsupportedMediaTypeError(
            f"Unsupported Content-Encoding {content_encoding!r}: send gzip or no encoding."
        )
    out: list[bytes] = []
    produced = 0
    data = body
    while data:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            chunk = inflater.decompress(data, limit + 1 - produced)
        except zlib.error:
            raise BadRequestError("The body is not valid gzip.") from None
        produced += len(chunk)
        out.append(chunk)
        if produced > limit or inflater.unconsumed_tail:
            raise _too_large(limit)
        if not inflater.eof:
            raise BadRequestError("The gzip body is truncated.")
        data = inflater.unused_data.lstrip(b"\x00")  # members may be followed by zero padding
    return b"".join(out)


def body_format(content_type: str) -> BodyFormat:
    """JSON (one object or an array) or NDJSON, from ``Content-Type``; anything else is a 415."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in _JSON_TYPES or media_type.endswith("+json"):
        return "json"
    if media_type in _NDJSON_TYPES:
        return "ndjson"
    raise UnsupportedMediaTypeError(
        f"Unsupported Content-Type {content_type!r}: send application/json or application/x-ndjson."
    )


class _Decoders:
    """One strict decoder per (item type, shape), built once: decoder construction is not free."""

    def __init__(self) -> None:
        self._one: dict[type, msgspec.json.Decoder[Any]] = {}
        self._many: dict[type, msgspec.json.Decoder[Any]] = {}

    def one(self, item_type: type[T]) -> msgspec.json.Decoder[T]:
        decoder = self._one.get(item_type)
        if decoder is None:
            decoder = self._one[item_type] = msgspec.json.Decoder(item_type)
        return decoder

    def many(self, item_type: type[T]) -> msgspec.json.Decoder[list[T]]:
        decoder = self._many.get(item_type)
        if decoder is None:
            decoder = self._many[item_type] = msgspec.json.Decoder(list[item_type])  # type: ignore[valid-type]
        return decoder


_decoders = _Decoders()


def decode_items(body: bytes, fmt: BodyFormat, item_type: type[T], *, max_items: int) -> list[T]:
    """Decode every item of the body into ``item_type`` (strict, one pass) or raise the mapped error."""
    try:
        if fmt == "ndjson":
            return _decode_ndjson(body, item_type, max_items=max_items)
        return _decode_json(body, item_type, max_items=max_items)
    except UnicodeDecodeError as exc:  # msgspec's answer to non-UTF-8 bytes inside a string
        raise not_utf8(exc) from None
    except RecursionError:  # from the decode or from a re-parse on the error path (module docstring)
        raise BadRequestError(TOO_DEEP) from None


def _decode_json(body: bytes, item_type: type[T], *, max_items: int) -> list[T]:
    stripped = body.lstrip(_WHITESPACE)
    if not stripped:
        raise BadRequestError("The body is empty: send a JSON object, a JSON array or NDJSON.")
    if stripped[:1] == b"[":
        try:
            items = _decoders.many(item_type).decode(body)
        except msgspec.ValidationError as exc:
            _raise_if_malformed_or_too_many(body, max_items)
            raise invalid_items([_item_error(str(exc), array=True)]) from None
        except msgspec.DecodeError as exc:
            raise BadRequestError(f"Malformed JSON: {exc}.") from None
        if len(items) > max_items:
            raise _too_many(max_items)
        return items
    try:
        return [_decoders.one(item_type).decode(body)]
    except msgspec.ValidationError as exc:
        _raise_if_malformed(body)
        raise invalid_items([_item_error(str(exc), array=False)]) from None
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"Malformed JSON: {exc}.") from None


def _decode_ndjson(body: bytes, item_type: type[T], *, max_items: int) -> list[T]:
    lines = [line for line in body.split(b"\n") if line.strip(_WHITESPACE)]
    if len(lines) > max_items:
        raise _too_many(max_items)
    decoder = _decoders.one(item_type)
    items: list[T] = []
    for index, line in enumerate(lines):
        try:
            items.append(decoder.decode(line))
        except msgspec.ValidationError as exc:
            # Malformed JSON on this or any later line is a 400, whatever came first (SPEC §4).
            for later, rest in enumerate(lines[index:], start=index):
                _raise_if_malformed(rest, f" on NDJSON line {later} (non-empty lines)")
            error = _item_error(str(exc), array=False)
            raise invalid_items([ItemError(index, error.path, error.message)]) from None
        except msgspec.DecodeError as exc:
            raise BadRequestError(
                f"Malformed JSON on NDJSON line {index} (non-empty lines): {exc}."
            ) from None
    return items


def _raise_if_malformed(body: bytes, where: str = "") -> None:
    """On the error path only: msgspec stops at the first invalid item, which may precede a syntax error
    or a non-UTF-8 string later in the body; malformed JSON anywhere must still be a 400, not a 422."""
    try:
        msgspec.json.decode(body, type=msgspec.Raw)
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"Malformed JSON{where}: {exc}.") from None
    _require_utf8(body)


def _raise_if_malformed_or_too_many(body: bytes, max_items: int) -> None:
    """The array's error path: a 400 if malformed, else a 413 if too long (counted without decoding the
    items, so the hot path keeps its single pass), before an invalid item's 422."""
    try:
        count = len(msgspec.json.decode(body, type=list[msgspec.Raw]))
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"Malformed JSON: {exc}.") from None
    _require_utf8(body)
    if count > max_items:
        raise _too_many(max_items)


def _require_utf8(body: bytes) -> None:
    """``msgspec.Raw`` does not look inside strings, where msgspec checks UTF-8 only when decoding them."""
    try:
        body.decode()
    except UnicodeDecodeError as exc:
        raise not_utf8(exc) from None


def _item_error(text: str, *, array: bool) -> ItemError:
    """Split msgspec's ``"<message> - at `$[3].field`"`` into index 3 and path ``$.field``."""
    match = _MSGSPEC_ERROR.match(text)
    message, path = (match.group("message"), match.group("path")) if match else (text, "$")
    index = 0
    if array:
        prefix = _INDEX_PREFIX.match(path)
        if prefix is None:  # the top level itself is wrong (cannot happen for a "[" body, kept total)
            return ItemError(0, "$", message)
        index = int(prefix.group("index"))
        path = "$" + path[prefix.end() :]
    missing = _MISSING_FIELD.match(message)
    if missing:
        path = f"{path}.{missing.group('field')}"
        message = "Field is required"
    return ItemError(index, path, message)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"The body exceeds {limit} bytes (after decompression).")


def _too_many(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"The batch has more than {limit} items.")
