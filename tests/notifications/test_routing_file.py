"""The ``escalations:`` key of ``PRODSENTINEL_ROUTING_FILE``: validated with one line, loaded at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from prodsentinel.notifications.escalations import parse_escalations
from prodsentinel.settings import SettingsError


def test_a_file_without_the_key_has_no_escalations(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text("inhibit_rules:\n  - equal: [service]\n")
    assert parse_escalations(path) == []


def test_escalations_are_validated_with_one_line_naming_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(
        "escalations:\n"
        "  - project: default\n"
        "    name: db\n"
        "    matchers: [{name: team, op: '=', value: db}]\n"
        "    steps: [{after_seconds: 0, channels: [oncall]}, {after_seconds: 600, channels: [boss]}]\n"
        "    repeat: 1\n"
    )
    [item] = parse_escalations(path)
    assert item.name == "db"
    assert [s.channels for s in item.steps] == [["oncall"], ["boss"]]
    path.write_text(
        "escalations:\n  - project: default\n    name: db\n    steps: [{after_seconds: 5, channels: [a]}]\n"
    )
    with pytest.raises(SettingsError) as failure:
        parse_escalations(path)
    message = str(failure.value)
    assert "PRODSENTINEL_ROUTING_FILE" in message
    assert "steps[0].after_seconds must be 0" in message
    assert "\n" not in message
