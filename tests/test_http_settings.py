"""The client-connection settings: `--body-timeout` and `--keep-alive-timeout` (docs/http.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trio_gateway.settings import Settings, SettingsError


@pytest.mark.parametrize("field", ["body_timeout", "keep_alive_timeout"])
@pytest.mark.parametrize("value", [0.0, 0.05, 3601.0, float("inf"), float("nan")])
def test_connection_timeouts_out_of_range_are_refused(field: str, value: float):
    flag = "--" + field.replace("_", "-")
    with pytest.raises(SettingsError, match=f"{flag} must be between 0.1 and 3600 seconds"):
        Settings(data_dir=None, **{field: value}).check()


def test_the_flags_reach_the_settings_and_bad_values_stop_serve():
    result = subprocess.run(
        [sys.executable, "-m", "trio_gateway", "serve", "--memory", "--body-timeout", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--body-timeout must be between 0.1 and 3600 seconds, got 0" in result.stderr
