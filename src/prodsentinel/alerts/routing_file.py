"""``PRODSENTINEL_ROUTING_FILE``: inhibit rules as code (SPEC §13), checked before any command runs.

The file is a YAML mapping shared by two domains: ``inhibit_rules`` (this module) and ``escalations``
(the notifications domain reads that section; its content is not looked at here). Any other
top-level key is an error (``lib.config_files.read_yaml_section``).

1. :func:`parse_routing_file` (no database): every ``inhibit_rules`` item through the API's body
   (``InhibitRuleIn``, its msgspec constraints) and the same matcher validation; the CLI runs it before
   any command, so a bad file is one line on stderr and exit code 2;
2. :func:`load_routing_file` (app start): the same parse, then the file's rules replace the rules
   loaded from the file before (``InhibitRuleService.load_file``: ids of unchanged rules are kept, so
   alerts they hold back stay held), in one transaction under an advisory lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import msgspec
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.alerts.inhibit_rules import InhibitRuleService, RoutingRuleItem, rule_spec
from prodsentinel.alerts.schemas import InhibitRuleIn
from prodsentinel.auth.services import ProjectService
from prodsentinel.lib.config_files import config_file_error, read_yaml_section
from prodsentinel.lib.database import session_scope
from prodsentinel.lib.errors import ValidationError
from prodsentinel.settings import Settings

__all__ = ("ROUTING_SECTIONS", "load_routing_file", "parse_routing_file")

logger = structlog.get_logger("prodsentinel.alerts")

_VARIABLE: Final = "PRODSENTINEL_ROUTING_FILE"
#: The routing file's top-level keys (``escalations`` belongs to the notifications domain).
ROUTING_SECTIONS: Final = ("inhibit_rules", "escalations")
_FIELDS: Final = frozenset({"project", *InhibitRuleIn.__struct_fields__})


class _ItemError(ValueError):
    pass


def _item(raw: Mapping[Any, Any]) -> RoutingRuleItem:
    unknown = sorted(str(key) for key in set(raw) - _FIELDS)
    if unknown:
        raise _ItemError(f"unknown field(s) {', '.join(unknown)}")
    project = raw.get("project", "default")
    if not isinstance(project, str) or not 0 < len(project.strip()) <= 100:
        raise _ItemError("project must be a string of 1 to 100 characters")
    body = {key: value for key, value in raw.items() if key != "project"}
    try:
        data = msgspec.convert(body, InhibitRuleIn)
    except msgspec.ValidationError as exc:
        raise _ItemError(str(exc)) from None
    try:
        spec = rule_spec(data)
    except ValidationError as exc:
        raise _ItemError(str(exc.detail).rstrip(".")) from None
    return RoutingRuleItem(project=project.strip(), spec=spec)


def parse_routing_file(path: Path) -> list[RoutingRuleItem]:
    """Read and validate the file's ``inhibit_rules`` without a database; any problem is one
    SettingsError line naming the variable, the file and the item."""
    items: list[RoutingRuleItem] = []
    raw_items = read_yaml_section(_VARIABLE, path, sections=ROUTING_SECTIONS, section="inhibit_rules")
    for index, raw in enumerate(raw_items):
        try:
            items.append(_item(raw))
        except _ItemError as exc:
            raise config_file_error(_VARIABLE, path, f"inhibit_rules item {index}: {exc}") from None
    return items


async def load_routing_file(session_maker: async_sessionmaker[AsyncSession], settings: Settings) -> int:
    """Load the routing file's inhibit rules at start (the file is parsed again: it may have changed
    since the CLI checked it). Returns the number of rules in the file."""
    if settings.routing_file is None:
        return 0
    path = settings.routing_file
    items = parse_routing_file(path)
    async with session_scope(session_maker) as session:
        async with ProjectService.new(session=session) as projects:
            resolved = [((await projects.get_or_create(item.project)).id, item) for item in items]
        added, removed = await InhibitRuleService(session=session).load_file(resolved)
    logger.info("inhibit_rules_loaded", file=str(path), count=len(items), added=added, removed=removed)
    return len(items)
