"""The one base for every request and response body: snake_case, keyword-only msgspec structs."""

from __future__ import annotations

import msgspec

__all__ = ("Struct",)


class Struct(msgspec.Struct, kw_only=True, omit_defaults=False, forbid_unknown_fields=False):
    """Base struct for the wire format of the API (the SPEC's field names, unchanged)."""
