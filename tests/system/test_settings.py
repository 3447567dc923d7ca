from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prodsentinel.settings import Settings, SettingsError, env_names, load_settings
from tests.system.servers import free_port

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


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real ``prodsentinel`` CLI in a child process, with only ``env`` configured."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PRODSENTINEL_", "REDIS_URL"))}
    return subprocess.run(
        [sys.executable, "-m", "prodsentinel", *args],
        env={**inherited, "PRODSENTINEL_PORT": str(free_port()), **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], variable: str, needle: str) -> None:
    """Exit 2 before serving, and stderr is exactly one line naming the variable."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], output
    assert result.stderr.startswith(f"prodsentinel: invalid configuration: {variable}="), output
    assert needle in result.stderr, output
    assert "Traceback" not in output
    assert "Listening at" not in output


UNKNOWN_KIND = "- {project: p, name: x, kind: nope, severity: low, threshold: 1}\n"
POLICIES_FILES = [
    pytest.param(None, "cannot read the file", id="missing-file"),
    pytest.param("- name: x\n  kind: [unclosed\n", "not valid YAML", id="bad-yaml"),
    pytest.param(UNKNOWN_KIND, "kind 'nope' is not valid", id="unknown-kind"),
    pytest.param(  # valid for Python's re, rejected by PostgreSQL: only the database can tell
        "- {name: x, kind: log_rate, severity: low, threshold: 1, q: '/(?P<n>a)/'}\n",
        "invalid regular expression",
        id="regex-postgresql-rejects",
    ),
]


@pytest.mark.parametrize(("content", "needle"), POLICIES_FILES)
def test_run_with_invalid_policies_file_prints_one_line(
    tmp_path: Path, database_url: str, content: str | None, needle: str
) -> None:
    path = tmp_path / "policies.yaml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    result = run_cli("run", DATABASE_URL=database_url, PRODSENTINEL_POLICIES_FILE=str(path))
    assert_one_line(result, "PRODSENTINEL_POLICIES_FILE", needle)


@pytest.mark.parametrize(
    "command", [["workers", "run"], ["database", "upgrade", "--no-prompt"]], ids=["workers", "upgrade"]
)
def test_other_commands_reject_an_invalid_policies_file_too(
    tmp_path: Path, database_url: str, command: list[str]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(UNKNOWN_KIND, encoding="utf-8")
    result = run_cli(*command, DATABASE_URL=database_url, PRODSENTINEL_POLICIES_FILE=str(path))
    assert_one_line(result, "PRODSENTINEL_POLICIES_FILE", "item 0 ('x')")
