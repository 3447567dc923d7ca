"""Delivery settings: the visibility timeout must outlast a send."""

from __future__ import annotations

import pytest

from prodsentinel.settings import SettingsError, load_settings


def test_visibility_defaults_to_timeout_plus_30s() -> None:
    assert load_settings({"PRODSENTINEL_NOTIFY_TIMEOUT_SECONDS": "5"}).notify_visibility == 35.0
    assert load_settings({"PRODSENTINEL_NOTIFY_VISIBILITY_SECONDS": "90"}).notify_visibility == 90.0


def test_visibility_not_above_timeout_is_one_clear_line() -> None:
    with pytest.raises(SettingsError, match="PRODSENTINEL_NOTIFY_VISIBILITY_SECONDS") as error:
        load_settings(
            {"PRODSENTINEL_NOTIFY_TIMEOUT_SECONDS": "10", "PRODSENTINEL_NOTIFY_VISIBILITY_SECONDS": "10"}
        )
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("PRODSENTINEL_NOTIFY_CONCURRENCY", "0"), ("PRODSENTINEL_NOTIFY_BATCH_SIZE", "many")],
)
def test_invalid_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})
