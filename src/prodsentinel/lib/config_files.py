"""The one YAML loader for the declarative config files (``PRODSENTINEL_POLICIES_FILE``,
``PRODSENTINEL_CHANNELS_FILE``, ``PRODSENTINEL_ROUTING_FILE``).

The first two are a YAML list of objects (or ``{<key>: [...]}``); the routing file is a mapping of
named sections, each a list of objects. All are read at start before any command runs.
Every problem is one :class:`SettingsError` line naming the variable, the file and, from the domain's
own item parser, the item index: the CLI prints it and exits 2, no traceback (SPEC §2).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from prodsentinel.settings import SettingsError

__all__ = ("config_file_error", "read_yaml_list", "read_yaml_section")


def config_file_error(variable: str, path: Path, reason: str) -> SettingsError:
    """The one-line start-up error for a config file: ``invalid configuration: VAR='path': reason``."""
    return SettingsError(f"invalid configuration: {variable}={str(path)!r}: {reason}")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The parser's problem and where it is, e.g. "expected ',' or ']' ... (line 2, column 1)"."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem and exc.problem_mark:
        return f"{exc.problem} (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})"
    return str(exc).splitlines()[0]


def _load(variable: str, path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise config_file_error(variable, path, f"cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise config_file_error(variable, path, "not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise config_file_error(variable, path, f"not valid YAML: {_yaml_problem(exc)}") from None


def read_yaml_section(
    variable: str, path: Path, *, sections: Sequence[str], section: str
) -> list[dict[str, Any]]:
    """The items of ``section`` in a YAML mapping whose keys must all be among ``sections``.

    The file is shared by domains (the routing file: ``inhibit_rules`` for alerts, ``escalations`` for
    notifications): each reads its own section and ignores the others' content, but any top-level key
    outside ``sections`` is an error naming it, so a typo never passes silently. An empty file, or an
    absent or null section, is an empty list.
    """
    loaded = _load(variable, path)
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise config_file_error(
            variable, path, f"expected a YAML mapping with the keys {', '.join(sections)}"
        )
    unknown = sorted(str(key) for key in loaded if key not in sections)
    if unknown:
        reason = f"unknown top-level key(s) {', '.join(unknown)}; expected {', '.join(sections)}"
        raise config_file_error(variable, path, reason)
    items = loaded.get(section) or []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise config_file_error(variable, path, f"{section}: expected a YAML list of objects")
    return items


def read_yaml_list(variable: str, path: Path, *, key: str, what: str) -> list[dict[str, Any]]:
    """The file's items: a YAML list of objects, or a mapping holding that list under ``key``.

    An empty file is an empty list. ``what`` names an item in the error ("policy", "channel").
    """
    loaded = _load(variable, path)
    if loaded is None:
        return []
    if isinstance(loaded, dict) and isinstance(loaded.get(key), list):
        loaded = loaded[key]
    if not isinstance(loaded, list) or not all(isinstance(item, dict) for item in loaded):
        raise config_file_error(variable, path, f"expected a YAML list of {what} objects")
    return loaded
