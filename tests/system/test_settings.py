from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from prodsentinel.settings import Settings, SettingsError, env_names, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_env_example_lists_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE)
    assert listed == env_names()


def test_env_example_defaults_parse_to_the_defaults() -> None:
    values = dict(
        re.findall(r"^([A-Z][A-Z0-9_]+)=(.*)$", (ROOT / ".env.example").read_text(), flags=re.MULTILINE)
    )
    loaded = load_settings(values)
    assert loaded == Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PRODSENTINEL_PORT", "99999"),
        ("LOG_LEVEL", "LOUD"),
        ("DATABASE_URL", "mysql://x"),
        ("PRODSENTINEL_RATE_LIMIT", "lots"),
        ("PRODSENTINEL_NOTIFY_MAX_ATTEMPTS", "0"),
        ("PRODSENTINEL_METRICS_AUTH", "maybe"),
    ],
)
def test_invalid_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


def test_cli_prints_one_line_not_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "prodsentinel", "keys", "list"],
        env={"PATH": "/usr/bin:/bin", "PRODSENTINEL_PORT": "http"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "PRODSENTINEL_PORT" in lines[0]
    assert "Traceback" not in result.stderr
